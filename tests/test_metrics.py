"""Tests for bpr_jax.metrics against hand computations."""
import math

import pytest

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
