"""Tests for bpr_jax.metrics against hand computations."""
import math

import numpy as np
import pytest
import pytrec_eval

from bpr_jax import metrics
from bpr_jax.metrics import (answer_hits, answer_recall_at_k, has_answer, mrr_at_k, ndcg_at_k,
                             recall_at_k, tokenize)


def test_tokenizer_like_dpr():
  assert tokenize("Hello, World! It's 3.5kg") == ["hello", ",", "world", "!", "it", "'", "s", "3", ".",
                                                 "5kg"]
  assert tokenize("Élan") == ["élan"]
  # NFD splits é into e + combining accent; \p{M} keeps it inside the token.
  assert tokenize(metrics.normalize("Café au lait")) == [metrics.normalize("café"), "au", "lait"]
  text = "Ångström, x\u00a0y\tz 東京"
  assert metrics._tokens_fallback(text.lower()) == tokenize(text)


def test_has_answer_string_mode():
  text = "The Eiffel Tower is in Paris, France."
  assert has_answer(["paris"], text)
  assert has_answer(["Eiffel tower"], text)
  assert not has_answer(["Pari"], text)  # token match, not substring
  assert not has_answer(["tower eiffel"], text)
  assert has_answer(["nope", "France"], text)
  assert has_answer(["Café"], "a cafe\u0301 here")  # NFD both sides
  assert not has_answer([""], text)


def test_has_answer_regex_mode():
  assert has_answer([r"Pa?ris"], "in PARIS today", mode="regex")
  assert not has_answer([r"Lyon|Nice"], "in paris", mode="regex")
  assert not has_answer([r"(unclosed"], "(unclosed", mode="regex")
  with pytest.raises(ValueError, match="match mode"):
    has_answer(["a"], "a", mode="exact")


def test_answer_recall():
  hits = answer_hits([["a"], ["b"], ["c"]], [["x a", "y"], ["y", "b"], ["x", "y"]])
  assert hits == [[True, False], [False, True], [False, False]]
  assert answer_recall_at_k(hits, [1, 2]) == {1: pytest.approx(1 / 3), 2: pytest.approx(2 / 3)}
  assert answer_recall_at_k([], [5]) == {5: 0.0}


QRELS = {"q1": {"d1": 2, "d2": 1, "d9": 0}, "q2": {"d5": 1}, "q3": {"d7": 0}}
RUN = {"q1": ["d3", "d2", "d1", "d4"], "q2": ["d6", "d7"]}


def test_recall_at_k():
  # q1: top2 has d2 of {d1,d2} -> 0.5; q2: 0; q3 has no relevant doc -> skipped.
  assert recall_at_k(QRELS, RUN, 2) == pytest.approx(0.25)
  assert recall_at_k(QRELS, RUN, 3) == pytest.approx(0.5)


def test_ndcg_at_k():
  # q1 top3: gains [0, 1, 2] -> dcg = 1/log2(3) + 2/log2(4); ideal [2, 1] -> 2 + 1/log2(3).
  dcg = 1 / math.log2(3) + 2 / 2
  idcg = 2 + 1 / math.log2(3)
  assert ndcg_at_k(QRELS, RUN, 3) == pytest.approx((dcg / idcg + 0.0) / 2)
  # k=1: ideal is just 2, dcg 0.
  assert ndcg_at_k(QRELS, RUN, 1) == 0.0
  assert ndcg_at_k({"q": {"a": 3}}, {"q": ["a"]}, 10) == 1.0


def test_mrr_at_k():
  assert mrr_at_k(QRELS, RUN, 10) == pytest.approx((1 / 2 + 0) / 2)
  assert mrr_at_k(QRELS, RUN, 1) == 0.0
  with pytest.raises(ValueError):
    mrr_at_k(QRELS, RUN, 0)


def test_ties_are_broken_by_document_id_not_system_order():
  """trec_eval re-sorts by score; equal scores go by document id, descending."""
  qrels = {"q": {"a": 1}}
  first = metrics.beir_evaluate(qrels, {"q": {"a": 3.0, "b": 3.0}}, [1])
  second = metrics.beir_evaluate(qrels, {"q": {"b": 3.0, "a": 3.0}}, [1])
  assert first == second and first["mrr@1"] == 0.0 and first["ndcg@1"] == 0.0  # "b" ranks first
  assert metrics.trec_order({"a": 1.0, "c": 2.0, "b": 1.0}) == ["c", "b", "a"]


def test_beir_conventions():
  qrels = {"q1": {"d1": 1}, "q2": {"d2": 1}}
  run = {"q1": {"q1": 9.0, "x": 5.0, "d1": 1.0}}  # q2 has no results: left out of the means
  kept = metrics.beir_evaluate(qrels, run, [3], ignore_identical_ids=False)
  dropped = metrics.beir_evaluate(qrels, run, [3])  # BEIR's default drops doc "q1" from query q1
  assert kept["mrr@3"] == pytest.approx(1 / 3) and dropped["mrr@3"] == pytest.approx(1 / 2)
  assert kept["recall@3"] == dropped["recall@3"] == 1.0
  assert metrics.beir_evaluate(qrels, {"q1": {"x": 1.0}}, [3], digits=5)["ndcg@3"] == 0.0
  with pytest.raises(ValueError, match="cut-offs"):
    metrics.beir_evaluate(qrels, run, [0])


def _beir_reference(qrels, results, k_values):
  """BEIR's EvaluateRetrieval.evaluate (ndcg_cut, recall) and custom_metrics.mrr, as they compute
  them: pytrec_eval's per-query values summed over the evaluated queries, rounded to 5 digits; MRR
  over each query's top k after Python's sort by score."""
  results = {q: {d: s for d, s in docs.items() if d != q} for q, docs in results.items()}
  cuts = ",".join(str(k) for k in k_values)
  scores = pytrec_eval.RelevanceEvaluator(qrels, {f"ndcg_cut.{cuts}", f"recall.{cuts}"}).evaluate(results)
  out = {}
  for k in k_values:
    out[f"ndcg@{k}"] = round(sum(s[f"ndcg_cut_{k}"] for s in scores.values()) / len(scores), 5)
    out[f"recall@{k}"] = round(sum(s[f"recall_{k}"] for s in scores.values()) / len(scores), 5)
  top = {q: sorted(docs.items(), key=lambda item: item[1], reverse=True)[:max(k_values)]
         for q, docs in results.items()}
  for k in k_values:
    total = 0.0
    for q in qrels:
      relevant = {d for d, g in qrels[q].items() if g > 0}
      for rank, (d, _) in enumerate(top[q][:k]):
        if d in relevant:
          total += 1.0 / (rank + 1)
          break
    out[f"mrr@{k}"] = round(total / len(qrels), 5)
  return out


@pytest.fixture(scope="module")
def scifact_bm25(scifact_dir):
  """A real SciFact run: BM25 (bm25s) top 100 for the 300 test queries."""
  from bpr_jax.data.beir import load_corpus, load_qrels, load_queries
  from bpr_jax.mine_negatives import Bm25Index
  corpus = load_corpus(scifact_dir)
  queries = load_queries(scifact_dir)
  qrels = load_qrels(scifact_dir, "test", corpus_ids=corpus, query_ids=queries)
  passages = list(corpus.values())
  qids = list(qrels)
  docs, scores = Bm25Index(passages).search([queries[q] for q in qids], 100)
  ids = np.array([p.id for p in passages])
  return qrels, qids, ids, docs, scores


def test_scifact_numbers_equal_beirs_evaluator(scifact_bm25):
  qrels, qids, ids, docs, scores = scifact_bm25
  results = {q: {str(ids[j]): float(s) for j, s in zip(dd, ss)} for q, dd, ss in zip(qids, docs, scores)}
  ks = [1, 10, 100]
  want = _beir_reference(qrels, results, ks)
  got = metrics.beir_evaluate(qrels, results, ks, digits=5)
  assert got == want
  assert 0.5 < got["ndcg@10"] < 0.8  # BM25 on SciFact: BEIR reports 0.665 (Lucene)
  # The same run through evaluate's scorer (rows + scores + the row -> id map).
  from bpr_jax import evaluate as ev
  questions = ev.Questions(texts=qids, qids=qids, qrels=qrels)
  row = ev.Scorer(questions, [10, 100])(scores, docs, ids)
  assert {k: round(v, 5) for k, v in row.items()} == {
      "recall@10": want["recall@10"], "recall@100": want["recall@100"], "ndcg@10": want["ndcg@10"],
      "mrr@10": want["mrr@10"]}
