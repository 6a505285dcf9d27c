"""Times building the `dpr_wiki` TFDS dataset (array_record) from a generated psgs_w100.tsv.

  python benchmarks/build_wiki_tfds.py [--num_passages=200000] [--words=100]

Writes a DPR-style TSV of N passages of ~100 words into a temporary manual
dir, runs `download_and_prepare` into a temporary data dir, reads a few rows
back with tfds.data_source, prints the numbers and writes them to
benchmarks/results/build_wiki_tfds.json.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import sys
import tempfile
import time

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks import common  # noqa: E402


FLAGS = flags.FLAGS
flags.DEFINE_integer("num_passages", 200_000, "Passages in the generated TSV.")
flags.DEFINE_integer("words", 100, "Words per passage (DPR uses 100).")
flags.DEFINE_string("output", os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                           "build_wiki_tfds.json"), "Result JSON.")


def write_tsv(path: str, n: int, words: int, seed: int = 0) -> None:
  rng = random.Random(seed)
  vocab = [f"w{i}" for i in range(5000)] + ["the", "of", "and", "in", "a", "\u00e9t\u00e9", "M\u00fcller"]
  with open(path, "w", encoding="utf-8") as f:
    f.write("id\ttext\ttitle\n")
    for i in range(1, n + 1):
      text = " ".join(rng.choices(vocab, k=words))
      f.write(f"{i}\t\"{text} \"\"quoted\"\"\"\tTitle {i // 7}\n")


def main(argv):
  del argv
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  import bpr_jax.data.tfds  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
  tmp = tempfile.mkdtemp(prefix="bench_wiki_")
  try:
    manual = os.path.join(tmp, "manual")
    os.makedirs(manual)
    tsv = os.path.join(manual, "psgs_w100.tsv")
    t0 = time.perf_counter()
    write_tsv(tsv, FLAGS.num_passages, FLAGS.words)
    gen_s = time.perf_counter() - t0
    builder = tfds.builder("dpr_wiki/psgs_w100", data_dir=os.path.join(tmp, "data"))
    t0 = time.perf_counter()
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual))
    build_s = time.perf_counter() - t0
    source = builder.as_data_source()["train"]
    assert len(source) == FLAGS.num_passages, len(source)
    t0 = time.perf_counter()
    rng = random.Random(1)
    reads = 2000
    for _ in range(reads):
      i = rng.randrange(len(source))
      assert int(source[i]["passage_id"]) == i + 1
    read_us = (time.perf_counter() - t0) / reads * 1e6
    out_bytes = sum(os.path.getsize(os.path.join(builder.data_dir, f)) for f in os.listdir(builder.data_dir))
    result = {
        "num_passages": FLAGS.num_passages,
        "words_per_passage": FLAGS.words,
        "tsv_mb": round(os.path.getsize(tsv) / 2**20, 1),
        "array_record_mb": round(out_bytes / 2**20, 1),
        "tsv_generation_s": round(gen_s, 2),
        "build_s": round(build_s, 2),
        "build_s_per_million": round(build_s / FLAGS.num_passages * 1e6, 1),
        "passages_per_s": round(FLAGS.num_passages / build_s),
        "estimated_psgs_w100_21m_min": round(build_s / FLAGS.num_passages * 21_015_324 / 60, 1),
        "random_read_us": round(read_us, 1),
        "tfds": tfds.__version__,
        **common.machine_info(with_jax=False),
    }
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  print(json.dumps(result, indent=1))
  common.write_result(FLAGS.output, result)


if __name__ == "__main__":
  app.run(main)
