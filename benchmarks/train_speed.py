"""Training speed: the jitted BPR/DPR train step and the real SciFact training loop, side by side.

One benchmark, four measurements (--what); each prints a table and writes one JSON result:

  throughput  examples/s of the real jitted train step (`build.build_biencoder`,
              `train.make_optimizer`, `train.make_train_step`, jitted with the shardings and
              buffer donation of `train.train_and_evaluate`) on a fixed random batch (every
              attention-mask entry 1), --warmup untimed steps then --steps timed ones, per case:
                tiny       configs/tiny.py (random 2-layer BERT, hidden 64), its batch and lengths
                minilm     all-MiniLM-L6-v2 from $BPR_SHARED_DIR/models, --mode, float32, questions
                           and passages at --length, batch --minilm_batch
                bert-base  GPU only (or --force_bert_base as a code check): random bert-base,
                           bfloat16, batch --bert_base_batch at --bert_base_length, with MFU =
                           model FLOPs/s / (--peak_tflops * 1e12); model FLOPs per step
                           (benchmarks/common.py): 6 * matmul params * tokens + 12 * layers * L *
                           hidden * tokens (training = 3x forward)
              One example = one question with its positive and its n hard negatives.
              Default output: benchmarks/results/train_throughput.json.
  step        MiniLM BPR step (--batch questions of --q_len tokens, a positive and --negatives
              hard negatives each of --p_len tokens), one compiled step per config variant in
              ONE process: compile seconds (trace + lower + XLA compile of a fresh jit; the
              --recompile variants --compile_rounds times, alternating), then seconds per step,
              variants alternating round by round (A B C .. A B C ..), medians reported. What else
              the process holds changes the figure: compare variants of one run only.
              Default output: benchmarks/results/train_step_speed.json.
  allocators  the same step, one worker process per VARIANT:ALLOCATOR[:XLA] combination (the
              allocator is a process setting, benchmarks/cpu_env.py; so are XLA's CPU flags,
              XLA_PRESETS), started one after another, then stepped round by round, one worker at a
              time. Per combination: median s/step, minor page faults and user / system CPU s per
              step (getrusage), peak resident memory, the final loss (equal across allocators), the
              speedup against the first combination, and XLA's FLOP count of the compiled step over
              its seconds against the best jitted 2048^3 float32 matmul rate in the same worker.
              Workers live side by side: one that keeps its memory (heap, jemalloc) leaves the others
              less. jemalloc combos are skipped, and said so, where libjemalloc.so.2 is missing.
              Default output: benchmarks/results/train_step_allocators.json.
  loop        what a SciFact run does: `python -m bpr_jax.main --config=configs/scifact.py:bpr48` (MiniLM
              BPR, the 48 B recipe: STE, batch 16 with 1 BM25 hard negative, questions <= 64 and
              passages <= 256 tokens) on SciFact train minus the seeded dev split (made once in
              --work_dir by benchmarks/scifact.py), a fresh workdir per run, variants alternating
              round by round. Per run: s/step after the first logged interval (metrics.jsonl,
              log_every 10: the compile excluded), the whole process's wall s, peak resident memory
              (wait4) and resident memory every 10 s (rss_gb_trace), exit status (a run killed for
              memory is recorded, not fatal), final loss.
              Default output: benchmarks/results/train_loop_cpu.json.

Variants of step/allocators (STEP_VARIANTS; config values only):
  before                  the paper recipe: einsum attention with attention dropout 0.1 (following
                          model.dropout), layers unrolled, positives and negatives in two forwards
  manual_no_attn_dropout  before with attention_dropout=0 ('after' on CPU, where 'auto' is einsum)
  after                   attention_dropout=0 with model.attention='auto'
  after_rbg               after with rng_impl='rbg' (dropout masks from XLA's RngBitGenerator)
  after_xla               after with jax.nn.dot_product_attention's XLA implementation
  after_fused / after_scan  after + one passage forward / + layers scanned (model.scan_layers)
  after_bf16              after with model.dtype='bfloat16' (float32 params, bfloat16 matmuls)
  after_no_dropout        after with every dropout off
Variants of loop (LOOP_VARIANTS): before (configs/scifact.py as it is, glibc), after
(attention_dropout=0), after_fixed_jemalloc / after_fixed_heap (after + data.pad_multiple=0, one
batch shape q 64 / p 256, under benchmarks/cpu_env.py's jemalloc / glibc heap settings).
No allocator, padding or XLA preset except 'fastmath' changes a computed value.

  python benchmarks/train_speed.py --what=throughput --cases=tiny,minilm
  python benchmarks/train_speed.py --what=throughput --cases=bert-base --peak_tflops=989   # H100 bf16
  OPENBLAS_NUM_THREADS=1 python benchmarks/train_speed.py --what=step --variants=before,after,after_rbg
  python benchmarks/train_speed.py --what=allocators --combos=after:default,after:heap,after:default:xnnpack
  python benchmarks/train_speed.py --what=loop --work_dir=/tmp/scifact-bench --variants=before,after

The commands behind each committed result file: benchmarks/README.md, "train_speed.py".
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import statistics
import subprocess
import sys
import time
import types

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from benchmarks import common, cpu_env  # noqa: E402
from benchmarks.common import REPO, log  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
OUTPUTS = {"throughput": "train_throughput.json", "step": "train_step_speed.json",
           "allocators": "train_step_allocators.json", "loop": "train_loop_cpu.json"}
BERT_BASE = dict(vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                 intermediate_size=3072, max_position_embeddings=512)
BEFORE = {"model.attention": "manual", "model.attention_dropout": -1.0, "model.scan_layers": False,
          "model.fuse_passages": False}
AFTER = {"model.attention": "auto", "model.attention_dropout": 0.0, "model.scan_layers": False,
         "model.fuse_passages": False}
STEP_VARIANTS = {
    "before": BEFORE,
    "manual_no_attn_dropout": {**BEFORE, "model.attention_dropout": 0.0},
    "after": AFTER,
    "after_rbg": {**AFTER, "rng_impl": "rbg"},
    "after_xla": {**AFTER, "model.attention": "xla"},
    "after_fused": {"model.attention_dropout": 0.0, "model.scan_layers": False, "model.fuse_passages": True},
    "after_scan": {"model.attention_dropout": 0.0, "model.scan_layers": True, "model.fuse_passages": False},
    "after_bf16": {"model.attention_dropout": 0.0, "model.scan_layers": False, "model.fuse_passages": False,
                   "model.dtype": "bfloat16"},
    "after_no_dropout": {"model.dropout": 0.0, "model.attention_dropout": 0.0, "model.scan_layers": False,
                         "model.fuse_passages": False},
}
# XLA CPU settings an allocators worker adds to XLA_PRESETS (jaxlib 0.10's flags; fastmath changes values)
XLA_PRESETS = {
    "none": "",
    "onednn": "--xla_cpu_use_onednn=true",            # oneDNN matmuls / fusions
    "xnnpack": "--xla_cpu_use_xnnpack=true",          # XNNPACK dots
    "vec512": "--xla_cpu_prefer_vector_width=512",    # 512-bit vectors in XLA's own kernels (AVX-512 CPUs)
    "fastmath": "--xla_cpu_enable_fast_math=true",    # reassociation, approximate functions: other values
    "concurrent": "--xla_cpu_enable_concurrency_optimized_scheduler=true",
}
RECIPE = ["mode=bpr", "loss.relaxation=ste"]  # the loop's 48 B recipe (configs/scifact.py docstring)
LOOP_VARIANTS = {  # name: (config overrides, allocator)
    "before": ([], "default"),
    "after": (["model.attention_dropout=0.0"], "default"),
    "after_fixed_jemalloc": (["model.attention_dropout=0.0", "data.pad_multiple=0"], "jemalloc"),
    "after_fixed_heap": (["model.attention_dropout=0.0", "data.pad_multiple=0"], "heap"),
}
RSS_EVERY_S = 10.0  # how often a loop run's resident memory is sampled

# Flags each --what reads, with its defaults; a flag given for another --what is refused.
DEFAULTS = {
    "throughput": dict(cases="tiny,minilm,bert-base", mode="bpr", minilm_batch=16, length=256,
                       bert_base_batch=128, bert_base_length=256, force_bert_base=False, warmup=2, steps=5,
                       tiny_steps=30, peak_tflops=989.0),
    "step": dict(variants=",".join(v for v in STEP_VARIANTS if v != "manual_no_attn_dropout"), batch=16,
                 q_len=64, p_len=256, negatives=1, warmup=1, rounds=3, compile_rounds=3,
                 recompile="before,after,after_scan"),
    "allocators": dict(combos="before:default,after:default,after:thp,after:jemalloc", batch=16, q_len=64,
                       p_len=256, negatives=1, warmup=2, rounds=5),
    "loop": dict(work_dir="/tmp/scifact-bench", variants="before,after,after_fixed_jemalloc", steps=30, rounds=2),
}


# ----------------------------------------------------------------------------- the jitted step


def set_values(config, overrides: dict) -> None:
  """Sets dotted config keys ('model.attention') to values in place."""
  for key, value in overrides.items():
    node = config
    *path, last = key.split(".")
    for part in path:
      node = node[part]
    node[last] = value


def random_batch(rng, vocab: int, batch: int, q_len: int, p_len: int, num_neg: int) -> dict:
  """A fixed random token batch of the step's shape, every attention-mask entry 1."""
  import numpy as np
  out = {}
  for prefix, rows, length in (("q", batch, q_len), ("pos", batch, p_len), ("neg", batch * num_neg, p_len)):
    if rows == 0:
      continue
    ids = rng.integers(1000 if vocab > 2000 else 5, vocab, size=(rows, length), dtype=np.int32)
    ids[:, 0] = 101 if vocab > 2000 else 2
    out[f"{prefix}_input_ids"] = ids
    out[f"{prefix}_attention_mask"] = np.ones((rows, length), np.int32)
    out[f"{prefix}_token_type_ids"] = np.zeros((rows, length), np.int32)
  return out


class Step:
  """One compiled train step of `config` with its own state, on a fixed random batch."""

  def __init__(self, name: str, config, bert, *, load_weights: bool, total_steps: int):
    import jax
    import jax.numpy as jnp
    import numpy as np
    from bpr_jax import parallel, train
    from bpr_jax.models import build
    from bpr_jax.run_config import validate_config
    validate_config(config)
    self.name, self.config, self.bert = name, config, bert
    mesh = parallel.make_mesh()
    biencoder, params = build.build_biencoder(config, bert, load_weights=load_weights, mesh=mesh)
    tx, lr = train.make_optimizer(config, total_steps)
    state = {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": jax.jit(tx.init)(params)}
    # as train_and_evaluate: what lives on one device (the step, Adam's count) goes on the whole mesh
    on_mesh = lambda x: x if len(x.sharding.device_set) == mesh.size else jax.device_put(x, parallel.replicated(mesh))  # noqa: E731
    self.state = jax.tree.map(on_mesh, state)
    shardings = jax.tree.map(lambda x: x.sharding, self.state)

    def make_jit():  # a fresh jit each time: nothing traced or compiled is reused
      return jax.jit(train.make_train_step(biencoder, tx, lr, config),
                     in_shardings=(shardings, parallel.batch_sharding(mesh), parallel.replicated(mesh)),
                     out_shardings=(shardings, parallel.replicated(mesh)), donate_argnums=(0,))
    self._make_jit = make_jit
    d = config.data
    self.batch = parallel.global_batch(random_batch(np.random.default_rng(0), bert.vocab_size, config.batch_size,
                                                    d.question_max_length, d.passage_max_length,
                                                    d.num_hard_negatives), mesh)
    self.rng = train.dropout_key(config)
    self.compiles: list[tuple[float, float]] = []
    self.times: list[float] = []
    self.loss = float("nan")
    self.compiled = self.compile()

  def compile(self):
    """Traces, lowers and compiles a fresh jit of the step; records (trace+lower s, compile s)."""
    t0 = time.perf_counter()
    lowered = self._make_jit().lower(self.state, self.batch, self.rng)
    t1 = time.perf_counter()
    compiled = lowered.compile()
    self.compiles.append((t1 - t0, time.perf_counter() - t1))
    return compiled

  def step(self) -> float:
    """Runs one step; its seconds."""
    import jax
    t = time.perf_counter()
    self.state, metrics = self.compiled(self.state, self.batch, self.rng)
    jax.block_until_ready(metrics)
    elapsed = time.perf_counter() - t
    self.loss = float(metrics["loss"])
    return elapsed


def minilm_step(name: str, args, overrides: dict) -> Step:
  """STEP_VARIANTS[name]'s MiniLM BPR step at --batch, --q_len, --p_len, --negatives."""
  from bpr_jax.models import build
  config = common.minilm_train_config(args.batch, args.q_len, args.p_len, num_hard_negatives=args.negatives)
  set_values(config, overrides)
  return Step(name, config, build.encoder_configs(config, None), load_weights=True, total_steps=1000)


def table(rows: list[dict], cols: tuple[str, ...]) -> str:
  lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
  return "\n".join(lines + ["| " + " | ".join(str(r.get(c, "")) for c in cols) + " |" for r in rows])


# ----------------------------------------------------------------------------- --what=throughput


def throughput_case(name: str, args):
  """(config, BertConfig, load_weights) of a throughput case."""
  from bpr_jax.models import build
  if name == "tiny":
    import importlib
    import tempfile
    from bpr_jax.data.tiny import make_tiny_dataset
    from bpr_jax.tokenization import Tokenizer
    config = importlib.import_module("configs.tiny").get_config()
    paths = make_tiny_dataset(os.path.join(tempfile.mkdtemp(prefix="bpr-train-speed-tiny-"), "tiny_data"),
                              seed=config.data.tiny_seed)
    return config, build.encoder_configs(config, Tokenizer.from_dir(paths["vocab_dir"])), False
  if name == "minilm":
    config = common.minilm_train_config(args.minilm_batch, args.length, args.length, mode=args.mode)
    return config, build.encoder_configs(config, None), True
  from configs.common import base_config
  config = base_config()
  config.mode, config.batch_size = args.mode, args.bert_base_batch
  config.model.init, config.model.hf_dir, config.model.dtype = "random", "", "bfloat16"
  config.model.bert.update(BERT_BASE)
  config.data.question_max_length = config.data.passage_max_length = args.bert_base_length
  vocab = types.SimpleNamespace(vocab_size=BERT_BASE["vocab_size"])  # a random init needs no tokenizer
  return config, build.encoder_configs(config, vocab), False


def measure_throughput(name: str, config, bert, *, load_weights: bool, warmup: int, steps: int,
                       peak_tflops: float | None) -> dict:
  """One case's row: build and warm-up seconds, step seconds, examples/s, model TFLOP/s (and MFU)."""
  import numpy as np
  t0 = time.perf_counter()
  step = Step(name, config, bert, load_weights=load_weights, total_steps=max(warmup + steps, 10))
  build_s = time.perf_counter() - t0 - sum(step.compiles[-1])
  t0 = time.perf_counter()
  for _ in range(warmup):
    step.step()
  warmup_s = time.perf_counter() - t0 + sum(step.compiles[-1])  # the compile, as the first call's
  times = [step.step() for _ in range(steps)]
  if not np.isfinite(step.loss):
    raise RuntimeError(f"{name}: loss is {step.loss}")
  b, d = config.batch_size, config.data
  q_len, p_len, n = d.question_max_length, d.passage_max_length, d.num_hard_negatives
  median = statistics.median(times)
  flops = common.train_step_flops(bert, b, q_len, p_len, n)
  row = {"case": name, "mode": config.mode, "dtype": config.model.dtype, "init": config.model.init,
         "layers": bert.num_hidden_layers, "hidden": bert.hidden_size, "batch": b, "question_length": q_len,
         "passage_length": p_len, "num_hard_negatives": n, "sequences_per_step": b * (2 + n),
         "warmup_steps": warmup, "timed_steps": steps, "build_s": round(build_s, 2), "warmup_s": round(warmup_s, 2),
         "step_s_median": round(median, 4), "step_s_mean": round(statistics.fmean(times), 4),
         "step_s_min": round(min(times), 4), "step_s_max": round(max(times), 4),
         "examples_per_s": round(b / median, 3), "sequences_per_s": round(b * (2 + n) / median, 3),
         "model_flops_per_step": flops, "model_tflops_per_s": round(flops / median / 1e12, 4),
         "final_loss": round(step.loss, 5)}
  if peak_tflops:
    row["peak_tflops"] = peak_tflops
    row["mfu"] = round(flops / median / (peak_tflops * 1e12), 4)
  return row


def run_throughput(args) -> tuple[dict, str]:
  import jax
  names = [c for c in args.cases.split(",") if c]
  unknown = [c for c in names if c not in ("tiny", "minilm", "bert-base")]
  if unknown:
    raise ValueError(f"--cases: unknown {unknown}; expected some of tiny, minilm, bert-base")
  backend = jax.default_backend()
  rows, skipped = [], {}
  for name in names:
    if name == "bert-base" and not common.is_accelerator(backend) and not args.force_bert_base:
      skipped[name] = f"needs a GPU (backend is {backend}); unmeasured"
      log(f"{name}: skipped ({skipped[name]})")
      continue
    config, bert, load_weights = throughput_case(name, args)
    steps = args.tiny_steps if name == "tiny" else args.steps
    log(f"{name}: measuring ({args.warmup} warm-up + {steps} timed steps)")
    rows.append(measure_throughput(name, config, bert, load_weights=load_weights, warmup=args.warmup, steps=steps,
                                   peak_tflops=args.peak_tflops if common.is_accelerator(backend) else None))
    log(json.dumps(rows[-1]))
  result = {"flops_formula": "6 * matmul_params * tokens + 12 * layers * L * hidden * tokens per step",
            "machine": common.machine_info(), "rows": rows, "skipped": skipped}
  return result, table(rows, ("case", "mode", "dtype", "batch", "question_length", "passage_length", "step_s_median",
                              "examples_per_s", "sequences_per_s", "model_tflops_per_s", "mfu"))


# ----------------------------------------------------------------------------- --what=step


def step_row(v: Step) -> dict:
  c = v.config
  return {"variant": v.name, "overrides": STEP_VARIANTS[v.name], "attention": c.model.attention,
          "attention_dropout": v.bert.attention_probs_dropout_prob, "hidden_dropout": v.bert.hidden_dropout_prob,
          "dtype": c.model.dtype, "scan_layers": c.model.scan_layers, "fuse_passages": c.model.fuse_passages,
          "rng_impl": c.rng_impl, "compile_s": round(statistics.median(a + b for a, b in v.compiles), 2),
          "trace_lower_s": round(statistics.median(a for a, _ in v.compiles), 2),
          "xla_compile_s": round(statistics.median(b for _, b in v.compiles), 2),
          "compile_s_all": [round(a + b, 2) for a, b in v.compiles],
          "step_s_median": round(statistics.median(v.times), 4), "step_s_min": round(min(v.times), 4),
          "step_s_max": round(max(v.times), 4), "step_s_all": [round(t, 4) for t in v.times],
          "final_loss": round(v.loss, 5)}


def run_step(args) -> tuple[dict, str]:
  names = [v for v in args.variants.split(",") if v]
  unknown = sorted(set(names) - set(STEP_VARIANTS))
  if unknown:
    raise ValueError(f"--variants: unknown {unknown}; expected some of {', '.join(STEP_VARIANTS)}")
  variants = []
  for name in names:
    log(f"{name}: compiling")
    v = minilm_step(name, args, STEP_VARIANTS[name])
    log(f"{name}: compile {sum(v.compiles[-1]):.1f}s (trace+lower {v.compiles[-1][0]:.1f}s)")
    for _ in range(args.warmup):
      v.step()
    variants.append(v)
  for r in range(1, args.compile_rounds):
    for v in (v for v in variants if v.name in args.recompile.split(",")):
      v.compile()
      log(f"compile round {r}: {v.name} {sum(v.compiles[-1]):.1f}s")
  for r in range(args.rounds):
    for v in variants:
      v.times.append(v.step())
      log(f"round {r}: {v.name} {v.times[-1]:.3f}s")
  rows = [step_row(v) for v in variants]
  base = next((r for r in rows if r["variant"] == "before"), None)
  for r in rows if base else ():
    r["speedup_vs_before"] = round(base["step_s_median"] / r["step_s_median"], 2)
    r["compile_vs_before"] = round(r["compile_s"] / base["compile_s"], 2)
  result = {"model": "all-MiniLM-L6-v2", "mode": "bpr", "batch": args.batch, "question_length": args.q_len,
            "passage_length": args.p_len, "num_hard_negatives": args.negatives, "warmup_steps": args.warmup,
            "rounds": args.rounds, "compile_rounds": args.compile_rounds, "recompile": args.recompile,
            "machine": common.machine_info(), "load_average": os.getloadavg(), "rows": rows}
  return result, table(rows, ("variant", "compile_s", "step_s_median", "step_s_min", "speedup_vs_before",
                              "compile_vs_before"))


# ----------------------------------------------------------------------------- --what=allocators


def matmul_gflops(n: int = 2048, repeats: int = 5) -> float:
  """What XLA reaches on this CPU at its best: a jitted float32 n x n matmul, best of `repeats`, GFLOP/s."""
  import jax
  import jax.numpy as jnp
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  f = jax.jit(lambda x: x @ x)
  f(a).block_until_ready()
  best = float("inf")
  for _ in range(repeats):
    t = time.perf_counter()
    f(a).block_until_ready()
    best = min(best, time.perf_counter() - t)
  return round(2 * n ** 3 / best / 1e9, 1)


def worker(args) -> None:
  """One variant's step in an allocators worker, driven over stdin ('step' / 'quit'); one JSON line per command."""
  import resource
  v = minilm_step(args.worker, args, STEP_VARIANTS[args.worker])
  for _ in range(args.warmup):
    v.step()
  cost = v.compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  print(json.dumps({"ready": True, "compile_s": round(sum(v.compiles[-1]), 2),
                    "step_gflop": float((cost or {}).get("flops", 0)) / 1e9, "matmul_gflops": matmul_gflops()}),
        flush=True)
  for line in sys.stdin:
    if line.strip() != "step":
      break
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    seconds = v.step()
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"step_s": seconds, "minflt": r1.ru_minflt - r0.ru_minflt, "utime_s": r1.ru_utime - r0.ru_utime,
                      "stime_s": r1.ru_stime - r0.ru_stime, "loss": v.loss}), flush=True)
  print(json.dumps({"maxrss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 2)}), flush=True)


class Worker:
  """An allocators worker process: one VARIANT:ALLOCATOR[:XLA] combination."""

  def __init__(self, variant: str, allocator: str, args, xla: str = "none"):
    self.variant, self.allocator, self.xla, self.steps = variant, allocator, xla, []
    self.env = cpu_env.with_allocator(cpu_env.without_allocator(dict(os.environ)), allocator)
    if XLA_PRESETS[xla]:
      self.env["XLA_FLAGS"] = (self.env.get("XLA_FLAGS", "") + " " + XLA_PRESETS[xla]).strip()
    cmd = [sys.executable, str(pathlib.Path(__file__).resolve()), "--what=allocators", f"--worker={variant}",
           f"--batch={args.batch}", f"--q_len={args.q_len}", f"--p_len={args.p_len}",
           f"--negatives={args.negatives}", f"--warmup={args.warmup}"]
    self.proc = subprocess.Popen(cmd, cwd=REPO, env=self.env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 text=True)
    self.ready = self._read()

  def _read(self) -> dict:
    line = self.proc.stdout.readline()
    if not line:
      raise RuntimeError(f"worker {self.name} died (exit status {self.proc.wait()})")
    return json.loads(line)

  @property
  def name(self) -> str:
    return f"{self.variant}:{self.allocator}" + (f":{self.xla}" if self.xla != "none" else "")

  def _send(self, command: str) -> dict:
    self.proc.stdin.write(command + "\n")
    self.proc.stdin.flush()
    return self._read()

  def step(self) -> dict:
    self.steps.append(self._send("step"))
    return self.steps[-1]

  def close(self) -> dict:
    out = self._send("quit")
    self.proc.wait()
    return out

  def row(self, peak: dict) -> dict:
    med = lambda k: statistics.median(s[k] for s in self.steps)  # noqa: E731
    gflop, matmul = self.ready.get("step_gflop", 0.0), self.ready.get("matmul_gflops")
    return {"variant": self.variant, "allocator": self.allocator, "xla": self.xla,
            "env": {k: self.env[k] for k in cpu_env.VARIABLES + ("XLA_FLAGS",) if k in self.env},
            "compile_s": self.ready["compile_s"], "step_s_median": round(med("step_s"), 4),
            "step_s_all": [round(s["step_s"], 4) for s in self.steps],
            "minor_faults_per_step": int(med("minflt")), "user_s_per_step": round(med("utime_s"), 3),
            "system_s_per_step": round(med("stime_s"), 3), "maxrss_gb": peak["maxrss_gb"],
            # XLA's FLOP count of the compiled step, the rate reached, and that rate against the
            # same process's best float32 matmul (what is left to gain on this CPU)
            "step_gflop": round(gflop, 1), "gflops": round(gflop / med("step_s"), 1), "matmul_gflops": matmul,
            "of_matmul": round(gflop / med("step_s") / matmul, 3) if matmul else None,
            "final_loss": self.steps[-1]["loss"]}


def parse_combos(text: str) -> list[tuple[str, str, str]]:
  """'after:default:onednn,before' -> [('after', 'default', 'onednn'), ('before', 'default', 'none')]."""
  combos = []
  for item in filter(None, text.split(",")):
    variant, allocator, xla = (item.split(":") + ["", ""])[:3]
    allocator, xla = allocator or "default", xla or "none"
    if (variant not in STEP_VARIANTS or allocator not in cpu_env.ALLOCATORS or xla not in XLA_PRESETS
        or item.count(":") > 2):
      raise ValueError(f"--combos: bad combo {item!r}: VARIANT:ALLOCATOR[:XLA] with VARIANT in "
                       f"{', '.join(STEP_VARIANTS)}, ALLOCATOR in {', '.join(cpu_env.ALLOCATORS)} and XLA in "
                       f"{', '.join(XLA_PRESETS)}")
    combos.append((variant, allocator, xla))
  return combos


def run_allocators(args) -> tuple[dict, str]:
  combos, skipped = [], []
  for variant, allocator, xla in parse_combos(args.combos):
    if allocator == "jemalloc" and cpu_env.find_jemalloc() is None:
      skipped.append(f"{variant}:{allocator} (no libjemalloc.so.2 installed)")
      log(f"skipped {skipped[-1]}")
    else:
      combos.append((variant, allocator, xla))
  workers = []
  try:
    for variant, allocator, xla in combos:
      log(f"{variant}:{allocator}:{xla}: starting (compile + {args.warmup} warm-up steps)")
      workers.append(Worker(variant, allocator, args, xla))
    for r in range(args.rounds):
      for w in workers:
        s = w.step()
        log(f"round {r}: {w.name} {s['step_s']:.3f}s, {s['minflt']} faults, sys {s['stime_s']:.2f}s")
    rows = [w.row(w.close()) for w in workers]
  finally:
    for w in workers:
      if w.proc.poll() is None:
        w.proc.kill()
        w.proc.wait()
  for r in rows:
    r["speedup_vs_first"] = round(rows[0]["step_s_median"] / r["step_s_median"], 2)
    r["combo"] = f"{r['variant']}:{r['allocator']}" + (f":{r['xla']}" if r["xla"] != "none" else "")
    r["gflops_of_matmul"] = f"{r['gflops']} ({r['of_matmul']})"
  result = {"model": "all-MiniLM-L6-v2", "mode": "bpr", "batch": args.batch, "question_length": args.q_len,
            "passage_length": args.p_len, "num_hard_negatives": args.negatives, "warmup_steps": args.warmup,
            "rounds": args.rounds, "skipped": skipped, "machine": common.machine_info(with_jax=False),
            "load_average": os.getloadavg(), "rows": rows}
  return result, table(rows, ("combo", "step_s_median", "speedup_vs_first", "minor_faults_per_step", "user_s_per_step",
                              "system_s_per_step", "maxrss_gb", "gflops_of_matmul"))


# ----------------------------------------------------------------------------- --what=loop


def logged_metrics(metrics_path: pathlib.Path) -> list[dict]:
  """The run's metrics.jsonl lines ([] when it wrote none)."""
  text = metrics_path.read_text() if metrics_path.exists() else ""
  return [json.loads(l) for l in text.splitlines() if l.strip()]


def steady_step_seconds(metrics_path: pathlib.Path, batch: int) -> float | None:
  """Median seconds per step over the logged intervals after the first (which holds the compile)."""
  rates = [m["examples_per_s"] for m in logged_metrics(metrics_path)[1:] if m.get("examples_per_s")]
  return round(statistics.median(batch / r for r in rates), 3) if rates else None


def resident_gb(pid: int) -> float | None:
  """The process's resident memory now (VmRSS), in GiB; None once it is gone."""
  try:
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
      if line.startswith("VmRSS:"):
        return round(int(line.split()[1]) / 2**20, 2)
  except OSError:
    return None
  return None


def wait_tracing_rss(pid: int, t0: float, every_s: float = RSS_EVERY_S):
  """Waits for child `pid`; returns (wait status, its rusage, [[seconds since t0, resident GiB], ...])."""
  trace = []
  while True:
    done, status, usage = os.wait4(pid, os.WNOHANG)
    if done:
      return status, usage, trace
    rss = resident_gb(pid)
    if rss is not None:
      trace.append([round(time.perf_counter() - t0), rss])
    time.sleep(every_s)


def run_once(name: str, work: pathlib.Path, beir: pathlib.Path, env: dict, steps: int) -> dict:
  """One fresh training run of loop variant `name`; its figures."""
  overrides, allocator = LOOP_VARIANTS[name]
  run = work / "train-loop-cpu" / name
  shutil.rmtree(run, ignore_errors=True)
  run.parent.mkdir(parents=True, exist_ok=True)
  cmd = [sys.executable, "-m", "bpr_jax.main", "--config=configs/scifact.py:bpr48", f"--workdir={run}",
         f"--config.data.beir_dir={beir}", f"--config.data.token_cache_dir={work / 'token_cache'}",
         f"--config.num_train_steps={steps}", f"--config.checkpoint_every={10 * steps}"]
  cmd += [f"--config.{o}" for o in RECIPE + overrides]
  log(f"{name}: {' '.join(cmd[1:])} (allocator {allocator})")
  t0 = time.perf_counter()
  with open(work / f"train-loop-cpu-{name}.log", "a", encoding="utf-8") as f:
    proc = subprocess.Popen(cmd, cwd=REPO, env=cpu_env.with_allocator(cpu_env.without_allocator(env), allocator),
                            stdout=f, stderr=subprocess.STDOUT)
    status, usage, trace = wait_tracing_rss(proc.pid, t0)
  wall = time.perf_counter() - t0
  metrics = run / "metrics.jsonl"
  last = (logged_metrics(metrics) or [{}])[-1]
  batch = json.loads((run / "config.json").read_text())["batch_size"] if last else 0  # config.json precedes metrics
  return {"variant": name, "exit_code": os.waitstatus_to_exitcode(status), "wall_s": round(wall, 1),
          "steps_done": last.get("step", 0), "step_s": steady_step_seconds(metrics, batch) if last else None,
          "peak_rss_gb": round(usage.ru_maxrss / 2**20, 2), "user_s": round(usage.ru_utime, 1),
          "system_s": round(usage.ru_stime, 1), "final_loss": last.get("loss"), "rss_gb_trace": trace}


def summarize(runs: list[dict], names: list[str]) -> list[dict]:
  """Per loop variant: median step seconds and wall, worst peak memory, speedup against the first variant."""
  rows = []
  for name in names:
    mine = [r for r in runs if r["variant"] == name]
    ok = [r for r in mine if r["exit_code"] == 0 and r["step_s"]]
    rows.append({"variant": name, "overrides": LOOP_VARIANTS[name][0], "allocator": LOOP_VARIANTS[name][1],
                 "runs": len(mine), "failed": len(mine) - len(ok),
                 "step_s_median": round(statistics.median(r["step_s"] for r in ok), 3) if ok else None,
                 "wall_s_median": round(statistics.median(r["wall_s"] for r in ok), 1) if ok else None,
                 "peak_rss_gb_max": max(r["peak_rss_gb"] for r in mine) if mine else None,
                 "exit_codes": [r["exit_code"] for r in mine]})
  base = rows[0]["step_s_median"] if rows else None
  for row in rows:
    row["speedup_vs_first"] = round(base / row["step_s_median"], 2) if base and row["step_s_median"] else None
  return rows


def check_loop(args) -> list[str]:
  """The loop variants to run; ValueError / FileNotFoundError before any work."""
  names = [v for v in args.variants.split(",") if v]
  unknown = [v for v in names if v not in LOOP_VARIANTS]
  if unknown:
    raise ValueError(f"--variants: unknown variants {unknown}; known: {', '.join(LOOP_VARIANTS)}")
  if args.steps < 20:
    raise ValueError("--steps must be >= 20 (two logged intervals of 10: the first holds the compile)")
  for name in names:
    cpu_env.allocator_env(LOOP_VARIANTS[name][1])  # FileNotFoundError now, not after an hour
  return names


def run_loop(args) -> tuple[dict, str]:
  from benchmarks import scifact
  names = check_loop(args)
  work = pathlib.Path(args.work_dir)
  beir, env = scifact.prepare_train_data(work)
  runs = []
  for round_ in range(args.rounds):
    for name in names:
      runs.append({"round": round_, **run_once(name, work, beir, env, args.steps)})
      log(json.dumps(runs[-1]))
  rows = summarize(runs, names)
  result = {"steps": args.steps, "rounds": args.rounds, "recipe": RECIPE,
            "machine": common.machine_info(with_jax=False), "rows": rows, "runs": runs}
  return result, table(rows, ("variant", "step_s_median", "speedup_vs_first", "wall_s_median", "peak_rss_gb_max",
                              "exit_codes"))


# ----------------------------------------------------------------------------- command line


RUNS = {"throughput": run_throughput, "step": run_step, "allocators": run_allocators, "loop": run_loop}
FLAG_HELP = {
    "cases": "throughput: comma list of tiny, minilm, bert-base (bert-base only on a GPU)",
    "mode": "throughput: bpr or dpr", "minilm_batch": "throughput: MiniLM batch",
    "length": "throughput: MiniLM question and passage length", "bert_base_batch": "throughput",
    "bert_base_length": "throughput", "force_bert_base": "throughput: bert-base on a CPU too (a code check; no MFU)",
    "tiny_steps": "throughput: timed steps of the tiny case",
    "peak_tflops": "throughput: accelerator peak TFLOP/s for MFU (default: H100 SXM dense bf16)",
    "variants": "step: comma list of STEP_VARIANTS; loop: of LOOP_VARIANTS",
    "combos": "allocators: comma list of VARIANT:ALLOCATOR[:XLA]",
    "batch": "step, allocators: questions per step", "q_len": "step, allocators", "p_len": "step, allocators",
    "negatives": "step, allocators: hard negatives per question",
    "warmup": "throughput, step, allocators: untimed steps after the compile",
    "steps": "throughput: timed steps; loop: training steps per run (>= 20)",
    "rounds": "step, allocators, loop: timed rounds, variants alternating",
    "compile_rounds": "step: compiles per --recompile variant (the first included), alternating",
    "recompile": "step: variants whose compile is repeated", "work_dir": "loop: SciFact split, hard negatives, runs",
}


def parse_args(argv=None) -> argparse.Namespace:
  """The flags, with --what's defaults filled in; ValueError for a flag another --what reads."""
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--what", required=True, choices=tuple(RUNS))
  types_ = {k: type(v) for d in DEFAULTS.values() for k, v in d.items()}
  for flag, kind in types_.items():
    if kind is bool:
      p.add_argument(f"--{flag}", action="store_true", default=None, help=FLAG_HELP[flag])
    else:
      p.add_argument(f"--{flag}", type=kind, default=None, help=FLAG_HELP[flag])
  p.add_argument("--output", default="", help="result JSON (default: benchmarks/results/<--what's file>)")
  p.add_argument("--note", default="", help="free text stored with the results")
  p.add_argument("--worker", default="", help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  mine = DEFAULTS[args.what]
  stray = sorted(f"--{k}" for k in types_ if k not in mine and getattr(args, k) is not None)
  if stray:
    raise ValueError(f"{', '.join(stray)}: not a flag of --what={args.what} (it reads "
                     f"{', '.join('--' + k for k in mine)})")
  for key, value in mine.items():
    if getattr(args, key) is None:
      setattr(args, key, value)
  if args.worker and (args.what != "allocators" or args.worker not in STEP_VARIANTS):
    raise ValueError(f"--worker={args.worker}: an allocators worker runs one of {', '.join(STEP_VARIANTS)}")
  return args


def main(argv=None) -> None:
  args = parse_args(argv)
  if args.worker:
    return worker(args)
  result, text = RUNS[args.what](args)
  result = {"benchmark": f"train_speed --what={args.what}",
            "command": "python benchmarks/train_speed.py " + " ".join(sys.argv[1:] if argv is None else argv),
            "note": args.note, **result}
  out = common.write_result(args.output or RESULTS / OUTPUTS[args.what], result)
  print(text)
  print(f"wrote {out}")
  return None


if __name__ == "__main__":
  try:
    main()
  except (ValueError, FileNotFoundError, RuntimeError) as error:
    print(f"error: {error}", file=sys.stderr)
    sys.exit(2)
