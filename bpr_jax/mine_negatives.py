"""Mines BM25 hard negatives and writes DPR retriever training JSON.

BEIR mode (positives from qrels with score > 0):

  python -m bpr_jax.mine_negatives --beir_dir=DIR --split=train --output=FILE.json

QA mode (a DPR qas file `question<TAB>['answer', ...]` and a passage TSV/JSONL;
positives are the top BM25 passages whose text contains an answer):

  python -m bpr_jax.mine_negatives --dpr_qas=CSV --passages=TSV --output=FILE.json

`hard_negative_ctxs` are the top BM25 passages (title + text, scored by the
`bm25s` library) that are not positives and, when the question has answers,
contain no answer in their title or text. Records carry the BEIR query id as
"qid". The output is written to a temporary name and renamed.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Iterable, Sequence

import bm25s
import numpy as np
from absl import app, flags, logging

from bpr_jax import metrics
from bpr_jax.data.beir import load_corpus, load_qrels, load_queries
from bpr_jax.data.dpr import iter_qas, write_dpr_json
from bpr_jax.data.examples import Passage
from bpr_jax.data.passages import iter_passages


@dataclasses.dataclass
class MiningStats:
  """Counts reported after mining."""
  num_questions: int = 0
  num_written: int = 0
  num_without_positive: int = 0
  num_short_of_negatives: int = 0
  seconds: float = 0.0


def has_answer(text: str, answers: Sequence[str], mode: str = "string") -> bool:
  """DPR's answer check (`bpr_jax.metrics.has_answer`), the one evaluation uses too."""
  return metrics.has_answer(answers, text, mode)


class Bm25Index:
  """BM25 over passages (title + text) with the `bm25s` library."""

  def __init__(self, passages: Sequence[Passage], *, stopwords: str | None = "en"):
    self.passages = passages
    self.stopwords = stopwords
    corpus = [f"{p.title} {p.text}" for p in passages]
    tokenized = bm25s.tokenize(corpus, stopwords=stopwords, show_progress=False)
    self.vocab = tokenized.vocab
    self.retriever = bm25s.BM25()
    self.retriever.index(tokenized, show_progress=False)

  def search(self, queries: Sequence[str], k: int, *, n_threads: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(doc indices, scores), each [len(queries), k'] with k' = min(k, #passages)."""
    k = min(k, len(self.passages))
    words = bm25s.tokenize(list(queries), stopwords=self.stopwords, return_ids=False, show_progress=False)
    ids = [[self.vocab[w] for w in q if w in self.vocab] for q in words]
    docs, scores = self.retriever.retrieve(ids, k=k, show_progress=False, n_threads=n_threads)
    return np.asarray(docs), np.asarray(scores)


def _ctx(p: Passage, score: float | None = None) -> dict:
  ctx = {"title": p.title, "text": p.text, "passage_id": p.id}
  if score is not None:
    ctx["score"] = round(float(score), 4)
  return ctx


def mine_beir(beir_dir: str, split: str = "train", *, num_hard_negatives: int = 30,
              skip_missing: bool = False, n_threads: int = 0) -> tuple[list[dict], MiningStats]:
  """DPR records for the queries of a BEIR split that have a qrel score > 0."""
  start = time.perf_counter()
  corpus = load_corpus(beir_dir)
  queries = load_queries(beir_dir)
  qrels = load_qrels(beir_dir, split, corpus_ids=corpus.keys(), query_ids=queries.keys(),
                     skip_missing=skip_missing)
  passages = list(corpus.values())
  index = Bm25Index(passages)
  qids = [q for q, docs in qrels.items() if any(s > 0 for s in docs.values())]
  judged = {q: set(docs) for q, docs in qrels.items()}
  max_judged = max((len(judged[q]) for q in qids), default=0)
  docs, scores = index.search([queries[q] for q in qids], num_hard_negatives + max_judged,
                              n_threads=n_threads)
  stats = MiningStats(num_questions=len(qids))
  records = []
  for row, qid in enumerate(qids):
    positives = [corpus[d] for d, s in qrels[qid].items() if s > 0]
    hard = []
    for j, score in zip(docs[row], scores[row]):
      p = passages[int(j)]
      if p.id in judged[qid]:  # positives, and documents judged not relevant
        continue
      hard.append(_ctx(p, score))
      if len(hard) == num_hard_negatives:
        break
    if len(hard) < num_hard_negatives:
      stats.num_short_of_negatives += 1
    records.append({"qid": qid, "question": queries[qid], "answers": [],
                    "positive_ctxs": [_ctx(p) for p in positives], "negative_ctxs": [],
                    "hard_negative_ctxs": hard})
  stats.num_written = len(records)
  stats.seconds = time.perf_counter() - start
  return records, stats


def mine_qas(qas_path: str, passages_path: str, *, num_hard_negatives: int = 30,
             num_positives: int = 10, depth: int = 100, n_threads: int = 0,
             match: str = "string") -> tuple[list[dict], MiningStats]:
  """DPR records for a qas file: BM25 top-`depth` split by answer matching.

  Answers are matched as evaluation matches them (`bpr_jax.metrics.has_answer`:
  DPR's tokeniser, NFD, uncased; ``match="regex"`` for CuratedTREC patterns), so
  a mined positive is a hit in evaluation and a hard negative is not.
  """
  start = time.perf_counter()
  passages = list(iter_passages(passages_path))
  index = Bm25Index(passages)
  rows = list(iter_qas(qas_path))
  depth = max(depth, num_hard_negatives + num_positives)
  docs, scores = index.search([q for _, q, _ in rows], depth, n_threads=n_threads)
  stats = MiningStats(num_questions=len(rows))
  records = []
  for row, (line, question, answers) in enumerate(rows):
    positives, hard = [], []
    for j, score in zip(docs[row], scores[row]):
      p = passages[int(j)]
      if answers and has_answer(p.text, answers, match):
        if len(positives) < num_positives:
          positives.append(_ctx(p, score))
      elif not answers or not has_answer(p.title, answers, match):
        if len(hard) < num_hard_negatives:
          hard.append(_ctx(p, score))
    if not positives:
      stats.num_without_positive += 1
      logging.info("%s:%d: no passage in the BM25 top %d contains an answer; skipped", qas_path, line, depth)
      continue
    if len(hard) < num_hard_negatives:
      stats.num_short_of_negatives += 1
    records.append({"qid": str(line), "question": question, "answers": answers, "positive_ctxs": positives,
                    "negative_ctxs": [], "hard_negative_ctxs": hard})
  stats.num_written = len(records)
  stats.seconds = time.perf_counter() - start
  return records, stats


def write_records(path: str, records: Iterable[dict]) -> int:
  """Writes DPR JSON atomically (temporary name, then rename)."""
  return write_dpr_json(path, records)


FLAGS = flags.FLAGS
flags.DEFINE_string("beir_dir", None, "BEIR dataset folder (corpus.jsonl, queries.jsonl, qrels/).")
flags.DEFINE_string("split", "train", "qrels split for --beir_dir.")
flags.DEFINE_string("dpr_qas", None, "DPR qas file (question<TAB>[answers]); needs --passages.")
flags.DEFINE_string("passages", None, "Passage TSV (id, text, title) or JSONL for --dpr_qas.")
flags.DEFINE_string("output", None, "Output DPR retriever JSON.")
flags.DEFINE_integer("num_hard_negatives", 30, "Hard negatives per question.")
flags.DEFINE_integer("num_positives", 10, "QA mode: most positives kept per question.")
flags.DEFINE_integer("depth", 100, "QA mode: BM25 candidates examined per question.")
flags.DEFINE_bool("skip_missing", False, "BEIR mode: skip qrels lines whose ids are unknown.")
flags.DEFINE_integer("threads", 0, "Threads for BM25 retrieval (0: none).")
flags.DEFINE_enum("match", "string", ["string", "regex"], "QA mode: answer matching (as evaluate --match).")


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not FLAGS.output:
    raise app.UsageError("--output is required")
  if bool(FLAGS.beir_dir) == bool(FLAGS.dpr_qas):
    raise app.UsageError("give exactly one of --beir_dir and --dpr_qas")
  if FLAGS.dpr_qas and not FLAGS.passages:
    raise app.UsageError("--dpr_qas needs --passages")
  if FLAGS.num_hard_negatives < 0:
    raise app.UsageError("--num_hard_negatives must be >= 0")
  if FLAGS.beir_dir:
    records, stats = mine_beir(FLAGS.beir_dir, FLAGS.split, num_hard_negatives=FLAGS.num_hard_negatives,
                               skip_missing=FLAGS.skip_missing, n_threads=FLAGS.threads)
  else:
    records, stats = mine_qas(FLAGS.dpr_qas, FLAGS.passages, num_hard_negatives=FLAGS.num_hard_negatives,
                              num_positives=FLAGS.num_positives, depth=FLAGS.depth, n_threads=FLAGS.threads,
                              match=FLAGS.match)
  write_records(FLAGS.output, records)
  logging.info("wrote %s: %s", FLAGS.output, stats)
  print(f"wrote {stats.num_written} of {stats.num_questions} questions to {FLAGS.output} in "
        f"{stats.seconds:.1f}s ({stats.num_without_positive} without a positive, "
        f"{stats.num_short_of_negatives} with fewer than {FLAGS.num_hard_negatives} hard negatives)")


if __name__ == "__main__":
  app.run(main)
