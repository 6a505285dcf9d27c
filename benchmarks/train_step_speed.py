"""Train-step compile time and seconds per step, old kernels vs new, side by side in one run.

Every variant is the real jitted BPR train step (`train.build_biencoder`, `make_optimizer`,
`make_train_step`, the shardings and buffer donation of `train_and_evaluate`) of
all-MiniLM-L6-v2 (from $BPR_SHARED_DIR/models), float32 unless said, on the same fixed random batch
(--batch questions of --q_len tokens, their positives and --negatives hard negatives each of
--p_len tokens, every attention-mask entry 1). Variants differ only in config values:

  before                  the defaults (and the previous code): einsum/softmax attention
                          ('manual') with attention dropout 0.1, layers unrolled, positives
                          and negatives in two passage forwards
  manual_no_attn_dropout  before with attention_dropout=0 (what its random numbers cost)
  after                   opt-in attention_dropout=0 with model.attention='auto' (on CPU the
                          einsum path; cuDNN/XLA jax.nn.dot_product_attention elsewhere)
  after_rbg               after with rng_impl='rbg': the hidden-dropout masks drawn by XLA's
                          RngBitGenerator instead of threefry (opt-in; other masks, same rates)
  after_xla               after with jax.nn.dot_product_attention's XLA implementation
  after_fused             after + one passage forward over positives and negatives
  after_scan              after + layers scanned (model.scan_layers): its compile time
  after_bf16              after with model.dtype='bfloat16' (float32 params, bfloat16 matmuls;
                          this CPU has AMX-BF16; opt-in, numerics change)
  after_no_dropout        after with every dropout off (what hidden dropout still costs)

Each variant is traced, lowered and compiled (timed: `compile_s` = trace + lower + XLA compile,
with a fresh jit each time, so nothing is cached), and run for --warmup steps; the --recompile
variants are then compiled again, --compile_rounds in all, alternating; then the timed steps
alternate between variants round by round (A B C .. A B C ..). Medians are reported.

  OPENBLAS_NUM_THREADS=1 python benchmarks/train_step_speed.py
  python benchmarks/train_step_speed.py --variants=before,after --rounds=3

Results: benchmarks/results/train_step_speed.json (and a table on stdout).
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import statistics
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from benchmarks import common  # noqa: E402
from benchmarks.common import REPO  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from bpr_jax import parallel, train  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "train_step_speed.json"
BEFORE = {"model.attention": "manual", "model.attention_dropout": -1.0, "model.scan_layers": False,
          "model.fuse_passages": False}
VARIANTS = {
    "before": BEFORE,
    "manual_no_attn_dropout": {**BEFORE, "model.attention_dropout": 0.0},
    "after": {"model.attention": "auto", "model.attention_dropout": 0.0, "model.scan_layers": False,
              "model.fuse_passages": False},
    "after_rbg": {"model.attention": "auto", "model.attention_dropout": 0.0, "model.scan_layers": False,
                  "model.fuse_passages": False, "rng_impl": "rbg"},
    "after_xla": {"model.attention": "xla", "model.attention_dropout": 0.0, "model.scan_layers": False,
                  "model.fuse_passages": False},
    "after_fused": {"model.attention_dropout": 0.0, "model.scan_layers": False, "model.fuse_passages": True},
    "after_scan": {"model.attention_dropout": 0.0, "model.scan_layers": True, "model.fuse_passages": False},
    "after_bf16": {"model.attention_dropout": 0.0, "model.scan_layers": False, "model.fuse_passages": False,
                   "model.dtype": "bfloat16"},
    "after_no_dropout": {"model.dropout": 0.0, "model.attention_dropout": 0.0, "model.scan_layers": False,
                         "model.fuse_passages": False},
}


def make_config(args, overrides: dict):
  c = common.minilm_train_config(args.batch, args.q_len, args.p_len, num_hard_negatives=args.negatives)
  for key, value in overrides.items():
    node = c
    *path, last = key.split(".")
    for part in path:
      node = node[part]
    node[last] = value
  train.validate_config(c)
  return c


def random_batch(rng: np.random.Generator, vocab: int, batch: int, q_len: int, p_len: int,
                 num_neg: int) -> dict[str, np.ndarray]:
  out = {}
  for prefix, rows, length in (("q", batch, q_len), ("pos", batch, p_len), ("neg", batch * num_neg, p_len)):
    if rows == 0:
      continue
    ids = rng.integers(1000, vocab, size=(rows, length), dtype=np.int32)
    ids[:, 0] = 101
    out[f"{prefix}_input_ids"] = ids
    out[f"{prefix}_attention_mask"] = np.ones((rows, length), np.int32)
    out[f"{prefix}_token_type_ids"] = np.zeros((rows, length), np.int32)
  return out


class Variant:
  """One compiled train step with its own state."""

  def __init__(self, name: str, args, overrides: dict):
    self.name, self.overrides = name, overrides
    config = make_config(args, overrides)
    self.config = config
    mesh = parallel.make_mesh()
    bert = train.encoder_configs(config, None)
    self.bert = bert
    biencoder, params = train.build_biencoder(config, bert, load_weights=True, mesh=mesh)
    tx, lr = train.make_optimizer(config, 1000)
    state = {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": jax.jit(tx.init)(params)}
    state = jax.device_put(state, jax.tree.map(lambda x: x.sharding, state))
    shardings = jax.tree.map(lambda x: x.sharding, state)

    def make_jit():  # a fresh jit each time: nothing traced or compiled is reused
      return jax.jit(train.make_train_step(biencoder, tx, lr, config),
                     in_shardings=(shardings, parallel.batch_sharding(mesh), parallel.replicated(mesh)),
                     out_shardings=(shardings, parallel.replicated(mesh)), donate_argnums=(0,))
    self._make_jit = make_jit
    self.batch = parallel.global_batch(
        random_batch(np.random.default_rng(0), bert.vocab_size, args.batch, args.q_len, args.p_len,
                     args.negatives), mesh)
    self.rng = train.dropout_key(config)
    self.state = state
    self.compiles: list[tuple[float, float]] = []
    self.compiled = self.compile()
    self.times: list[float] = []
    self.loss = float("nan")

  def compile(self):
    """Traces, lowers and compiles a fresh jit of the step; records (trace+lower s, compile s)."""
    t0 = time.perf_counter()
    lowered = self._make_jit().lower(self.state, self.batch, self.rng)
    t1 = time.perf_counter()
    compiled = lowered.compile()
    self.compiles.append((t1 - t0, time.perf_counter() - t1))
    return compiled

  def step(self) -> float:
    t = time.perf_counter()
    self.state, metrics = self.compiled(self.state, self.batch, self.rng)
    jax.block_until_ready(metrics)
    elapsed = time.perf_counter() - t
    self.loss = float(metrics["loss"])
    return elapsed

  def row(self) -> dict:
    return {"variant": self.name, "overrides": self.overrides,
            "attention": self.config.model.attention, "attention_dropout": self.bert.attention_probs_dropout_prob,
            "hidden_dropout": self.bert.hidden_dropout_prob, "dtype": self.config.model.dtype, "scan_layers": self.config.model.scan_layers,
            "fuse_passages": self.config.model.fuse_passages, "rng_impl": self.config.rng_impl,
            "compile_s": round(statistics.median(a + b for a, b in self.compiles), 2),
            "trace_lower_s": round(statistics.median(a for a, _ in self.compiles), 2),
            "xla_compile_s": round(statistics.median(b for _, b in self.compiles), 2),
            "compile_s_all": [round(a + b, 2) for a, b in self.compiles],
            "step_s_median": round(statistics.median(self.times), 4),
            "step_s_min": round(min(self.times), 4), "step_s_max": round(max(self.times), 4),
            "step_s_all": [round(t, 4) for t in self.times], "final_loss": round(self.loss, 5)}


def table(rows: list[dict], base: dict | None) -> str:
  cols = ("variant", "compile_s", "step_s_median", "step_s_min", "speedup_vs_before", "compile_vs_before")
  lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
  for r in rows:
    if base is not None:
      r["speedup_vs_before"] = round(base["step_s_median"] / r["step_s_median"], 2)
      r["compile_vs_before"] = round(r["compile_s"] / base["compile_s"], 2)
    lines.append("| " + " | ".join(str(r.get(c, "")) for c in cols) + " |")
  return "\n".join(lines)


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--variants", default=",".join(v for v in VARIANTS if v != "manual_no_attn_dropout"),
                 help=f"comma list of {', '.join(VARIANTS)} (manual_no_attn_dropout is 'after' on CPU)")
  p.add_argument("--batch", type=int, default=16)
  p.add_argument("--q_len", type=int, default=64)
  p.add_argument("--p_len", type=int, default=256)
  p.add_argument("--negatives", type=int, default=1)
  p.add_argument("--warmup", type=int, default=1)
  p.add_argument("--rounds", type=int, default=3, help="timed steps per variant, alternating")
  p.add_argument("--compile_rounds", type=int, default=3,
                 help="compiles per --recompile variant (the first one included), alternating")
  p.add_argument("--recompile", default="before,after,after_scan",
                 help="variants whose compile is repeated (the others are compiled once)")
  p.add_argument("--output", default=str(RESULTS))
  p.add_argument("--note", default="")
  args = p.parse_args(argv)
  names = [v for v in args.variants.split(",") if v]
  unknown = sorted(set(names) - set(VARIANTS))
  if unknown:
    raise SystemExit(f"unknown variants {unknown}; expected some of {', '.join(VARIANTS)}")

  variants = []
  for name in names:
    print(f"{name}: compiling ...", flush=True)
    v = Variant(name, args, VARIANTS[name])
    print(f"{name}: compile {sum(v.compiles[-1]):.1f}s (trace+lower {v.compiles[-1][0]:.1f}s)", flush=True)
    for _ in range(args.warmup):
      v.step()
    variants.append(v)
  recompile = [v for v in variants if v.name in args.recompile.split(",")]
  for r in range(1, args.compile_rounds):
    for v in recompile:
      v.compile()
      print(f"compile round {r}: {v.name} {sum(v.compiles[-1]):.1f}s", flush=True)
  for r in range(args.rounds):
    for v in variants:
      v.times.append(v.step())
      print(f"round {r}: {v.name} {v.times[-1]:.3f}s", flush=True)
  rows = [v.row() for v in variants]
  base = next((r for r in rows if r["variant"] == "before"), None)
  text = table(rows, base)
  result = {
      "benchmark": "train_step_speed", "model": "all-MiniLM-L6-v2", "mode": "bpr",
      "batch": args.batch, "question_length": args.q_len, "passage_length": args.p_len,
      "num_hard_negatives": args.negatives, "warmup_steps": args.warmup, "rounds": args.rounds,
      "compile_rounds": args.compile_rounds, "recompile": args.recompile,
      "jax_version": jax.__version__, "backend": jax.default_backend(),
      "device_count": jax.device_count(), "cpu_count": os.cpu_count(), "platform": platform.platform(),
      "load_average": os.getloadavg(),
      "env": {k: os.environ.get(k) for k in ("OPENBLAS_NUM_THREADS", "XLA_FLAGS") if os.environ.get(k)},
      "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
      "command": "python benchmarks/train_step_speed.py " + " ".join(sys.argv[1:] if argv is None else argv),
      "note": args.note, "rows": rows,
  }
  out = pathlib.Path(args.output)
  out.parent.mkdir(parents=True, exist_ok=True)
  tmp = out.with_suffix(".json.tmp")
  tmp.write_text(json.dumps(result, indent=2) + "\n")
  os.replace(tmp, out)
  print(text)
  print(f"wrote {out}")


if __name__ == "__main__":
  main()
