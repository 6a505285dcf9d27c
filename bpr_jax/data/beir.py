"""BEIR datasets (corpus.jsonl, queries.jsonl, qrels/SPLIT.tsv) as training data."""
from __future__ import annotations

import csv
import os
from typing import Iterable

from absl import logging

from bpr_jax.data.examples import Example, Passage, check_index, data_error, json_object
from bpr_jax.data.passage_files import _iter_jsonl, parse_corpus_line

__all__ = ["load_corpus", "load_queries", "load_qrels", "BeirSource"]


def _corpus_path(beir_dir: str | os.PathLike) -> str:
  return os.path.join(os.fspath(beir_dir), "corpus.jsonl")


def _require(path: str) -> None:
  if not os.path.isfile(path):
    raise data_error(path, 0, "file not found")


def load_corpus(beir_dir: str | os.PathLike) -> dict[str, Passage]:
  """id -> Passage for BEIR_DIR/corpus.jsonl; a repeated id is a DataError naming its line."""
  path = _corpus_path(beir_dir)
  _require(path)
  corpus: dict[str, Passage] = {}
  lines: dict[str, int] = {}
  with open(path, "r", encoding="utf-8") as f:
    for line_no, line in enumerate(f, start=1):
      if not line.strip():
        continue
      p = parse_corpus_line(path, line_no, line)
      if p.id in corpus:
        raise data_error(path, line_no, f"duplicate document id {p.id!r} (first on line {lines[p.id]})")
      corpus[p.id] = p
      lines[p.id] = line_no
  if not corpus:
    raise data_error(path, 0, "no documents")
  return corpus


def load_queries(beir_dir: str | os.PathLike) -> dict[str, str]:
  """qid -> query text for BEIR_DIR/queries.jsonl."""
  path = os.path.join(os.fspath(beir_dir), "queries.jsonl")
  _require(path)
  queries: dict[str, str] = {}
  lines: dict[str, int] = {}
  with open(path, "r", encoding="utf-8") as f:
    for line_no, line in enumerate(f, start=1):
      if not line.strip():
        continue
      obj = json_object(path, line_no, line)
      qid = obj.get("_id")
      if isinstance(qid, bool) or not isinstance(qid, (str, int)) or not str(qid).strip():
        raise data_error(path, line_no, "missing or empty '_id'")
      qid = str(qid).strip()
      text = obj.get("text")
      if not isinstance(text, str) or not text.strip():
        raise data_error(path, line_no, f"query {qid!r}: 'text' missing or empty")
      if qid in queries:
        raise data_error(path, line_no, f"duplicate query id {qid!r} (first on line {lines[qid]})")
      queries[qid] = text
      lines[qid] = line_no
  return queries


def _corpus_ids(beir_dir: str | os.PathLike) -> set[str]:
  return {p.id for p in _iter_jsonl(_corpus_path(beir_dir), 0)}


def load_qrels(beir_dir: str | os.PathLike, split: str, *,
               corpus_ids: Iterable[str] | None = None,
               query_ids: Iterable[str] | None = None,
               skip_missing: bool = False, stats: dict | None = None) -> dict[str, dict[str, int]]:
  """qid -> {docid: score} from BEIR_DIR/qrels/SPLIT.tsv (header `query-id corpus-id score`).

  Every query and document id must exist in queries.jsonl / corpus.jsonl
  (pass `corpus_ids`/`query_ids` when already loaded): a missing one is a
  DataError naming the qrels file and line, or with `skip_missing=True` the
  line is skipped, logged and counted in stats["num_skipped"]. A repeated
  pair is an error too.
  """
  beir_dir = os.fspath(beir_dir)
  path = os.path.join(beir_dir, "qrels", f"{split}.tsv")
  _require(path)
  cids = set(corpus_ids) if corpus_ids is not None else _corpus_ids(beir_dir)
  qids = set(query_ids) if query_ids is not None else set(load_queries(beir_dir))
  qrels: dict[str, dict[str, int]] = {}
  skipped = 0
  with open(path, "r", encoding="utf-8", newline="") as f:
    reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
    for row in reader:
      line = reader.line_num
      if not row or all(not c.strip() for c in row):
        continue
      if line == 1 and row[0].strip().lower() in ("query-id", "query_id", "qid"):
        continue
      if len(row) < 3:
        raise data_error(path, line, f"expected 3 tab-separated fields (query-id, corpus-id, score), found {len(row)}")
      qid, did, score_text = row[0].strip(), row[1].strip(), row[2].strip()
      try:
        score = int(float(score_text))
      except ValueError:
        raise data_error(path, line, f"score {score_text!r} is not a number") from None
      missing = []
      if qid not in qids:
        missing.append(f"query id {qid!r} not in queries.jsonl")
      if did not in cids:
        missing.append(f"corpus id {did!r} not in corpus.jsonl")
      if missing:
        if not skip_missing:
          raise data_error(path, line, "; ".join(missing))
        skipped += 1
        logging.warning("%s:%d: skipped: %s", path, line, "; ".join(missing))
        continue
      docs = qrels.setdefault(qid, {})
      if did in docs:
        raise data_error(path, line, f"duplicate judgement for query {qid!r} and document {did!r}")
      docs[did] = score
  if skipped:
    logging.warning("%s: skipped %d lines with unknown ids", path, skipped)
  if stats is not None:
    stats["num_skipped"] = skipped
  return qrels


class BeirSource:
  """Training examples from a BEIR split: one per query with a qrel score > 0.

  Positives are the documents judged > 0 (in qrels order); `hard_negatives`
  come from `hard_negatives_json` (a DPR JSON written by
  `bpr_jax.mine_negatives`), matched by "qid" or else by question text.
  Queries without a mined record get no hard negatives.
  """

  def __init__(self, beir_dir: str | os.PathLike, split: str = "train", *,
               hard_negatives_json: str | os.PathLike | None = None,
               skip_missing: bool = False):
    self.beir_dir = os.fspath(beir_dir)
    self.split = split
    self.name = f"beir:{os.path.basename(os.path.normpath(self.beir_dir))}/{split}"
    self.corpus = load_corpus(self.beir_dir)
    self.queries = load_queries(self.beir_dir)
    stats: dict = {}
    self.qrels = load_qrels(self.beir_dir, split, corpus_ids=self.corpus.keys(),
                            query_ids=self.queries.keys(), skip_missing=skip_missing, stats=stats)
    self.num_skipped = stats["num_skipped"]
    self.qids = [q for q, docs in self.qrels.items() if any(s > 0 for s in docs.values())]
    if not self.qids:
      raise data_error(os.path.join(self.beir_dir, "qrels", f"{split}.tsv"), 0, "no query has a positive judgement")
    self._hard: dict[str, tuple[Passage, ...]] = {}
    if hard_negatives_json is not None:
      self._load_hard_negatives(os.fspath(hard_negatives_json))

  def _load_hard_negatives(self, path: str) -> None:
    from bpr_jax.data.dpr import DprJsonSource  # pylint: disable=import-outside-toplevel
    by_text = {}
    for qid in self.qids:
      by_text.setdefault(self.queries[qid], qid)
    mined = DprJsonSource(path, skip_invalid=True)
    matched = 0
    for i in range(len(mined)):
      ex = mined[i]
      qid = ex.qid if ex.qid in self.qrels else by_text.get(ex.question)
      if qid is None:
        continue
      positives = {d for d, s in self.qrels[qid].items() if s > 0}
      self._hard[qid] = tuple(p for p in ex.hard_negatives if p.id not in positives)
      matched += 1
    logging.info("%s: hard negatives for %d of %d queries from %s", self.name, matched, len(self.qids), path)

  def __len__(self) -> int:
    return len(self.qids)

  def __getitem__(self, i: int) -> Example:
    qid = self.qids[check_index(i, len(self.qids))]
    docs = self.qrels[qid]
    positives = tuple(self.corpus[d] for d, s in docs.items() if s > 0)
    return Example(question=self.queries[qid], answers=(), positives=positives, negatives=(),
                   hard_negatives=self._hard.get(qid, ()), qid=qid)
