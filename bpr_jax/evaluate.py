"""Evaluates the product: BPR's two-stage search (``search.two_stage_search``, what
``Retriever`` and the service run) and its ablations on a question set, beside the research
baselines of ``bpr_jax.baselines``.

Usage::

  python -m bpr_jax.evaluate --model=E --index=I --passages=P
      (--qa=nq-test.csv | --beir_dir=DIR --split=test) --output=R.json
      [--k=1,5,20,100 --l=1000 --baselines=flat_ip,hnsw,lsh,pq --embeddings=EMB.npy
       --baseline_bits=128,768 --passage_cache_dir=C --allow_mismatch --overwrite]

The model ``E``, the index ``I`` and the passage file ``P`` must belong together: ``I``'s
``meta.json`` records the model and passages its codes were encoded from, and a mismatch is
refused unless ``--allow_mismatch``.  Flags and the question file are checked before the model
loads.  ``R.json`` is ``{"inputs": ..., "rows": [...]}``; ``inputs`` records the model, index,
passages, questions and settings, so a rerun with the same inputs prints the stored result and
one made from other inputs is refused unless ``--overwrite``.  The passage file's offset index
(for reading passage texts) is kept in ``--passage_cache_dir`` (default: the shared cache that
serve and ``Retriever`` use, ``$BPR_CACHE_DIR/passages`` or ``~/.cache/bpr_jax/passages``),
never beside the passage file or the output.

Nested codes: an index of N-bit codes from a model that records N among its code sizes
(``encode --code_bits=N``; ``bpr.json`` ``nested_bits``) is evaluated at N bits: the BPR rows
search with the first N dims of the question vectors (``search.prefix_bits``) and report
``bytes_per_passage`` N/8; the float baselines use the whole vectors (``encode --save_float``
keeps them whole) and size ``lsh`` / ``pq`` at N bits.  An index of a size the model does not
record is refused before the model loads.

Rows (one JSON object each, also printed as a Markdown table):

  bpr-KIND                 two-stage search (KIND = flat | hash | multihash | ivf)
  bpr-KIND-no-rerank       stage 1 only (Hamming order)
  bpr-KIND-no-candidates   stage 2 over every passage
  flat_ip, hnsw, lsh, pq   float baselines (bpr_jax.baselines) over the float32 passage embeddings
                           (``encode --save_float``): exact inner product
                           (IndexFlatIP), HNSW (IndexHNSWFlat, M=32,
                           efSearch=128), post-hoc LSH with the same number of
                           bits (IndexLSH, random rotation) and PQ with the
                           same bytes (IndexPQ, M = bytes, 8 bits/code)
  lsh-Nbit, pq-Nbit        the same two at other code sizes (--baseline_bits),
                           for accuracy-against-memory tables

Each row has ``recall@k`` for every k (answer recall / top-k accuracy on QA
data, in the system's order; qrels recall on BEIR), ``ndcg@10`` and
``mrr@10`` (BEIR only; computed by pytrec_eval with BEIR's conventions, see
``metrics.beir_evaluate``: re-sorted by score, ties by document id,
``--ignore_identical_ids``),
``bytes_per_passage``, ``index_bytes``, ``ms_per_query`` (whole question set
in one batch, search only) and ``ms_per_query_single`` (one question at a
time, first ``--num_single`` questions).  Question encoding is not timed.

This module holds the question loaders (``load_qa``, ``load_beir``), the scoring of retrieved
rows (``Scorer``: answer recall on QA data, pytrec_eval metrics on BEIR), timing
(``time_system``, ``evaluate_systems``) and the command.  The systems it times are
``bpr_jax.systems.System``s: the BPR rows (``systems.bpr_systems``: ``search.two_stage_search``,
the function ``Retriever.search`` calls) and, with ``--baselines``, rows built by
``bpr_jax.baselines.float_systems``.
"""
from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import time
from typing import Any, Callable, Sequence

import numpy as np

from bpr_jax import metrics
# float_systems is also reachable as evaluate.float_systems for existing callers.
from bpr_jax.baselines import BASELINES, SIZED_BASELINES, float_systems  # noqa: F401
from bpr_jax.index import BinaryIndex
from bpr_jax.io import atomic_write_text, load_npy
from bpr_jax.search import check_pieces, prefix_bits
from bpr_jax.systems import System, bpr_systems


@dataclasses.dataclass
class Questions:
  """Evaluation questions with their gold data (answers or qrels)."""

  texts: list[str]
  answers: list[list[str]] | None = None
  qids: list[str] | None = None
  qrels: dict[str, dict[str, int]] | None = None


def load_qa(path: str | os.PathLike, max_questions: int | None = None) -> Questions:
  """DPR qas file (``question<TAB>['answer', ...]``)."""
  from bpr_jax.data.dpr import iter_qas  # pylint: disable=import-outside-toplevel

  texts, answers = [], []
  for _, question, ans in iter_qas(path):
    texts.append(question)
    answers.append(ans)
    if max_questions is not None and len(texts) >= max_questions:
      break
  if not texts:
    raise ValueError(f"{path}: no questions")
  return Questions(texts=texts, answers=answers)


def load_beir(beir_dir: str | os.PathLike, split: str, corpus_ids: Sequence[str],
              max_questions: int | None = None) -> Questions:
  """BEIR queries that have qrels in ``split``, in qrels order."""
  from bpr_jax.data.beir import load_qrels, load_queries  # pylint: disable=import-outside-toplevel

  queries = load_queries(beir_dir)
  qrels = load_qrels(beir_dir, split, corpus_ids=corpus_ids, query_ids=queries)
  qids = [q for q in qrels if any(g > 0 for g in qrels[q].values())]
  if max_questions is not None:
    qids = qids[:max_questions]
  if not qids:
    raise ValueError(f"{beir_dir}: no queries with relevant documents in split {split!r}")
  for q in qids:
    if not queries[q].strip():
      raise ValueError(f"{beir_dir}: query {q!r} is empty")
  return Questions(texts=[queries[q] for q in qids], qids=qids,
                   qrels={q: qrels[q] for q in qids})


# ---------------------------------------------------------------------------
# Scoring retrieved rows.


class Scorer:
  """Turns retrieved (scores, rows) [B, K] of a system into metric values.

  Rows are mapped to passage ids with the system's own ``ids`` (row -> id):
  every lookup goes by id, never by a row of another file.  QA mode checks
  answers in passage texts (cached per (question, passage id), so the systems
  share the work); BEIR mode scores the run with `metrics.beir_evaluate`.
  """

  def __init__(self, questions: Questions, ks: Sequence[int],
               passage_text: Callable[[Sequence[str], Sequence[int]], list[str]] | None = None,
               match: str = "string", ignore_identical_ids: bool = True):
    self.q = questions
    self.ks = sorted(set(int(k) for k in ks))
    self.passage_text = passage_text
    self.match = match
    self.ignore_identical_ids = ignore_identical_ids
    self._cache: dict[tuple[int, str], bool] = {}
    if questions.answers is not None and passage_text is None:
      raise ValueError("QA evaluation needs --passages to read passage texts")

  @property
  def max_k(self) -> int:
    return max(self.ks + ([10] if self.q.qrels is not None else []))

  def __call__(self, scores: np.ndarray, rows: np.ndarray, ids: np.ndarray) -> dict[str, float]:
    rows = np.asarray(rows)
    pids = [[str(ids[r]) if r >= 0 else None for r in rr] for rr in rows.tolist()]
    if self.q.answers is not None:
      return self._qa(pids, rows)
    return self._beir(np.asarray(scores), pids)

  def _qa(self, pids: list[list[str | None]], rows: np.ndarray) -> dict[str, float]:
    need: dict[tuple[int, str], int] = {}
    for i, (pp, rr) in enumerate(zip(pids, rows.tolist())):
      for p, r in zip(pp, rr):
        if p is not None and (i, p) not in self._cache:
          need.setdefault((i, p), int(r))
    if need:
      keys = sorted(need)
      texts = self.passage_text([p for _, p in keys], [need[key] for key in keys])
      for (i, p), text in zip(keys, texts):
        self._cache[(i, p)] = metrics.has_answer(self.q.answers[i], text, self.match)
    hits = [[p is not None and self._cache[(i, p)] for p in pp] for i, pp in enumerate(pids)]
    rec = metrics.answer_recall_at_k(hits, self.ks)
    return {f"recall@{k}": v for k, v in rec.items()}

  def _beir(self, scores: np.ndarray, pids: list[list[str | None]]) -> dict[str, float]:
    results: dict[str, dict[str, float]] = {}
    for qid, pp, ss in zip(self.q.qids, pids, scores.tolist()):
      docs: dict[str, float] = {}
      for p, sc in zip(pp, ss):
        if p is not None and sc > docs.get(p, -np.inf):
          docs[p] = float(sc)
      results[qid] = docs
    m = metrics.beir_evaluate(self.q.qrels, results, self.ks + [10],
                              ignore_identical_ids=self.ignore_identical_ids)
    out = {f"recall@{k}": m[f"recall@{k}"] for k in self.ks}
    out["ndcg@10"] = m["ndcg@10"]
    out["mrr@10"] = m["mrr@10"]
    return out


# ---------------------------------------------------------------------------
# Timing.


def time_system(system: System, q_emb: np.ndarray, k: int,
                num_single: int) -> tuple[tuple[np.ndarray, np.ndarray], float, float]:
  """Runs a system on every question; returns ((scores, rows), ms/query batched, ms/query single).

  Each timed call is preceded by an untimed call of the same shapes (jit
  compiles, faiss threads), so no timed figure includes compilation.
  """
  system.search(q_emb, k)  # warm-up of the batched shapes
  t0 = time.perf_counter()
  result = system.search(q_emb, k)
  batched = (time.perf_counter() - t0) * 1000 / len(q_emb)
  n = min(num_single, len(q_emb))
  single = float("nan")
  if n:
    system.search(q_emb[:1], k)  # warm-up of the single-question shapes
    t0 = time.perf_counter()
    for i in range(n):
      system.search(q_emb[i:i + 1], k)
    single = (time.perf_counter() - t0) * 1000 / n
  return result, batched, single


def evaluate_systems(systems: Sequence[System], q_emb: np.ndarray, scorer: Scorer,
                     num_single: int = 100, log: Callable[[str], None] | None = print
                     ) -> list[dict[str, Any]]:
  """Times and scores each system; returns one row per system."""
  out = []
  for s in systems:
    (scores, rows), batched, single = time_system(s, q_emb, scorer.max_k, num_single)
    row: dict[str, Any] = {"name": s.name}
    row.update(scorer(scores, rows, s.ids))
    row.update({"bytes_per_passage": s.bytes_per_passage, "index_bytes": int(s.index_bytes),
                "ms_per_query": round(batched, 4), "ms_per_query_single": round(single, 4)})
    if log is not None:
      log(f"{s.name}: " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                   for k, v in row.items() if k != "name"))
    out.append(row)
  return out


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
  """A Markdown table of result rows (columns in first-seen order)."""
  cols: list[str] = []
  for r in rows:
    for c in r:
      if c not in cols:
        cols.append(c)

  def fmt(v: Any) -> str:
    if isinstance(v, float):
      return f"{v:.4f}" if abs(v) < 1000 else f"{v:.0f}"
    return "" if v is None else str(v)

  lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
  lines += ["| " + " | ".join(fmt(r.get(c)) for c in cols) + " |" for r in rows]
  return "\n".join(lines)


def default_embeddings_path(index: BinaryIndex | dict[str, Any]) -> pathlib.Path | None:
  """embeddings.npy of the encode run the index (or its ``meta.json`` dict) was built from."""
  meta = index if isinstance(index, dict) else index.meta
  src = meta.get("source")
  if not src:
    return None
  src = pathlib.Path(src)
  if (src / "embeddings.npy").exists():
    return src / "embeddings.npy"
  return None


def load_embeddings(path: str | os.PathLike, index: BinaryIndex) -> np.ndarray:
  """Float passage embeddings (a .npy file, or an encode output folder with shards)."""
  path = pathlib.Path(path)
  if path.is_dir():
    files = [path / "embeddings.npy"] if (path / "embeddings.npy").exists() else sorted(
        path.glob("shard_*/embeddings.npy"))
    if not files:
      raise FileNotFoundError(f"no embeddings.npy in {path} (encode with --save_float)")
    emb = np.concatenate([load_npy(f, mmap=True) for f in files])
  else:
    emb = load_npy(path, mmap=True)
  if emb.ndim != 2 or emb.shape[0] != index.ntotal:
    raise ValueError(f"embeddings {path} have shape {emb.shape}, index has {index.ntotal} passages")
  return emb


def load_embedding_ids(path: str | os.PathLike) -> np.ndarray | None:
  """Passage ids of the rows of `load_embeddings(path)` (the encode run's ids.npy), if present."""
  path = pathlib.Path(path)
  if path.is_dir():
    files = [path / "ids.npy"] if (path / "embeddings.npy").exists() else sorted(
        p.parent / "ids.npy" for p in path.glob("shard_*/embeddings.npy"))
  else:
    files = [path.parent / "ids.npy"]
  if not files or not all(f.exists() for f in files):
    return None
  return np.concatenate([load_npy(f) for f in files])


def run_evaluation(model: Any, index: BinaryIndex, questions: Questions, *, ks: Sequence[int],
                   l: int = 1000, passages: str | os.PathLike | None = None,
                   baselines: Sequence[str] = (), embeddings: np.ndarray | None = None,
                   embedding_ids: np.ndarray | None = None,
                   baseline_bits: Sequence[int] = (),
                   match: str = "string", num_single: int = 100, batch_size: int = 64,
                   ignore_identical_ids: bool = True,
                   passage_cache_dir: str | os.PathLike | None = None,
                   log: Callable[[str], None] | None = print) -> list[dict[str, Any]]:
  """Encodes the questions once, then evaluates BPR rows and float baselines.

  Every system's rows are turned into passage ids with that system's own
  row -> id map (``index.ids`` for the binary index, whose rows an ``ivf``
  index renumbers; ``embedding_ids`` for the float baselines, default
  ``index.ids`` except for ``ivf``), and passage texts are read by id.

  ``baseline_bits`` adds the code-size baselines (``lsh``, ``pq``) at other sizes than the
  index's codes, for accuracy-against-memory tables: a row ``lsh-128bit`` has 128 random
  hyperplanes, ``pq-128bit`` 16 sub-quantisers of 8 bits (16 bytes a passage).

  Settings are checked (``check_settings``) before any question is encoded; ``passage_cache_dir``
  is where the passage file's offset index is kept (default: ``PassageStore``'s own).
  """
  ks, _, baselines, baseline_bits = check_settings(
      ks, l, baselines, baseline_bits, beir=questions.qrels is not None)
  if not questions.texts:
    raise ValueError("no questions to evaluate")
  for i, t in enumerate(questions.texts):
    if not t.strip():
      raise ValueError(f"question {i} is empty")
  passage_text = None
  if passages is not None:
    from bpr_jax.passage_store import PassageStore  # pylint: disable=import-outside-toplevel
    store = PassageStore(passages, cache_dir=passage_cache_dir)
    if len(store) != index.ntotal:
      raise ValueError(f"passage file {passages} has {len(store)} passages but the index has "
                       f"{index.ntotal}")
    # By id; the row is only a hint that PassageStore checks against the id.
    passage_text = lambda ids, rows: [text for _, text in store.get(ids, rows=rows)]  # noqa: E731
  scorer = Scorer(questions, ks, passage_text, match, ignore_identical_ids)
  t0 = time.perf_counter()
  q_emb = np.asarray(model.encode_questions(questions.texts, batch_size=batch_size), np.float32)
  if log is not None:
    log(f"encoded {len(q_emb)} questions in {time.perf_counter() - t0:.1f}s")
  prefix = None
  if q_emb.shape[1] != index.code_bits:
    settings = dict(getattr(model, "settings", None) or {})
    if not settings or q_emb.shape[1] < index.code_bits:
      raise ValueError(f"model gives {q_emb.shape[1]}-dim question embeddings but the index has "
                       f"{index.code_bits}-bit codes")
    prefix = prefix_bits(settings, index.code_bits, model=getattr(model, "path", "(in memory)"),
                         index=index.path or "(in memory)")
  systems = bpr_systems(index, l)
  if prefix is not None:  # a nested-code index: the BPR rows search with e_q[:, :prefix]
    systems = [dataclasses.replace(s, search=_on_prefix(s.search, prefix)) for s in systems]
  if baselines:
    if embeddings is None:
      raise ValueError("float baselines need passage embeddings (encode --save_float, --embeddings)")
    if embedding_ids is None:
      if index.kind == "ivf":
        raise ValueError("an ivf index renumbers its rows: float baselines need the ids of the "
                         "embedding rows (embedding_ids, the encode run's ids.npy)")
      embedding_ids = index.ids
    if embeddings.shape[1] != q_emb.shape[1]:
      raise ValueError(f"float baselines: passage embeddings have {embeddings.shape[1]} dims but "
                       f"the model's question vectors {q_emb.shape[1]}")
    systems += float_systems(embeddings, index.code_bits, baselines, embedding_ids, log)
    sized = [b for b in baselines if b in SIZED_BASELINES]
    for bits in baseline_bits:
      if bits == index.code_bits or not sized:
        continue
      for s in float_systems(embeddings, bits, sized, embedding_ids, log):
        systems.append(dataclasses.replace(s, name=f"{s.name}-{bits}bit"))
  return evaluate_systems(systems, q_emb, scorer, num_single, log)


def _on_prefix(search: Callable[[np.ndarray, int], Any], bits: int) -> Callable[[np.ndarray, int], Any]:
  """``search`` given the first ``bits`` dims of the question vectors (a nested-code index)."""
  return lambda q, k: search(np.ascontiguousarray(q[:, :bits]), k)


# ---------------------------------------------------------------------------
# Settings, inputs and the command.


def _ints(flag: str, values: Sequence[Any]) -> list[int]:
  out = []
  for v in values:
    text = str(v).strip()
    try:
      out.append(int(text))
    except ValueError:
      shown = ",".join(str(x) for x in values)
      raise ValueError(f"{flag}: {text!r} is not a whole number ({flag}={shown})") from None
  return out


def check_settings(ks: Sequence[Any], l: int, baselines: Sequence[str] = (),
                   baseline_bits: Sequence[Any] = (), *, beir: bool = False
                   ) -> tuple[list[int], int, list[str], list[int]]:
  """Checks the evaluation settings before any work; returns (ks, l, baselines, baseline_bits).

  ``ks`` (cut-offs, each >= 1) and ``baseline_bits`` (multiples of 8) may be strings as flags
  give them.  ``l`` (stage-1 candidates) must reach the largest cut-off (10 on BEIR, for
  ndcg@10): fewer candidates would report recall@k from l results.  Each error is one line
  naming the flag and the value.
  """
  ks = _ints("--k", [k for k in ks if str(k).strip()])
  if not ks:
    raise ValueError("--k: give at least one cut-off, e.g. --k=1,5,20,100")
  bad = [k for k in ks if k < 1]
  if bad:
    raise ValueError(f"--k: cut-offs must be >= 1, got {bad[0]}")
  ks = sorted(set(ks))
  if isinstance(l, bool) or not isinstance(l, (int, np.integer)):
    raise ValueError(f"--l must be a whole number, got {l!r}")
  l = int(l)
  need = max(ks + ([10] if beir else []))
  if l < 1:
    raise ValueError(f"--l must be >= 1 (stage-1 candidates per question), got {l}")
  if l < need:
    what = f"the largest --k ({need})" if need == max(ks) else "10 (ndcg@10 and mrr@10 on BEIR)"
    raise ValueError(f"--l={l} is below {what}: recall@{need} would count only {l} results; "
                     f"give --l >= {need}")
  baselines = [b.strip() for b in baselines if b.strip()]
  unknown = [b for b in baselines if b not in BASELINES]
  if unknown:
    raise ValueError(f"--baselines: unknown baseline {unknown[0]!r}; expected some of "
                     f"{', '.join(BASELINES)}")
  baselines = list(dict.fromkeys(baselines))
  bits = _ints("--baseline_bits", [b for b in baseline_bits if str(b).strip()])
  bad = [b for b in bits if b < 8 or b % 8]
  if bad:
    raise ValueError(f"--baseline_bits: code sizes must be whole bytes (multiples of 8 bits, "
                     f">= 8), got {bad[0]}")
  if bits and not any(b in SIZED_BASELINES for b in baselines):
    raise ValueError(f"--baseline_bits={','.join(map(str, bits))} sizes the "
                     f"{' / '.join(SIZED_BASELINES)} baselines, but --baselines names neither")
  return ks, l, baselines, list(dict.fromkeys(bits))


def _require_dir(flag: str, path: str, marker: str, what: str) -> pathlib.Path:
  p = pathlib.Path(path)
  if not p.is_dir():
    raise FileNotFoundError(f"{flag}={path}: no such folder")
  if not (p / marker).is_file():
    raise FileNotFoundError(f"{flag}={path}: no {marker}; not {what}")
  return p


def _require_file(flag: str, path: str) -> pathlib.Path:
  p = pathlib.Path(path)
  if not p.exists():
    raise FileNotFoundError(f"{flag}={path}: no such file")
  if not p.is_file():
    raise IsADirectoryError(f"{flag}={path}: not a file")
  return p


def index_fingerprint(index_dir: str | os.PathLike, meta: dict[str, Any]) -> dict[str, Any]:
  """``{"path", "sha256"}`` of an index folder: its ``meta.json`` file records (sha256 of
  index.faiss, codes.npy, ids.npy), so no file is read."""
  import hashlib  # pylint: disable=import-outside-toplevel
  files = meta.get("files") or {}
  h = hashlib.sha256(json.dumps({k: (files[k] or {}).get("sha256") for k in sorted(files)},
                                sort_keys=True).encode())
  h.update(json.dumps({k: meta.get(k) for k in ("kind", "code_bits", "num_passages", "nprobe")},
                      sort_keys=True).encode())
  return {"path": str(pathlib.Path(index_dir).resolve()), "sha256": h.hexdigest()}


def _embedding_files(path: pathlib.Path) -> list[pathlib.Path]:
  if path.is_dir():
    if (path / "embeddings.npy").exists():
      return [path / "embeddings.npy"]
    return sorted(path.glob("shard_*/embeddings.npy"))
  return [path]


def read_results(path: str | os.PathLike) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
  """(inputs, rows) of an evaluation output; a file from before provenance (a bare list of
  rows) has inputs None."""
  from bpr_jax.io import read_json  # pylint: disable=import-outside-toplevel
  data = read_json(path)
  if isinstance(data, list):
    return None, data
  if not isinstance(data, dict) or not isinstance(data.get("rows"), list):
    raise ValueError(f"{path}: not an evaluation output (expected {{'inputs', 'rows'}})")
  return data.get("inputs"), data["rows"]


def _define_flags() -> None:
  from absl import flags  # pylint: disable=import-outside-toplevel

  flags.DEFINE_string("model", None, "Exported model folder.")
  flags.DEFINE_string("index", None, "Index folder (bpr_jax.index).")
  flags.DEFINE_string("passages", None, "Passage file the index was encoded from.")
  flags.DEFINE_string("qa", None, "DPR qas csv (question<TAB>['answers']).")
  flags.DEFINE_string("beir_dir", None, "BEIR dataset folder (queries.jsonl, qrels/).")
  flags.DEFINE_string("split", "test", "BEIR qrels split.")
  flags.DEFINE_string("output", None, "Result JSON file.")
  flags.DEFINE_list("k", ["1", "5", "20", "100"], "Cut-offs for recall@k.")
  flags.DEFINE_integer("l", 1000, "Stage-1 candidates (at least the largest --k).")
  flags.DEFINE_list("baselines", list(BASELINES),
                    "Float baselines (need float embeddings; skipped when there are none).")
  flags.DEFINE_list("baseline_bits", [], "Also run the lsh / pq baselines at these code sizes "
                    "(bits, multiples of 8; e.g. 128,768), named lsh-128bit, pq-128bit, ...")
  flags.DEFINE_string("embeddings", None, "Float passage embeddings (.npy or encode folder); "
                      "default: embeddings.npy of the index's encode run.")
  flags.DEFINE_enum("match", "string", ["string", "regex"], "QA answer matching.")
  flags.DEFINE_integer("num_single", 100, "Questions timed one at a time.")
  flags.DEFINE_integer("max_questions", None, "Evaluate only the first N questions.")
  flags.DEFINE_integer("batch_size", 64, "Question encoding batch size.")
  flags.DEFINE_bool("ignore_identical_ids", True, "BEIR: drop retrieved documents whose id is the "
                    "query id (BEIR's default).")
  flags.DEFINE_string("passage_cache_dir", None, "Folder for the passage file's offset index "
                      "(default: the cache serve uses, $BPR_CACHE_DIR/passages or "
                      "~/.cache/bpr_jax/passages).")
  flags.DEFINE_bool("allow_mismatch", False, "Evaluate a model, index and passage file that do "
                    "not belong together (the index was built from other codes).")
  flags.DEFINE_bool("overwrite", False, "Replace an --output made from other inputs.")
  flags.mark_flags_as_required(["model", "index", "output"])


def main(argv: Sequence[str]) -> None:
  """The command (see the module docstring); every user error raises before expensive work."""
  from absl import app, flags  # pylint: disable=import-outside-toplevel

  from bpr_jax import provenance  # pylint: disable=import-outside-toplevel
  from bpr_jax.io import read_json  # pylint: disable=import-outside-toplevel

  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  f = flags.FLAGS
  # 1. Flags, then the files they name: no model, no index arrays yet.
  if (f.qa is None) == (f.beir_dir is None):
    raise ValueError("give exactly one of --qa or --beir_dir")
  beir = f.beir_dir is not None
  ks, l, baselines, baseline_bits = check_settings(f.k, f.l, f.baselines, f.baseline_bits,
                                                   beir=beir)
  if f.num_single < 0:
    raise ValueError(f"--num_single must be >= 0, got {f.num_single}")
  if f.batch_size < 1:
    raise ValueError(f"--batch_size must be >= 1, got {f.batch_size}")
  if f.max_questions is not None and f.max_questions < 1:
    raise ValueError(f"--max_questions must be >= 1, got {f.max_questions}")
  out = pathlib.Path(f.output)
  if out.is_dir():
    raise IsADirectoryError(f"--output={f.output} is a folder; give a JSON file name")
  model_dir = _require_dir("--model", f.model, "bpr.json", "an exported model (bpr_jax.export)")
  index_dir = _require_dir("--index", f.index, "meta.json", "a complete index (bpr_jax.index)")
  passages = _require_file("--passages", f.passages) if f.passages is not None else None
  if beir:
    beir_dir = _require_dir("--beir_dir", f.beir_dir, "queries.jsonl", "a BEIR dataset folder")
    qrels = beir_dir / "qrels" / f"{f.split}.tsv"
    if not qrels.is_file():
      raise FileNotFoundError(f"--split={f.split}: no {qrels}")
    question_files = [beir_dir / "queries.jsonl", qrels]
    question_fp = provenance.fingerprint_files(question_files, beir_dir)
    questions = None  # read once the index's ids are known (qrels are checked against them)
  else:
    if passages is None:
      raise ValueError("--qa needs --passages to check answers in passage texts")
    qa = _require_file("--qa", f.qa)
    questions = load_qa(qa, f.max_questions)  # a format error names the file and line
    question_fp = provenance.fingerprint_file(qa)
  index_meta = read_json(index_dir / "meta.json")
  emb_path = (pathlib.Path(f.embeddings) if f.embeddings is not None
              else default_embeddings_path(index_meta))
  if emb_path is not None and f.embeddings is not None and not emb_path.exists():
    raise FileNotFoundError(f"--embeddings={f.embeddings}: no such file or folder")
  if baselines and emb_path is None:
    print("no float embeddings found; skipping float baselines")
    baselines, baseline_bits = [], []
  emb_files = _embedding_files(emb_path) if baselines else []
  if baselines and not emb_files:
    raise FileNotFoundError(f"no embeddings.npy in {emb_path} (encode with --save_float)")

  # 2. Do the pieces belong together, and is the output already there?
  model_fp = provenance.model_fingerprint(model_dir)
  passages_fp = provenance.fingerprint_passages(passages) if passages is not None else None
  check_pieces(index_meta, index_path=index_dir, model=model_fp, passages=passages_fp,
               allow_mismatch=f.allow_mismatch)
  from bpr_jax.export_format import read_settings  # pylint: disable=import-outside-toplevel
  if isinstance(index_meta.get("code_bits"), int):  # an index of a size the model does not record
    prefix_bits(read_settings(model_dir), index_meta["code_bits"], model=model_dir, index=index_dir)
  inputs: dict[str, Any] = {
      "model": model_fp,
      "index": index_fingerprint(index_dir, index_meta),
      "questions": question_fp,
      "settings": {"k": ks, "l": l, "baselines": baselines, "baseline_bits": baseline_bits,
                   "mode": "beir" if beir else "qa", "split": f.split if beir else None,
                   "match": f.match, "max_questions": f.max_questions,
                   "ignore_identical_ids": f.ignore_identical_ids},
  }
  if passages_fp is not None:
    inputs["passages"] = passages_fp
  if emb_files:
    inputs["embeddings"] = provenance.fingerprint_files(emb_files, emb_files[0].parent)
  recorded = None
  if out.is_file():
    try:
      recorded, stored_rows = read_results(out)
    except ValueError:
      recorded, stored_rows = None, []
  action = provenance.check_output(out, recorded, inputs, what="an evaluation",
                                   overwrite=f.overwrite)
  if action == "reuse":
    print(markdown_table(stored_rows))
    print(f"{out} already holds this evaluation (same model, index, questions and settings); "
          "reusing it")
    return

  # 3. The work: index, questions, passages, embeddings, then the model.
  index = BinaryIndex.load(index_dir)
  if questions is None:
    questions = load_beir(beir_dir, f.split, [str(i) for i in index.ids.tolist()],
                          f.max_questions)
  embeddings = embedding_ids = None
  if baselines:
    embeddings = load_embeddings(emb_path, index)
    embedding_ids = load_embedding_ids(emb_path)
    if "pq" in baselines:
      d = embeddings.shape[1]
      for bits in [index.code_bits] + baseline_bits:
        if d % (bits // 8):
          raise ValueError(f"pq at {bits} bits needs {bits // 8} sub-quantisers, which do not "
                           f"divide the embedding dimension {d}; drop pq or that --baseline_bits")
  cache_dir = f.passage_cache_dir or None  # None: PassageStore's default (serve's cache)
  from bpr_jax.exported_model import load_exported  # pylint: disable=import-outside-toplevel
  model = load_exported(model_dir)
  rows = run_evaluation(model, index, questions, ks=ks, l=l, passages=passages,
                        baselines=baselines, embeddings=embeddings, embedding_ids=embedding_ids,
                        baseline_bits=baseline_bits, match=f.match, num_single=f.num_single,
                        batch_size=f.batch_size, ignore_identical_ids=f.ignore_identical_ids,
                        passage_cache_dir=cache_dir)
  out.parent.mkdir(parents=True, exist_ok=True)
  atomic_write_text(out, json.dumps({provenance.INPUTS: inputs, "rows": rows}, indent=2) + "\n")
  print(markdown_table(rows))
  print(f"wrote {out}")


if __name__ == "__main__":
  from bpr_jax import cli

  cli.run(main, _define_flags)
