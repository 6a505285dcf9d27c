"""Retrieval metrics: DPR answer matching and qrels metrics (BEIR definitions).

Answer matching follows DPR's evaluation (``dpr/data/qa_validation.py``):
text and answers are Unicode-NFD normalised and tokenised with DPR's
SimpleTokenizer regex ``[\\p{L}\\p{N}\\p{M}]+|[^\\p{Z}\\p{C}]``; a passage has
the answer when the uncased answer token sequence occurs contiguously in the
uncased passage tokens.  Regex mode (CuratedTREC) searches each answer as a
case-insensitive regular expression in the NFD-normalised text.

Qrels metrics (`beir_evaluate`) are computed by pytrec_eval, the trec_eval
binding BEIR's ``EvaluateRetrieval.evaluate`` uses, with BEIR's conventions:
scored runs ``{qid: {doc_id: score}}``, re-sorted by score with ties broken by
document id (trec_eval's order, not the system's), ``ignore_identical_ids``
(default True, as BEIR), and means over the queries that have results.
"""
from __future__ import annotations

import math
import re
import unicodedata
from typing import Iterable, Mapping, Sequence

try:
  import regex as _regex  # type: ignore
except ImportError:  # pragma: no cover - exercised only without `regex`
  _regex = None

_TOKEN_PATTERN = r"([\p{L}\p{N}\p{M}]+)|([^\p{Z}\p{C}])"
_TOKEN_RE = (_regex.compile(_TOKEN_PATTERN, flags=_regex.IGNORECASE | _regex.UNICODE | _regex.MULTILINE)
             if _regex is not None else None)


def normalize(text: str) -> str:
  """Unicode NFD normalisation, as DPR applies before matching."""
  return unicodedata.normalize("NFD", text)


def _tokens_fallback(text: str) -> list[str]:
  """Same tokens as the regex, from Unicode categories (no `regex` package)."""
  out: list[str] = []
  run: list[str] = []
  for ch in text:
    cat = unicodedata.category(ch)[0]
    if cat in "LNM":
      run.append(ch)
      continue
    if run:
      out.append("".join(run))
      run = []
    if cat not in "ZC":
      out.append(ch)
  if run:
    out.append("".join(run))
  return out


def tokenize(text: str, uncased: bool = True) -> list[str]:
  """DPR SimpleTokenizer tokens: runs of letters/numbers/marks, or single non-space chars."""
  if _TOKEN_RE is not None:
    toks = [m.group() for m in _TOKEN_RE.finditer(text)]
  else:
    toks = _tokens_fallback(text)
  return [t.lower() for t in toks] if uncased else toks


def _contains(haystack: Sequence[str], needle: Sequence[str]) -> bool:
  n = len(needle)
  if n == 0:
    return False
  first = needle[0]
  for i in range(len(haystack) - n + 1):
    if haystack[i] == first and list(haystack[i:i + n]) == list(needle):
      return True
  return False


def regex_match(text: str, pattern: str) -> bool:
  """True when ``pattern`` (case-insensitive) matches somewhere in ``text``.

  Invalid patterns never match, as in DPR.
  """
  mod = _regex if _regex is not None else re
  try:
    compiled = mod.compile(pattern, flags=mod.IGNORECASE | mod.UNICODE | mod.MULTILINE)
  except Exception:  # pylint: disable=broad-except
    return False
  return compiled.search(text) is not None


def has_answer(answers: Iterable[str], text: str, mode: str = "string") -> bool:
  """DPR's answer check of one passage text.

  Args:
    answers: gold answers (strings, or regex patterns in "regex" mode).
    text: the passage text (DPR matches the text only, not the title).
    mode: "string" (token sequence match) or "regex" (CuratedTREC).
  """
  text = normalize(text)
  if mode == "string":
    toks = tokenize(text)
    for ans in answers:
      if _contains(toks, tokenize(normalize(ans))):
        return True
    return False
  if mode == "regex":
    return any(regex_match(text, normalize(ans)) for ans in answers)
  raise ValueError(f"unknown match mode {mode!r}; expected 'string' or 'regex'")


def answer_hits(answers: Sequence[Sequence[str]], texts: Sequence[Sequence[str]],
                mode: str = "string") -> list[list[bool]]:
  """has_answer for every retrieved passage: [question][rank] -> bool."""
  if len(answers) != len(texts):
    raise ValueError(f"{len(answers)} answer lists but {len(texts)} result lists")
  return [[has_answer(a, t, mode) for t in ts] for a, ts in zip(answers, texts)]


def answer_recall_at_k(hits: Sequence[Sequence[bool]], ks: Iterable[int]) -> dict[int, float]:
  """Top-k retrieval accuracy: share of questions with an answer in the top k."""
  ks = list(ks)
  if not hits:
    return {k: 0.0 for k in ks}
  out = {}
  for k in ks:
    out[k] = sum(1.0 for h in hits if any(h[:k])) / len(hits)
  return out


# ---------------------------------------------------------------------------
# Qrels metrics, computed by pytrec_eval (trec_eval), as BEIR does.

Qrels = Mapping[str, Mapping[str, int]]
Results = Mapping[str, Mapping[str, float]]  # {qid: {doc_id: score}}
Run = Mapping[str, Sequence[str]]  # {qid: [doc_id, ...]} best first


def _check_ks(k_values: Iterable[int]) -> list[int]:
  ks = sorted({int(k) for k in k_values})
  if not ks or ks[0] < 1:
    raise ValueError(f"cut-offs must be integers >= 1, got {list(k_values)}")
  return ks


def trec_order(doc_scores: Mapping[str, float]) -> list[str]:
  """Documents in trec_eval's order: score descending, ties by document id descending."""
  return sorted(doc_scores, key=lambda d: (-float(doc_scores[d]), _Desc(d)))


class _Desc(str):
  """A string that sorts in reverse (for trec_eval's descending-id tie-break)."""

  def __lt__(self, other: str) -> bool:  # type: ignore[override]
    return str.__gt__(self, other)


def _clean_results(results: Results, ignore_identical_ids: bool) -> dict[str, dict[str, float]]:
  out: dict[str, dict[str, float]] = {}
  for qid, docs in results.items():
    clean = {}
    for d, s in docs.items():
      d, s = str(d), float(s)
      if ignore_identical_ids and d == str(qid):
        continue
      if not math.isfinite(s):
        raise ValueError(f"query {qid!r}: document {d!r} has score {s}")
      clean[d] = s
    out[str(qid)] = clean
  return out


def beir_evaluate(qrels: Qrels, results: Results, k_values: Iterable[int], *,
                  ignore_identical_ids: bool = True, digits: int | None = None) -> dict[str, float]:
  """nDCG@k, Recall@k and MRR@k of a scored run, with pytrec_eval and BEIR's conventions.

  As ``beir.retrieval.evaluation.EvaluateRetrieval.evaluate``: documents whose
  id equals the query id are dropped first when ``ignore_identical_ids`` (BEIR's
  default); pytrec_eval re-sorts each query's documents by score (ties by
  document id, descending) and evaluates the queries present in both qrels and
  the run, so queries without results are left out of every mean; a document
  is relevant when its grade is > 0.  nDCG@k is trec_eval's ``ndcg_cut`` and
  Recall@k its ``recall``; MRR@k is trec_eval's ``recip_rank`` of each query's
  top k in that order (BEIR's own ``mrr`` computes the same reciprocal rank).
  ``digits`` rounds as BEIR does (5); None keeps full precision.

  Returns:
    {"ndcg@k": ..., "recall@k": ..., "mrr@k": ...} for every k.
  """
  import pytrec_eval  # pylint: disable=import-outside-toplevel

  ks = _check_ks(k_values)
  qrels = {str(q): {str(d): int(g) for d, g in docs.items()} for q, docs in qrels.items()}
  run = _clean_results(results, ignore_identical_ids)
  cuts = ",".join(str(k) for k in ks)
  evaluator = pytrec_eval.RelevanceEvaluator(qrels, {f"ndcg_cut.{cuts}", f"recall.{cuts}"})
  scores = evaluator.evaluate(run)
  out: dict[str, float] = {}
  n = len(scores)
  for k in ks:
    out[f"ndcg@{k}"] = sum(s[f"ndcg_cut_{k}"] for s in scores.values()) / n if n else 0.0
    out[f"recall@{k}"] = sum(s[f"recall_{k}"] for s in scores.values()) / n if n else 0.0
  rr = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"})
  for k in ks:
    top = {q: {d: docs[d] for d in trec_order(docs)[:k]} for q, docs in run.items()}
    per = rr.evaluate(top)
    # Same query set as the other metrics: a query whose top k is empty still counts (0).
    out[f"mrr@{k}"] = sum(per[q]["recip_rank"] if q in per else 0.0 for q in scores) / n if n else 0.0
  if digits is not None:
    out = {key: round(v, digits) for key, v in out.items()}
  return out


def results_from_ranking(run: Run) -> dict[str, dict[str, float]]:
  """A scored run from ranked lists (score = -rank, first occurrence of a duplicate kept)."""
  out: dict[str, dict[str, float]] = {}
  for qid, ranked in run.items():
    docs: dict[str, float] = {}
    for i, d in enumerate(ranked):
      docs.setdefault(str(d), -float(i))
    out[str(qid)] = docs
  return out


def _ranked_metric(name: str, qrels: Qrels, run: Run, k: int) -> float:
  if k < 1:
    raise ValueError(f"k must be >= 1, got {k}")
  rel = {q: docs for q, docs in qrels.items() if any(int(g) > 0 for g in docs.values())}
  results = results_from_ranking({q: run.get(q, ()) for q in rel})
  return beir_evaluate(rel, results, [k], ignore_identical_ids=False)[f"{name}@{k}"]


def recall_at_k(qrels: Qrels, run: Run, k: int) -> float:
  """Recall@k of ranked lists (in their own order), via `beir_evaluate`."""
  return _ranked_metric("recall", qrels, run, k)


def ndcg_at_k(qrels: Qrels, run: Run, k: int) -> float:
  """nDCG@k of ranked lists (in their own order), via `beir_evaluate`."""
  return _ranked_metric("ndcg", qrels, run, k)


def mrr_at_k(qrels: Qrels, run: Run, k: int) -> float:
  """MRR@k of ranked lists (in their own order), via `beir_evaluate`."""
  return _ranked_metric("mrr", qrels, run, k)
