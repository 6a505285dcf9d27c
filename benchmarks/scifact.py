"""SciFact (BEIR) retrieval benchmark: MiniLM as released, its binary codes, and fine-tuned BPR/DPR.

Stages (each caches its output in --work_dir, so re-running skips finished work):

  encode      MiniLM-L6-v2 as released (float32, MEAN pooling, length 256) embeds the
              SciFact test queries (single sequences `[CLS] query [SEP]`) and all 5,183
              documents in two formats:
                single  `[CLS] title + " " + text [SEP]` (one string, token types 0)
                pair    `[CLS] title [SEP] text [SEP]`   (Tokenizer.passages, types 0/1)
              -> WORK/emb_queries_test.npy, WORK/emb_docs_{single,pair}.npy, WORK/doc_ids.npy
  untrained   rows computed from those embeddings with the project's modules:
                minilm-float            exact inner product of L2-normalised vectors (cosine, as
                                        sentence-transformers scores this model), faiss IndexFlatIP
                minilm-sign             Hamming order of sign codes (bpr_jax.search.two_stage_search,
                                        rerank=False, flat binary index)
                minilm-sign-two-stage   Hamming top-1000, rerank by <e_q, sign(e_p)>
                minilm-lsh              faiss IndexLSH, 384 random hyperplanes (random rotation)
                                        on the float vectors (evaluate.float_systems 'lsh')
                minilm-pq               faiss IndexPQ 48 x 8 bits, ADC (evaluate.float_systems 'pq')
  finetuned   reads the evaluate.py JSON of fine-tuned BPR / DPR runs (see configs/scifact.py for
              the commands) and adds their rows: bpr-flat, bpr-hash, bpr-no-rerank,
              bpr-no-candidates, dpr-flat, dpr-hnsw, dpr-lsh, dpr-pq, dpr-sign.
  report      writes benchmarks/results/scifact.{json,md} from every row measured so far.

Paths come from the environment: $BPR_SHARED_DIR (default ../shared beside the repo) holds
models/all-MiniLM-L6-v2 and data/scifact.

  OPENBLAS_NUM_THREADS=1 nice python benchmarks/scifact.py --stage=encode --work_dir=/tmp/scifact
  python benchmarks/scifact.py --stage=untrained --work_dir=/tmp/scifact
  python benchmarks/scifact.py --stage=report --work_dir=/tmp/scifact
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import sys
import time

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
  sys.path.insert(0, str(REPO))

DOC_FORMATS = ("single", "pair")
MAX_LENGTH = 256
ROW_NAMES = ("minilm-float", "minilm-sign", "minilm-sign-two-stage", "minilm-lsh", "minilm-pq",
             "bpr-flat", "bpr-hash", "bpr-no-rerank", "bpr-no-candidates",
             "dpr-flat", "dpr-hnsw", "dpr-lsh", "dpr-pq", "dpr-sign")
# Reference values on SciFact test (nDCG@10, Recall@100) from the task brief, used only to
# report whether our measured numbers reproduce them; never written as results.
REFERENCE = {
    "single": {"minilm-float": (0.6451, 0.925), "minilm-sign": (0.5881, 0.878),
               "minilm-sign-two-stage": (0.6228, 0.903), "minilm-lsh": (0.5431, 0.867),
               "minilm-pq": (0.6300, 0.907)},
    "pair": {"minilm-float": (0.6509, 0.930), "minilm-sign": (0.5920, 0.885),
             "minilm-sign-two-stage": (0.6167, 0.911), "minilm-pq": (0.6376, 0.918)},
}
RANDOM_ROWS = ("minilm-lsh", "minilm-pq")  # depend on random rotations / k-means


def shared_dir() -> pathlib.Path:
  return pathlib.Path(os.environ.get("BPR_SHARED_DIR", str(REPO.parent / "shared")))


def log(msg: str) -> None:
  print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ----------------------------------------------------------------------------- encode


def load_data(beir_dir: pathlib.Path, split: str = "test"):
  """(doc ids, titles, texts, Questions of `split`) in corpus-file order."""
  from bpr_jax.data.beir import load_corpus
  from bpr_jax.evaluate import load_beir
  corpus = load_corpus(beir_dir)
  ids = list(corpus)
  titles = [corpus[i].title for i in ids]
  texts = [corpus[i].text for i in ids]
  questions = load_beir(beir_dir, split, ids)
  return ids, titles, texts, questions


def doc_tokens(tokenizer, titles, texts, fmt: str) -> dict:
  if fmt == "single":
    joined = [f"{t} {x}".strip() for t, x in zip(titles, texts)]
    return tokenizer.questions(joined, MAX_LENGTH)
  if fmt == "pair":
    return tokenizer.passages(titles, texts, MAX_LENGTH)
  raise ValueError(f"unknown doc format {fmt!r}")


def encode_in_chunks(encode, tokens: dict, out_path: pathlib.Path, batch_size: int,
                     chunk: int = 256) -> np.ndarray:
  """Encodes with progress logging; keeps finished chunks in out_path.partial.npz to resume."""
  from bpr_jax.export import encode_batches
  n = len(tokens["input_ids"])
  partial = out_path.with_suffix(".partial.npz")
  done: list[np.ndarray] = []
  if partial.exists():
    with np.load(partial) as z:
      done = [z["emb"]]
    log(f"{out_path.name}: resuming after {len(done[0])} rows")
  start = sum(len(d) for d in done)
  t0 = time.perf_counter()
  for s in range(start, n, chunk):
    part = {k: v[s:s + chunk] for k, v in tokens.items()}
    done.append(encode_batches(encode, part, batch_size, 384))
    emb = np.concatenate(done)
    done = [emb]
    np.savez(partial, emb=emb)
    rate = (len(emb) - start) / (time.perf_counter() - t0)
    log(f"{out_path.name}: {len(emb)}/{n} rows, {rate:.1f} rows/s")
  emb = np.concatenate(done) if done else np.zeros((0, 384), np.float32)
  np.save(out_path, emb.astype(np.float32))
  if partial.exists():
    partial.unlink()
  return emb


def stage_encode(work: pathlib.Path, formats, batch_size: int) -> None:
  from bpr_jax.export import make_encode_fn
  from bpr_jax.models import hf
  from bpr_jax.tokenization import Tokenizer
  model_dir = shared_dir() / "models" / "all-MiniLM-L6-v2"
  beir_dir = shared_dir() / "data" / "scifact"
  work.mkdir(parents=True, exist_ok=True)
  ids, titles, texts, questions = load_data(beir_dir)
  np.save(work / "doc_ids.npy", np.asarray(ids))
  (work / "query_ids_test.json").write_text(json.dumps(questions.qids))
  tokenizer = Tokenizer.from_dir(model_dir)
  model = hf.load_bert(model_dir, pooling="mean")
  encode = make_encode_fn(model)
  q_path = work / "emb_queries_test.npy"
  if not q_path.exists():
    t0 = time.perf_counter()
    encode_in_chunks(encode, tokenizer.questions(questions.texts, MAX_LENGTH), q_path, batch_size)
    log(f"queries: {len(questions.texts)} in {time.perf_counter() - t0:.1f}s")
  for fmt in formats:
    path = work / f"emb_docs_{fmt}.npy"
    if path.exists():
      log(f"{path.name} exists; skipped")
      continue
    t0 = time.perf_counter()
    encode_in_chunks(encode, doc_tokens(tokenizer, titles, texts, fmt), path, batch_size)
    secs = time.perf_counter() - t0
    log(f"docs ({fmt}): {len(ids)} in {secs:.1f}s")
    timing = work / "encode_times.json"
    times = json.loads(timing.read_text()) if timing.exists() else {}
    times[fmt] = secs
    timing.write_text(json.dumps(times, indent=2))


# ----------------------------------------------------------------------------- main


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--stage", choices=("encode", "untrained", "finetuned", "report", "all"), default="all")
  p.add_argument("--work_dir", default=os.environ.get("BPR_SCIFACT_WORK", "/tmp/bpr-scifact-bench"))
  p.add_argument("--formats", default="single,pair")
  p.add_argument("--batch_size", type=int, default=32)
  args = p.parse_args(argv)
  work = pathlib.Path(args.work_dir)
  formats = [f for f in args.formats.split(",") if f]
  if args.stage in ("encode", "all"):
    stage_encode(work, formats, args.batch_size)


if __name__ == "__main__":
  main()
