"""Encode throughput with passages padded to the maximum vs sorted and padded per bucket.

  PYTHONPATH=. BPR_SHARED_DIR=/work/shared python benchmarks/encode_speed.py \
      [--docs=256 --batch_size=32 --rounds=2 --max_length=256]

Model: all-MiniLM-L6-v2 exported with mean pooling (`python -m bpr_jax.export --hf_model=...
--pooling=mean --max_length=256`, the project's SciFact setting). Passages: the first
`--docs` documents of SciFact's corpus.jsonl (abstracts: ~240 tokens on average, most
reach 256), and the same documents cut to their first 100 words (DPR's passage shape). Both modes run through `encode.encode_corpus`
in this one process, alternating fixed / bucketed for `--rounds` rounds after every shape has
been compiled once; passages/s are medians over rounds of whole encode_corpus calls (reading,
tokenising, encoding, writing). The codes of the two modes are compared bit for bit.

Also: the padded fraction of the tokens of encode batches (`--batch_size` rows) over the whole
SciFact corpus (5,183 documents, tokenisation only) and the DPR-format passage fixture
(tests/fixtures/psgs_small.tsv, 12 passages), padded to the maximum in file order (before)
and sorted by length per chunk and padded per bucket (after), at 128 and 256 tokens.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def padding_fraction(table, batch: int, multiple: int, chunk: int = 100_000) -> dict:
  """Padded fraction of encode batches: before (max length, file order) and after (sorted per
  chunk, padded to the bucket of each batch's longest)."""
  from bpr_jax.data.token_cache import bucket_length  # pylint: disable=import-outside-toplevel
  real = int(table.lengths.sum())
  n, max_length = len(table), table.max_length
  slots = 0
  shapes = set()
  for lo in range(0, n, chunk):
    order = lo + np.argsort(table.lengths[lo:lo + chunk], kind="stable")
    for s in range(0, len(order), batch):
      rows = order[s:s + batch]
      length = bucket_length(table.longest(rows), multiple, max_length)
      shapes.add(length)
      slots += len(rows) * length
  return {"passages": n, "max_length": max_length, "mean_tokens": round(real / n, 2),
          "padded_fraction_before": round(1 - real / (n * max_length), 4),
          "padded_fraction_after": round(1 - real / slots, 4),
          "lengths_used_after": sorted(shapes)}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--shared", default=os.environ.get("BPR_SHARED_DIR", str(REPO.parent / "shared")))
  parser.add_argument("--docs", type=int, default=256)
  parser.add_argument("--batch_size", type=int, default=32)
  parser.add_argument("--rounds", type=int, default=2)
  parser.add_argument("--max_length", type=int, default=256)
  parser.add_argument("--pad_multiple", type=int, default=32)
  parser.add_argument("--output", default=str(REPO / "benchmarks" / "results" / "encode_speed.json"))
  args = parser.parse_args()
  shared = pathlib.Path(args.shared)
  minilm = shared / "models" / "all-MiniLM-L6-v2"
  corpus = shared / "data" / "scifact" / "corpus.jsonl"

  import jax  # pylint: disable=import-outside-toplevel

  from bpr_jax import encode as enc  # pylint: disable=import-outside-toplevel
  from bpr_jax.data.passages import iter_passages  # pylint: disable=import-outside-toplevel
  from bpr_jax.data.token_cache import (bucket_length, num_buckets,  # pylint: disable=import-outside-toplevel
                                        tokenize_passages)
  from bpr_jax.exported_model import load_exported  # pylint: disable=import-outside-toplevel

  with tempfile.TemporaryDirectory(prefix="encode_speed.") as tmp:
    tmp = pathlib.Path(tmp)
    model_dir = tmp / "minilm"
    export_cmd = [sys.executable, "-m", "bpr_jax.export", f"--hf_model={minilm}", "--pooling=mean",
                  f"--max_length={args.max_length}", f"--output={model_dir}"]
    subprocess.run(export_cmd, check=True, capture_output=True, env=dict(os.environ, PYTHONPATH=str(REPO)))
    model = load_exported(model_dir)
    subset = tmp / "corpus_subset.jsonl"
    short = tmp / "corpus_subset_100_words.jsonl"  # DPR's passage shape: the first 100 words
    with open(corpus, encoding="utf-8") as src, open(subset, "w", encoding="utf-8") as dst, \
        open(short, "w", encoding="utf-8") as dst_short:
      for _, line in zip(range(args.docs), src):
        dst.write(line)
        d = json.loads(line)
        d["text"] = " ".join(d.get("text", "").split()[:100])
        dst_short.write(json.dumps(d) + "\n")
    max_length = int(model.settings["passage_max_length"])

    # Compile every shape once (both modes share one jitted function per model).
    fn, padded = enc.make_sharded_encoder(model.passage_encoder, args.batch_size, codes=True)
    lengths = sorted({bucket_length(n, args.pad_multiple, max_length) for n in range(1, max_length + 1)})
    t0 = time.perf_counter()
    for length in lengths:
      zeros = np.zeros((padded, length), np.int32)
      jax.block_until_ready(fn({"input_ids": zeros, "attention_mask": zeros + 1, "token_type_ids": zeros}))
    compile_s = time.perf_counter() - t0

    modes = {"fixed": 0, "bucketed": args.pad_multiple}
    sets = {"scifact": subset, "scifact_100_words": short}
    times = {(d, m): [] for d in sets for m in modes}
    codes: dict = {}
    for r in range(args.rounds):
      for name, path in sets.items():
        for mode, multiple in modes.items():
          out = tmp / f"{name}_{mode}_{r}"
          t0 = time.perf_counter()
          enc.encode_corpus(model, path, out, batch_size=args.batch_size, progress=False, pad_multiple=multiple)
          times[name, mode].append(time.perf_counter() - t0)
          c = np.load(out / "codes.npy")
          if (name, mode) in codes:
            assert np.array_equal(codes[name, mode], c), f"{name} {mode}: codes differ between rounds"
          codes[name, mode] = c
          print(f"round {r} {name} {mode}: {args.docs / times[name, mode][-1]:.1f} passages/s", flush=True)
    differing = {name: int((np.unpackbits(codes[name, "fixed"]) != np.unpackbits(codes[name, "bucketed"])).sum())
                 for name in sets}

    minilm_tok = model.tokenizer
    docs = list(iter_passages(corpus))
    fixture = list(iter_passages(REPO / "tests" / "fixtures" / "psgs_small.tsv"))
    pad = {}
    for length in (128, 256):
      pad[f"scifact_corpus_{length}"] = padding_fraction(
          tokenize_passages(minilm_tok, [p.title for p in docs], [p.text for p in docs], length),
          512, args.pad_multiple)
      pad[f"dpr_psgs_small_{length}"] = padding_fraction(
          tokenize_passages(minilm_tok, [p.title for p in fixture], [p.text for p in fixture], length),
          512, args.pad_multiple)
    for name, path in sets.items():
      sub = list(itertools.islice(iter_passages(path), args.docs))
      pad[f"benchmark_{name}"] = padding_fraction(
          tokenize_passages(minilm_tok, [p.title for p in sub], [p.text for p in sub], max_length),
          args.batch_size, args.pad_multiple)

  rate = {k: statistics.median(args.docs / t for t in v) for k, v in times.items()}
  fixed, bucketed = rate["scifact", "fixed"], rate["scifact", "bucketed"]
  result = {
      "benchmark": "encode_speed",
      "command": "PYTHONPATH=. BPR_SHARED_DIR=/work/shared python benchmarks/encode_speed.py " + " ".join(sys.argv[1:]),
      "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "backend": jax.default_backend(),
                  "devices": jax.local_device_count(), "note": "2 CPU cores shared with other jobs while measured"},
      "model": "all-MiniLM-L6-v2, mean pooling, exported with: python -m bpr_jax.export --hf_model=MINILM "
               f"--pooling=mean --max_length={args.max_length} --output=DIR",
      "passages": f"first {args.docs} documents of SciFact corpus.jsonl",
      "batch_size": args.batch_size, "passage_max_length": max_length, "pad_multiple": args.pad_multiple,
      "compiled_shapes_bucketed": num_buckets(args.pad_multiple, max_length),
      "compile_all_shapes_s": round(compile_s, 2),
      "rounds": args.rounds,
      "passages_per_s_fixed": round(fixed, 2),
      "passages_per_s_bucketed": round(bucketed, 2),
      "speedup": round(bucketed / fixed, 3),
      "seconds_fixed": [round(t, 2) for t in times["scifact", "fixed"]],
      "seconds_bucketed": [round(t, 2) for t in times["scifact", "bucketed"]],
      "codes_identical": differing["scifact"] == 0,
      "differing_bits": differing["scifact"],
      "dpr_like_100_words": {
          "passages": f"the same {args.docs} documents, text cut to its first 100 words (DPR's passage length)",
          "passages_per_s_fixed": round(rate["scifact_100_words", "fixed"], 2),
          "passages_per_s_bucketed": round(rate["scifact_100_words", "bucketed"], 2),
          "speedup": round(rate["scifact_100_words", "bucketed"] / rate["scifact_100_words", "fixed"], 3),
          "seconds_fixed": [round(t, 2) for t in times["scifact_100_words", "fixed"]],
          "seconds_bucketed": [round(t, 2) for t in times["scifact_100_words", "bucketed"]],
          "codes_identical": differing["scifact_100_words"] == 0,
          "differing_bits": differing["scifact_100_words"],
      },
      "padded_fraction": pad,
      "notes": "Each encode_corpus call includes reading, tokenising, writing chunk and final files; codes are "
               "packed on the device in both modes (only uint8 codes cross to the host).",
  }
  os.makedirs(os.path.dirname(args.output), exist_ok=True)
  tmp_out = args.output + ".tmp"
  with open(tmp_out, "w", encoding="utf-8") as f:
    json.dump(result, f, indent=1)
    f.write("\n")
  os.replace(tmp_out, args.output)
  print(json.dumps({k: result[k] for k in ("passages_per_s_fixed", "passages_per_s_bucketed", "speedup",
                                           "codes_identical", "differing_bits")}, indent=1))
  print(json.dumps(result["dpr_like_100_words"], indent=1))
  if any(differing.values()):
    raise SystemExit(f"codes differ between fixed and bucketed padding: {differing} bits")


if __name__ == "__main__":
  main()
