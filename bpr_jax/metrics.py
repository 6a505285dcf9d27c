"""Retrieval metrics: DPR answer matching and qrels metrics (BEIR definitions).

Answer matching follows DPR's evaluation (``dpr/data/qa_validation.py``):
text and answers are Unicode-NFD normalised and tokenised with DPR's
SimpleTokenizer regex ``[\\p{L}\\p{N}\\p{M}]+|[^\\p{Z}\\p{C}]``; a passage has
the answer when the uncased answer token sequence occurs contiguously in the
uncased passage tokens.  Regex mode (CuratedTREC) searches each answer as a
case-insensitive regular expression in the NFD-normalised text.

Qrels metrics follow pytrec_eval / trec_eval as used by BEIR: a document is
relevant when its grade is > 0; nDCG@k uses linear graded gains and a log2
discount, with the ideal DCG computed from the query's qrels; Recall@k is the
share of the query's relevant documents found in the top k; MRR@k is the
reciprocal rank of the first relevant document in the top k (0 if none).
Each is averaged over the queries in ``qrels`` that have a relevant document
(a query absent from the run scores 0).
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
# Qrels metrics.

Qrels = Mapping[str, Mapping[str, int]]
Run = Mapping[str, Sequence[str]]


def _relevant(judged: Mapping[str, int]) -> dict[str, int]:
  return {d: int(g) for d, g in judged.items() if int(g) > 0}


def _per_query(qrels: Qrels, run: Run, k: int, fn) -> float:
  if k < 1:
    raise ValueError(f"k must be >= 1, got {k}")
  total, count = 0.0, 0
  for qid, judged in qrels.items():
    rel = _relevant(judged)
    if not rel:
      continue
    ranked = _dedupe(run.get(qid, ()))[:k]
    total += fn(rel, ranked)
    count += 1
  return total / count if count else 0.0


def _dedupe(ranked: Sequence[str]) -> list[str]:
  seen: set[str] = set()
  out = []
  for d in ranked:
    if d not in seen:
      seen.add(d)
      out.append(d)
  return out


def recall_at_k(qrels: Qrels, run: Run, k: int) -> float:
  """Mean over queries of |relevant in top k| / |relevant|."""
  return _per_query(qrels, run, k, lambda rel, ranked: sum(d in rel for d in ranked) / len(rel))


def _dcg(gains: Sequence[float]) -> float:
  return sum(g / math.log2(i + 2) for i, g in enumerate(gains))


def ndcg_at_k(qrels: Qrels, run: Run, k: int) -> float:
  """Mean nDCG@k with linear graded gains and log2(rank + 1) discount."""

  def one(rel: dict[str, int], ranked: list[str]) -> float:
    ideal = _dcg(sorted(rel.values(), reverse=True)[:k])
    return _dcg([rel.get(d, 0) for d in ranked]) / ideal

  return _per_query(qrels, run, k, one)


def mrr_at_k(qrels: Qrels, run: Run, k: int) -> float:
  """Mean reciprocal rank of the first relevant document in the top k."""

  def one(rel: dict[str, int], ranked: list[str]) -> float:
    for i, d in enumerate(ranked):
      if d in rel:
        return 1.0 / (i + 1)
    return 0.0

  return _per_query(qrels, run, k, one)
