"""Encode on a CPU: ``--batch_size`` 512 (the accelerator default) against 64 (the CPU default).

  BPR_SHARED_DIR=/work/shared python benchmarks/encode_batch_cpu.py \
      [--docs=500 --rounds=3 --max_length=256 --batch_sizes=512,64]

Model: all-MiniLM-L6-v2 exported with mean pooling (``importers.import_hf_encoder``, what
``python -m bpr_jax.export --hf_model=... --pooling=mean`` writes) into a temp folder.  Passages:
the first ``--docs`` documents of SciFact's corpus.jsonl.  Each variant runs ``encode_corpus``
exactly as ``python -m bpr_jax.encode`` does (bucketed padding, ``--pad_multiple=32``) into a
fresh output folder; one untimed round compiles every shape, then the variants alternate for
``--rounds`` rounds (the order flips each round).  For each call: wall seconds, passages/s, and
the process's user and system CPU seconds (``getrusage``).  Also per variant: the padded
tokens its batches compute (a batch as large as the whole set cannot be sorted into buckets,
so part of the difference is padding; the rest is the CPU's memory traffic, seen as system
time).  The codes of the variants are compared bit for bit.

Results: printed, and written to benchmarks/results/encode_batch_cpu.json with the CPU model
(``lscpu``) and the load average before and after.  Other jobs may share the machine, so the
figures are noisy; compare the variants of one run, not runs of different days.
"""
from __future__ import annotations

import argparse
import os
import pathlib
import resource
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from benchmarks import common  # noqa: E402  pylint: disable=wrong-import-position


def cpu_model() -> str | None:
  """``Model name`` of ``lscpu`` (None where lscpu is missing)."""
  try:
    out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
  except OSError:
    return None
  for line in out.splitlines():
    if line.startswith("Model name:"):
      return line.split(":", 1)[1].strip()
  return None


def padded_tokens(table, batch: int, multiple: int, devices: int) -> int:
  """Token slots the encode batches of one chunk compute: rows sorted by length, each batch
  padded to its bucket and to ``batch`` rows (rounded up to the device count)."""
  import numpy as np  # pylint: disable=import-outside-toplevel

  from bpr_jax.data.token_cache import bucket_length  # pylint: disable=import-outside-toplevel
  rows_per_batch = -(-batch // devices) * devices
  order = np.argsort(table.lengths, kind="stable")
  total = 0
  for s in range(0, len(order), rows_per_batch):
    total += rows_per_batch * bucket_length(table.longest(order[s:s + rows_per_batch]), multiple,
                                            table.max_length)
  return total


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
  parser.add_argument("--docs", type=int, default=500)
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--max_length", type=int, default=256)
  parser.add_argument("--pad_multiple", type=int, default=32)
  parser.add_argument("--batch_sizes", default="512,64")
  parser.add_argument("--output", default=str(common.RESULTS / "encode_batch_cpu.json"))
  args = parser.parse_args()
  sizes = [int(b) for b in args.batch_sizes.split(",")]
  minilm = common.shared_dir() / "models" / "all-MiniLM-L6-v2"
  corpus = common.shared_dir() / "data" / "scifact" / "corpus.jsonl"
  for path in (minilm, corpus):
    if not path.exists():
      raise SystemExit(f"error: {path} not found (set BPR_SHARED_DIR)")

  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel

  from bpr_jax.data.passages import iter_passages  # pylint: disable=import-outside-toplevel
  from bpr_jax.data.token_cache import tokenize_passages  # pylint: disable=import-outside-toplevel
  from bpr_jax.encode import default_batch_size, encode_corpus  # pylint: disable=import-outside-toplevel
  from bpr_jax.exported_model import load_exported  # pylint: disable=import-outside-toplevel
  from bpr_jax.importers import import_hf_encoder  # pylint: disable=import-outside-toplevel

  load_before = list(os.getloadavg())
  with tempfile.TemporaryDirectory(prefix="encode_batch_cpu-") as tmp:
    tmp = pathlib.Path(tmp)
    model_dir = tmp / "model"
    import_hf_encoder(minilm, model_dir, pooling="mean", max_length=args.max_length)
    model = load_exported(model_dir)
    subset = tmp / "corpus.jsonl"
    with open(corpus, encoding="utf-8") as src, open(subset, "w", encoding="utf-8") as dst:
      for _, line in zip(range(args.docs), src):
        dst.write(line)
    docs = list(iter_passages(subset))
    table = tokenize_passages(model.tokenizer, [p.title for p in docs], [p.text for p in docs],
                              args.max_length)
    devices = len(jax.local_devices())

    def run(batch: int, name: str) -> dict:
      out = tmp / name
      r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
      encode_corpus(model, subset, out, model_path=model_dir, batch_size=batch, progress=False,
                    pad_multiple=args.pad_multiple)
      wall, r1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF)
      return {"seconds": round(wall, 3), "passages_per_second": round(len(docs) / wall, 2),
              "user_seconds": round(r1.ru_utime - r0.ru_utime, 2),
              "system_seconds": round(r1.ru_stime - r0.ru_stime, 2),
              "codes": np.load(out / "codes.npy")}

    for b in sizes:
      w = run(b, f"warmup_{b}")
      common.log(f"warm-up batch {b}: {w['seconds']} s (compiles its shapes)")
    calls: dict[int, list[dict]] = {b: [] for b in sizes}
    for r in range(args.rounds):
      for b in (sizes if r % 2 == 0 else sizes[::-1]):
        c = run(b, f"round{r}_{b}")
        calls[b].append(c)
        common.log(f"round {r} batch {b}: {c['passages_per_second']} passages/s, "
                   f"user {c['user_seconds']} s, system {c['system_seconds']} s")
    reference = calls[sizes[0]][0]["codes"]
    differing_bits = {b: int((np.unpackbits(calls[b][-1]["codes"]) != np.unpackbits(reference)).sum())
                      for b in sizes}
    variants = {}
    for b in sizes:
      rows = [{k: v for k, v in c.items() if k != "codes"} for c in calls[b]]
      variants[str(b)] = {
          "batch_size": b,
          "median_passages_per_second": statistics.median(c["passages_per_second"] for c in rows),
          "median_user_seconds": statistics.median(c["user_seconds"] for c in rows),
          "median_system_seconds": statistics.median(c["system_seconds"] for c in rows),
          "padded_tokens": padded_tokens(table, b, args.pad_multiple, devices),
          "calls": rows,
      }
  real_tokens = int(table.lengths.sum())
  result = {
      "benchmark": "encode_batch_cpu",
      "command": " ".join(["python", "benchmarks/encode_batch_cpu.py"] + sys.argv[1:]),
      "cpu_model": cpu_model(),
      "machine": common.machine_info(),
      "load_average_before": [round(x, 2) for x in load_before],
      "load_average_after": [round(x, 2) for x in os.getloadavg()],
      "model": "all-MiniLM-L6-v2, mean pooling, exported with importers.import_hf_encoder",
      "passages": len(docs),
      "real_tokens": real_tokens,
      "max_length": args.max_length,
      "pad_multiple": args.pad_multiple,
      "rounds": args.rounds,
      "default_batch_size_here": default_batch_size(),
      "variants": variants,
      "speedup": {f"{b} over {sizes[0]}": round(variants[str(b)]["median_passages_per_second"]
                                                / variants[str(sizes[0])]["median_passages_per_second"], 3)
                  for b in sizes[1:]},
      "differing_code_bits_vs_first": differing_bits,
      "notes": ("Whole encode_corpus calls (reading, tokenising, encoding, writing) into fresh "
                "folders after an untimed warm-up round that compiles every shape; medians over "
                "rounds, variants alternating. Noisy: other jobs shared the CPU cores during the "
                "run (see the load averages). With as many passages as one batch of 512, that "
                "batch cannot be sorted into length buckets, so padded_tokens differ; a large "
                "corpus sorts each 100k-passage chunk and pads much less at either size."),
  }
  path = common.write_result(args.output, result)
  for b in sizes:
    v = variants[str(b)]
    print(f"batch {b}: {v['median_passages_per_second']} passages/s (median), user "
          f"{v['median_user_seconds']} s, system {v['median_system_seconds']} s, "
          f"{v['padded_tokens']} padded token slots")
  print(f"speedup {result['speedup']}; wrote {path}")


if __name__ == "__main__":
  main()
