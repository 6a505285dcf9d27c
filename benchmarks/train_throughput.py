"""Training throughput (examples/s) of the real jitted BPR/DPR train step.

Builds the encoders, optimizer and train step exactly as `bpr_jax.train.train_and_evaluate`
does (`build_biencoder`, `make_optimizer`, `make_train_step`, jitted with the same shardings
and buffer donation), feeds it fixed random token batches of the configured shape
(question [B, Lq], positive [B, Lp], hard negatives [B*n, Lp]; every attention-mask entry 1,
so every position is computed, as it is anyway with fixed padded shapes) and times
`--steps` steps after `--warmup` untimed ones (compilation + first run).

One example = one question with its positive and its n hard negatives, so a step of batch B
encodes B * (1 + 1 + n) sequences.

Cases:
  tiny         configs/tiny.py (random 2-layer BERT, hidden 64), its batch and lengths.
  minilm       all-MiniLM-L6-v2 from $BPR_SHARED_DIR/models (6 layers, hidden 384), BPR mode,
               float32, questions and passages at length 256, batch --minilm_batch (16).
  bert-base    GPU only (`jax.default_backend() == 'gpu'`): bert-base architecture
               (random init, 12 layers, hidden 768), bfloat16, batch 128, length 256; also
               reports MFU = model FLOPs/s / (--peak_tflops * 1e12).

Model FLOPs per step (training = 3x forward), summed over every sequence of the step:
  6 * P_matmul * tokens  +  12 * layers * L * hidden * tokens
with P_matmul the encoder's matmul weights (layers * (4 h^2 + 2 h i)) and the second term
the QK^T and AV attention matmuls. Embedding lookups, layer norms, softmax and the loss are
not counted.

  OPENBLAS_NUM_THREADS=1 python benchmarks/train_throughput.py
  python benchmarks/train_throughput.py --cases=tiny --steps=20
  python benchmarks/train_throughput.py --cases=bert-base --peak_tflops=989   # H100 bf16 dense

Results: benchmarks/results/train_throughput.json (and a table on stdout).
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from benchmarks import common  # noqa: E402
from benchmarks.common import REPO  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from bpr_jax import parallel, train  # noqa: E402
from bpr_jax.models import build  # noqa: E402
from bpr_jax.models.bert import BertConfig  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "train_throughput.json"
BERT_BASE = dict(vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                 intermediate_size=3072, max_position_embeddings=512)


def load_config(name: str):
  """get_config() of configs/NAME.py."""
  import importlib
  return importlib.import_module(f"configs.{name}").get_config()


# ----------------------------------------------------------------------------- FLOPs


def step_flops(bert: BertConfig, batch: int, q_len: int, p_len: int, num_neg: int) -> float:
  """Model FLOPs of one training step (forward + backward) over every sequence of the batch."""
  return common.train_step_flops(bert, batch, q_len, p_len, num_neg)


# ----------------------------------------------------------------------------- one case


def random_batch(rng: np.random.Generator, vocab: int, batch: int, q_len: int, p_len: int,
                 num_neg: int) -> dict[str, np.ndarray]:
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


def measure(name: str, config, bert: BertConfig, *, load_weights: bool, warmup: int, steps: int,
            peak_tflops: float | None) -> dict:
  train.validate_config(config)
  mesh = parallel.make_mesh()
  b = config.batch_size
  q_len, p_len = config.data.question_max_length, config.data.passage_max_length
  n = config.data.num_hard_negatives
  t0 = time.perf_counter()
  biencoder, params = train.build_biencoder(config, bert, load_weights=load_weights, mesh=mesh)
  total_steps = warmup + steps
  tx, lr = train.make_optimizer(config, max(total_steps, 10))
  state = {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": jax.jit(tx.init)(params)}
  state = jax.device_put(state, jax.tree.map(lambda x: x.sharding, state))
  shardings = jax.tree.map(lambda x: x.sharding, state)
  step_fn = jax.jit(train.make_train_step(biencoder, tx, lr, config),
                    in_shardings=(shardings, parallel.batch_sharding(mesh), parallel.replicated(mesh)),
                    out_shardings=(shardings, parallel.replicated(mesh)), donate_argnums=(0,))
  build_s = time.perf_counter() - t0
  batch = parallel.global_batch(random_batch(np.random.default_rng(0), bert.vocab_size, b, q_len, p_len, n), mesh)
  rng = train.dropout_key(config)

  t0 = time.perf_counter()
  for _ in range(warmup):
    state, metrics = step_fn(state, batch, rng)
    jax.block_until_ready(metrics)
  warmup_s = time.perf_counter() - t0
  times = []
  for _ in range(steps):
    t = time.perf_counter()
    state, metrics = step_fn(state, batch, rng)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - t)
  loss = float(metrics["loss"])
  if not np.isfinite(loss):
    raise RuntimeError(f"{name}: loss is {loss}")
  median = statistics.median(times)
  flops = step_flops(bert, b, q_len, p_len, n)
  row = {
      "case": name, "mode": config.mode, "dtype": config.model.dtype, "init": config.model.init,
      "layers": bert.num_hidden_layers, "hidden": bert.hidden_size,
      "batch": b, "question_length": q_len, "passage_length": p_len, "num_hard_negatives": n,
      "sequences_per_step": b * (2 + n),
      "warmup_steps": warmup, "timed_steps": steps,
      "build_s": round(build_s, 2), "warmup_s": round(warmup_s, 2),
      "step_s_median": round(median, 4), "step_s_mean": round(statistics.fmean(times), 4),
      "step_s_min": round(min(times), 4), "step_s_max": round(max(times), 4),
      "examples_per_s": round(b / median, 3),
      "sequences_per_s": round(b * (2 + n) / median, 3),
      "model_flops_per_step": flops,
      "model_tflops_per_s": round(flops / median / 1e12, 4),
      "final_loss": round(loss, 5),
  }
  if peak_tflops:
    row["peak_tflops"] = peak_tflops
    row["mfu"] = round(flops / median / (peak_tflops * 1e12), 4)
  return row


def tiny_case(args) -> tuple:
  from bpr_jax.data.tiny import make_tiny_dataset
  from bpr_jax.tokenization import Tokenizer
  config = load_config("tiny")
  tmp = tempfile.mkdtemp(prefix="bpr-throughput-tiny-")
  paths = make_tiny_dataset(os.path.join(tmp, "tiny_data"), seed=config.data.tiny_seed)
  bert = train.encoder_configs(config, Tokenizer.from_dir(paths["vocab_dir"]))
  return config, bert, False


def minilm_case(args) -> tuple:
  config = common.minilm_train_config(args.minilm_batch, args.length, args.length, mode=args.mode)
  return config, train.encoder_configs(config, None), True


def bert_base_case(args) -> tuple:
  from configs.common import base_config
  config = base_config()
  config.mode = args.mode
  config.batch_size = args.bert_base_batch
  config.model.init = "random"
  config.model.hf_dir = ""
  config.model.dtype = "bfloat16"
  config.model.bert.update(BERT_BASE)
  config.data.question_max_length = args.bert_base_length
  config.data.passage_max_length = args.bert_base_length
  bert = build._with_dropout(BertConfig.from_dict(BERT_BASE), config.model.dropout)  # pylint: disable=protected-access
  return config, bert, False


CASES = {"tiny": tiny_case, "minilm": minilm_case, "bert-base": bert_base_case}


def table(rows: list[dict]) -> str:
  cols = ("case", "mode", "dtype", "batch", "question_length", "passage_length", "step_s_median",
          "examples_per_s", "sequences_per_s", "model_tflops_per_s", "mfu")
  lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
  for r in rows:
    lines.append("| " + " | ".join(str(r.get(c, "")) for c in cols) + " |")
  return "\n".join(lines)


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description="Train-step throughput of bpr-jax.")
  p.add_argument("--cases", default="tiny,minilm,bert-base",
                 help="comma list of tiny, minilm, bert-base (bert-base runs only on GPU)")
  p.add_argument("--mode", default="bpr", choices=("bpr", "dpr"))
  p.add_argument("--minilm_batch", type=int, default=16)
  p.add_argument("--length", type=int, default=256, help="MiniLM question and passage length")
  p.add_argument("--bert_base_batch", type=int, default=128)
  p.add_argument("--bert_base_length", type=int, default=256)
  p.add_argument("--force_bert_base", action="store_true",
                 help="run bert-base on a non-GPU backend too (a code check; no MFU)")
  p.add_argument("--warmup", type=int, default=2)
  p.add_argument("--steps", type=int, default=5)
  p.add_argument("--tiny_steps", type=int, default=30)
  p.add_argument("--peak_tflops", type=float, default=989.0,
                 help="accelerator peak TFLOP/s for MFU (default: H100 SXM dense bf16)")
  p.add_argument("--output", default=str(RESULTS))
  p.add_argument("--note", default="", help="free text stored with the results")
  args = p.parse_args(argv)

  backend = jax.default_backend()
  rows, skipped = [], {}
  for name in [c for c in args.cases.split(",") if c]:
    if name not in CASES:
      raise SystemExit(f"unknown case {name!r}; expected some of {', '.join(CASES)}")
    if name == "bert-base" and backend != "gpu" and not args.force_bert_base:
      skipped[name] = f"needs a GPU (backend is {backend}); unmeasured"
      print(f"{name}: skipped ({skipped[name]})", flush=True)
      continue
    config, bert, load_weights = CASES[name](args)
    steps = args.tiny_steps if name == "tiny" else args.steps
    peak = args.peak_tflops if backend == "gpu" else None
    print(f"{name}: measuring ({args.warmup} warm-up + {steps} timed steps)...", flush=True)
    row = measure(name, config, bert, load_weights=load_weights, warmup=args.warmup, steps=steps,
                  peak_tflops=peak)
    print(json.dumps(row), flush=True)
    rows.append(row)

  result = {
      "benchmark": "train_throughput",
      "jax_version": jax.__version__,
      "backend": backend,
      "devices": [str(d) for d in jax.devices()],
      **common.machine_info(),
      "flops_formula": "6 * matmul_params * tokens + 12 * layers * L * hidden * tokens per step",
      "note": args.note,
      "rows": rows,
      "skipped": skipped,
  }
  out = common.write_result(args.output, result)
  print(table(rows))
  print(f"wrote {out}")


if __name__ == "__main__":
  main()
