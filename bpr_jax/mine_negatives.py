"""Mines hard negatives (BM25, or a float teacher's top-k) and writes DPR retriever training JSON.

BEIR mode (positives from qrels with score > 0; BM25 hard negatives):

  python -m bpr_jax.mine_negatives --beir_dir=DIR --split=train --output=FILE.json

QA mode (a DPR qas file `question<TAB>['answer', ...]` and a passage TSV/JSONL;
positives are the top BM25 passages whose text contains an answer):

  python -m bpr_jax.mine_negatives --dpr_qas=CSV --passages=TSV --output=FILE.json

Teacher mode (label-free; candidates for distillation, `loss.teacher` in configs/common.py):

  python -m bpr_jax.mine_negatives --teacher=EXPORT --beir_dir=DIR --split=train --output=FILE.json \
      [--top_k=100 --num_hard_negatives=30 --skip_ranks=0 --teacher_embeddings=C]
  python -m bpr_jax.mine_negatives --teacher=EXPORT --questions=TXT (--beir_dir=DIR | --passages=TSV) \
      --output=FILE.json

A float teacher (any exported model dir: a training export, `export --hf_model`, a DPR import)
encodes the corpus (or reads `--teacher_embeddings`, an `encode --save_float` output of the same
model and corpus) and the questions: the split's queries (every query with a judgement in
qrels/SPLIT.tsv, whose labels are NOT used) or `--questions` (one question per line). Each
question's positive is the teacher's top-1 passage by <t_q, t_p> (`--similarity=cos` for
sentence-transformers models), its hard negatives the following ranks, after skipping
`--skip_ranks` of them (default 0: with distillation the teacher's own scores weigh a near-duplicate
of the positive, so the ranks right after it are the most informative candidates; skip some when
training with the label loss, where an unjudged relevant passage would be a false negative).
Every record says `"positive_source": "teacher_top1"`; ctxs carry the teacher score.

`hard_negative_ctxs` of the BM25 modes are the top BM25 passages (title + text, scored by the
`bm25s` library) that are not positives and, when the question has answers, contain no answer in
their title or text. Records carry the BEIR query id as "qid" (teacher mode with --questions: the
line number). The output is written to a temporary name and renamed.
"""
from __future__ import annotations

import dataclasses
import os
import pathlib
import time
from typing import Iterable, Sequence

import bm25s
import numpy as np
from absl import flags, logging

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


def _ranked(q: np.ndarray, p: np.ndarray, k: int, similarity: str, batch: int = 1024
            ) -> tuple[np.ndarray, np.ndarray]:
  """(indices, scores) [Q, k] of each question's top-k passages by <q, p> (or cosine), best first;
  ties broken by the lower passage index."""
  if similarity == "cos":
    q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
    p = p / np.maximum(np.linalg.norm(p, axis=1, keepdims=True), 1e-12)
  k = min(k, p.shape[0])
  docs = np.zeros((q.shape[0], k), np.int64)
  scores = np.zeros((q.shape[0], k), np.float32)
  for lo in range(0, q.shape[0], batch):
    s = q[lo:lo + batch].astype(np.float32) @ p.T.astype(np.float32)
    top = np.argpartition(-s, k - 1, axis=1)[:, :k] if k < s.shape[1] else np.tile(np.arange(s.shape[1]), (len(s), 1))
    top_scores = np.take_along_axis(s, top, axis=1)
    order = np.lexsort((top, -top_scores), axis=1)
    docs[lo:lo + batch] = np.take_along_axis(top, order, axis=1)
    scores[lo:lo + batch] = np.take_along_axis(top_scores, order, axis=1)
  return docs, scores


def _read_questions(path: str) -> list[tuple[str, str]]:
  """(line number, question) of each non-blank line of a text file."""
  out = []
  with open(path, encoding="utf-8") as f:
    for line_no, line in enumerate(f, start=1):
      if line.strip():
        out.append((str(line_no), line.strip()))
  if not out:
    raise ValueError(f"{path}: no questions (one per line)")
  return out


def _saved_embeddings(codes_dir: str, teacher: str, passages_path: str, passages: Sequence[Passage]) -> np.ndarray:
  """The --save_float embeddings of an encode output, checked to belong to `teacher` and the corpus,
  in the order of `passages`."""
  import pathlib  # pylint: disable=import-outside-toplevel

  from bpr_jax import io, provenance  # pylint: disable=import-outside-toplevel
  from bpr_jax.index.codes_dir import EMBEDDINGS_FILE, IDS_FILE, read_manifest  # pylint: disable=import-outside-toplevel
  root = pathlib.Path(codes_dir)
  dirs = [root] if (root / "manifest.json").exists() else sorted(d for d in root.glob("shard_*") if d.is_dir())
  if not dirs:
    raise FileNotFoundError(f"--teacher_embeddings {codes_dir}: not an encode output (no manifest.json)")
  embs, ids = [], []
  for d in dirs:
    m = read_manifest(d)
    if m is None:
      raise ValueError(f"{d}: encode did not finish (no manifest.json)")
    if not m.get("has_embeddings"):
      raise ValueError(f"{d}: has no float embeddings (encode without --save_float)")
    inputs = m.get(provenance.INPUTS) or {}
    provenance.check_belongs(f"--teacher_embeddings {d}, --teacher {teacher} and passages {passages_path}",
                             {k: inputs[k] for k in ("model", "passages") if k in inputs},
                             {"model": provenance.model_fingerprint(teacher),
                              "passages": provenance.fingerprint_passages(passages_path)})
    embs.append(io.load_npy(d / EMBEDDINGS_FILE, mmap=False))
    ids.extend(str(x) for x in io.load_npy(d / IDS_FILE, mmap=False).tolist())
  emb = np.concatenate(embs).astype(np.float32)
  row = {pid: i for i, pid in enumerate(ids)}
  missing = [p.id for p in passages if p.id not in row]
  if missing or len(emb) != len(ids):
    raise ValueError(f"--teacher_embeddings {codes_dir}: {len(missing)} passages of {passages_path} have no "
                     f"embedding (e.g. {missing[:3]}); encode the same corpus")
  return emb[[row[p.id] for p in passages]]


def mine_teacher(teacher: str, *, beir_dir: str | None = None, split: str = "train", questions_path: str | None = None,
                 passages_path: str | None = None, top_k: int = 100, num_hard_negatives: int = 30,
                 skip_ranks: int = 0, similarity: str = "dot", teacher_embeddings: str | None = None,
                 batch_size: int = 64, skip_missing: bool = False) -> tuple[list[dict], MiningStats]:
  """Label-free DPR records: positive = the teacher's top-1, hard negatives = the next ranks
  after `skip_ranks` (module docstring). Questions: the BEIR split's judged queries (labels unused)
  or `questions_path`; corpus: BEIR corpus.jsonl or `passages_path`."""
  import os  # pylint: disable=import-outside-toplevel

  from bpr_jax.exported_model import load_exported  # pylint: disable=import-outside-toplevel
  from bpr_jax.teacher import encode_in_chunks  # pylint: disable=import-outside-toplevel
  if similarity not in ("dot", "cos"):
    raise ValueError(f"--similarity must be 'dot' or 'cos', got {similarity!r}")
  if top_k < 1 + skip_ranks + num_hard_negatives:
    raise ValueError(f"--top_k {top_k} is below 1 + --skip_ranks {skip_ranks} + --num_hard_negatives "
                     f"{num_hard_negatives}")
  start = time.perf_counter()
  if passages_path:
    passages = list(iter_passages(passages_path))
    corpus_path = passages_path
  else:
    passages = list(load_corpus(beir_dir).values())
    corpus_path = os.path.join(os.fspath(beir_dir), "corpus.jsonl")
  if questions_path:
    questions = _read_questions(questions_path)
  else:
    queries = load_queries(beir_dir)
    qrels = load_qrels(beir_dir, split, corpus_ids={p.id for p in passages}, query_ids=queries.keys(),
                       skip_missing=skip_missing)
    questions = [(qid, queries[qid]) for qid in qrels]  # every judged query; the judgements are unused
  model = load_exported(teacher)
  if teacher_embeddings:
    p_vec = _saved_embeddings(teacher_embeddings, teacher, corpus_path, passages)
  else:
    titles, texts = [p.title for p in passages], [p.text for p in passages]
    p_vec = encode_in_chunks(lambda lo, hi: model.encode_passages(titles[lo:hi], texts[lo:hi], batch_size=batch_size),
                     len(passages))
  texts_q = [q for _, q in questions]
  q_vec = encode_in_chunks(lambda lo, hi: model.encode_questions(texts_q[lo:hi], batch_size=batch_size), len(texts_q))
  if q_vec.shape[1] != p_vec.shape[1]:
    raise ValueError(f"teacher question vectors have {q_vec.shape[1]} dims, passage vectors {p_vec.shape[1]}")
  docs, scores = _ranked(q_vec, p_vec, top_k, similarity)
  stats = MiningStats(num_questions=len(questions))
  records = []
  for row, (qid, question) in enumerate(questions):
    ranked = [(passages[int(j)], float(sc)) for j, sc in zip(docs[row], scores[row])]
    hard = [_ctx(p, sc) for p, sc in ranked[1 + skip_ranks:1 + skip_ranks + num_hard_negatives]]
    if len(hard) < num_hard_negatives:
      stats.num_short_of_negatives += 1
    records.append({"qid": qid, "question": question, "answers": [], "positive_source": "teacher_top1",
                    "positive_ctxs": [_ctx(*ranked[0])], "negative_ctxs": [], "hard_negative_ctxs": hard})
  stats.num_written = len(records)
  stats.seconds = time.perf_counter() - start
  return records, stats


FLAGS = flags.FLAGS


def define_flags() -> None:
  """The command's flags."""
  flags.DEFINE_string("beir_dir", None, "BEIR dataset folder (corpus.jsonl, queries.jsonl, qrels/).")
  flags.DEFINE_string("split", "train", "qrels split for --beir_dir.")
  flags.DEFINE_string("dpr_qas", None, "DPR qas file (question<TAB>[answers]); needs --passages.")
  flags.DEFINE_string("passages", None, "Passage TSV (id, text, title) or JSONL for --dpr_qas, or the corpus "
                      "of --teacher with --questions.")
  flags.DEFINE_string("output", None, "Output DPR retriever JSON.")
  flags.DEFINE_integer("num_hard_negatives", 30, "Hard negatives per question.")
  flags.DEFINE_integer("num_positives", 10, "QA mode: most positives kept per question.")
  flags.DEFINE_integer("depth", 100, "QA mode: BM25 candidates examined per question.")
  flags.DEFINE_bool("skip_missing", False, "BEIR modes: skip qrels lines whose ids are unknown.")
  flags.DEFINE_integer("threads", 0, "Threads for BM25 retrieval (0: none).")
  flags.DEFINE_enum("match", "string", ["string", "regex"], "QA mode: answer matching (as evaluate --match).")
  flags.DEFINE_string("teacher", None, "Teacher mode: an exported float model dir; positives are its top-1 "
                      "(labels unused).")
  flags.DEFINE_string("questions", None, "Teacher mode: a text file of questions, one per line (instead of "
                      "the BEIR split's queries).")
  flags.DEFINE_integer("top_k", 100, "Teacher mode: passages ranked per question.")
  flags.DEFINE_integer("skip_ranks", 0, "Teacher mode: ranks skipped after the top-1 before the hard negatives.")
  flags.DEFINE_enum("similarity", "dot", ["dot", "cos"], "Teacher mode: the teacher's score (cos for "
                    "sentence-transformers models).")
  flags.DEFINE_string("teacher_embeddings", None, "Teacher mode: an `encode --save_float` output of --teacher "
                      "over the corpus, used instead of encoding it.")
  flags.DEFINE_bool("overwrite", False, "Replace an --output mined from other inputs.")
  flags.DEFINE_integer("batch_size", 64, "Teacher mode: encoding batch size.")


def inputs_path(output: str) -> str:
  """Where the inputs record of a mined file lives: ``OUTPUT.inputs.json`` beside it (a DPR JSON
  file is an array, so it cannot hold the record itself)."""
  return f"{output}.inputs.json"


def mining_inputs(*, beir_dir: str | None = None, split: str = "train", dpr_qas: str | None = None,
                  passages: str | None = None, questions: str | None = None, teacher: str | None = None,
                  teacher_embeddings: str | None = None, settings: dict | None = None) -> dict:
  """The inputs record of a mining run: fingerprints of every file it reads, and its settings."""
  from bpr_jax import provenance  # pylint: disable=import-outside-toplevel
  files = {}
  if beir_dir:
    root = os.path.abspath(beir_dir)
    for name in ("corpus.jsonl", "queries.jsonl", os.path.join("qrels", f"{split}.tsv")):
      path = os.path.join(root, name)
      if os.path.isfile(path):
        files[name] = provenance.fingerprint_file(path)
  for key, path in (("dpr_qas", dpr_qas), ("passages", passages), ("questions", questions)):
    if path:
      files[key] = provenance.fingerprint_passages(path) if key == "passages" else provenance.fingerprint_file(path)
  record = {"files": files, "settings": dict(settings or {}, split=split if beir_dir else None)}
  if teacher:
    record["teacher"] = provenance.model_fingerprint(teacher)
  if teacher_embeddings:
    manifest = os.path.join(teacher_embeddings, "manifest.json")
    if os.path.isfile(manifest):
      record["teacher_embeddings"] = provenance.fingerprint_file(manifest)
  return record


def check_mined(output: str, inputs: dict, overwrite: bool = False) -> str:
  """The overwrite rule for a mined file (`provenance.check_output`): 'reuse' when `output` was
  mined from these `inputs`, 'write' when it is new (or `overwrite`); other inputs are refused."""
  from bpr_jax import io, provenance  # pylint: disable=import-outside-toplevel
  record_path = inputs_path(output)
  recorded = io.read_json(record_path) if os.path.isfile(record_path) else None
  return provenance.check_output(output, recorded, inputs, what="mined training data", overwrite=overwrite)


def write_mined(output: str, records: Iterable[dict], inputs: dict) -> int:
  """Writes the records (atomically) and then their inputs record beside them; returns the count."""
  from bpr_jax import io  # pylint: disable=import-outside-toplevel
  pathlib.Path(inputs_path(output)).unlink(missing_ok=True)  # the old record must not vouch for new records
  n = write_records(output, records)
  io.atomic_write_json(inputs_path(output), inputs)
  return n


def main(argv: Sequence[str]) -> None:
  from bpr_jax.cli import CommandError  # pylint: disable=import-outside-toplevel
  if len(argv) > 1:
    raise CommandError(f"unexpected arguments: {' '.join(argv[1:])}")
  if not FLAGS.output:
    raise CommandError("--output is required")
  if FLAGS.num_hard_negatives < 0:
    raise CommandError("--num_hard_negatives must be >= 0")
  for flag in ("beir_dir", "dpr_qas", "passages", "questions", "teacher", "teacher_embeddings"):
    value = FLAGS[flag].value
    if value and not value.startswith("tfds:") and not os.path.exists(value):
      raise FileNotFoundError(f"--{flag}={value}: no such file or folder")
  settings = {k: FLAGS[k].value for k in ("num_hard_negatives", "num_positives", "depth", "skip_missing",
                                          "match", "top_k", "skip_ranks", "similarity")}
  current = mining_inputs(beir_dir=FLAGS.beir_dir, split=FLAGS.split, dpr_qas=FLAGS.dpr_qas,
                          passages=FLAGS.passages, questions=FLAGS.questions, teacher=FLAGS.teacher,
                          teacher_embeddings=FLAGS.teacher_embeddings, settings=settings)
  if check_mined(FLAGS.output, current, FLAGS.overwrite) == "reuse":
    print(f"{FLAGS.output}: already mined from the same inputs (reused)")
    return
  if FLAGS.teacher:
    if FLAGS.dpr_qas:
      raise CommandError("--teacher goes with --beir_dir or --questions, not --dpr_qas")
    if not FLAGS.questions and not FLAGS.beir_dir:
      raise CommandError("--teacher needs --beir_dir (its split's queries) or --questions with a corpus")
    if FLAGS.questions and not (FLAGS.beir_dir or FLAGS.passages):
      raise CommandError("--questions needs a corpus: --beir_dir or --passages")
    records, stats = mine_teacher(FLAGS.teacher, beir_dir=FLAGS.beir_dir, split=FLAGS.split,
                                  questions_path=FLAGS.questions, passages_path=FLAGS.passages,
                                  top_k=FLAGS.top_k, num_hard_negatives=FLAGS.num_hard_negatives,
                                  skip_ranks=FLAGS.skip_ranks, similarity=FLAGS.similarity,
                                  teacher_embeddings=FLAGS.teacher_embeddings, batch_size=FLAGS.batch_size,
                                  skip_missing=FLAGS.skip_missing)
  else:
    if FLAGS.questions or FLAGS.teacher_embeddings:
      raise CommandError("--questions and --teacher_embeddings go with --teacher")
    if bool(FLAGS.beir_dir) == bool(FLAGS.dpr_qas):
      raise CommandError("give exactly one of --beir_dir and --dpr_qas (or --teacher)")
    if FLAGS.dpr_qas and not FLAGS.passages:
      raise CommandError("--dpr_qas needs --passages")
    if FLAGS.beir_dir:
      records, stats = mine_beir(FLAGS.beir_dir, FLAGS.split, num_hard_negatives=FLAGS.num_hard_negatives,
                                 skip_missing=FLAGS.skip_missing, n_threads=FLAGS.threads)
    else:
      records, stats = mine_qas(FLAGS.dpr_qas, FLAGS.passages, num_hard_negatives=FLAGS.num_hard_negatives,
                                num_positives=FLAGS.num_positives, depth=FLAGS.depth, n_threads=FLAGS.threads,
                                match=FLAGS.match)
  write_mined(FLAGS.output, records, current)
  logging.info("wrote %s: %s", FLAGS.output, stats)
  positives = " (positives: the teacher's top-1; qrels unused)" if FLAGS.teacher else ""
  print(f"wrote {stats.num_written} of {stats.num_questions} questions to {FLAGS.output} in "
        f"{stats.seconds:.1f}s ({stats.num_without_positive} without a positive, "
        f"{stats.num_short_of_negatives} with fewer than {FLAGS.num_hard_negatives} hard negatives){positives}")


if __name__ == "__main__":
  from bpr_jax import cli

  cli.run(main, define_flags)
