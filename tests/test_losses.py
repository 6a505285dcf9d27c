"""The method's formulas against hand computations."""
import math

import jax.numpy as jnp
import numpy as np
import pytest

from bpr_jax import losses, schedules
from bpr_jax.models import hash_layer


def test_hash_train_is_tanh_of_beta_e():
  e = jnp.array([0.5, -1.0])
  np.testing.assert_allclose(hash_layer.hash_train(e, 2.0), np.tanh([1.0, -2.0]), rtol=1e-6)


def test_beta_schedule():
  assert float(schedules.hash_beta(0, 0.1)) == pytest.approx(1.0)
  assert float(schedules.hash_beta(10, 0.1)) == pytest.approx(math.sqrt(2.0))
  assert float(schedules.hash_beta(1000, 0.1)) == pytest.approx(math.sqrt(101.0))
  # large beta makes tanh(beta e) approach sign(e)
  beta = schedules.hash_beta(10**6, 0.1)
  np.testing.assert_allclose(hash_layer.hash_train(jnp.array([0.3, -0.2]), beta), [1, -1], atol=1e-6)


def test_learning_rate_schedule_warmup_and_linear_decay():
  lr = schedules.learning_rate_schedule(2e-5, total_steps=100, warmup_fraction=0.06)
  assert float(lr(0)) == 0.0
  assert float(lr(3)) == pytest.approx(1e-5)
  assert float(lr(6)) == pytest.approx(2e-5)
  assert float(lr(53)) == pytest.approx(1e-5)
  assert float(lr(100)) == pytest.approx(0.0, abs=1e-12)


def test_candidate_loss_by_hand():
  # two questions, candidates p0 (positive of q0), p1 (positive of q1), p2 (hard negative)
  hq = jnp.array([[1.0, 0.0], [0.0, 1.0]])
  hp = jnp.array([[1.0, 0.0], [0.5, 0.5], [-1.0, 1.0]])
  # scores: q0: [1, .5, -1]  q1: [0, .5, 1]
  # q0 (pos 1): max(0, -1+.5+2)=1.5, max(0,-1-1+2)=0      -> sum 1.5
  # q1 (pos .5): max(0,-.5+0+2)=1.5, max(0,-.5+1+2)=2.5   -> sum 4.0
  mean = losses.candidate_loss(hq, hp, alpha=2.0, reduction="mean")
  total = losses.candidate_loss(hq, hp, alpha=2.0, reduction="sum")
  assert float(mean) == pytest.approx((1.5 + 4.0) / 4)
  assert float(total) == pytest.approx((1.5 + 4.0) / 2)


def _reference_bpr(q, pos, neg, beta, alpha, reduction):
  """Loop-by-loop reference of the paper's equations (numpy, float64)."""
  q, p = np.asarray(q, np.float64), np.concatenate([pos, neg]).astype(np.float64)
  hq, hp = np.tanh(beta * q), np.tanh(beta * p)
  hinges, per_question, ce = [], [], []
  for i in range(len(q)):
    s_pos = hq[i] @ hp[i]
    row = [max(0.0, -s_pos + hq[i] @ hp[j] + alpha) for j in range(len(p)) if j != i]
    hinges += row
    per_question.append(sum(row))
    logits = np.array([q[i] @ hp[j] for j in range(len(p))])
    ce.append(-(logits[i] - np.log(np.exp(logits - logits.max()).sum()) - logits.max()))
  cand = np.mean(hinges) if reduction == "mean" else np.mean(per_question)
  return cand + np.mean(ce), cand, np.mean(ce)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_bpr_loss_matches_reference(reduction):
  rng = np.random.default_rng(0)
  q, pos, neg = rng.normal(size=(4, 8)), rng.normal(size=(4, 8)), rng.normal(size=(4, 8))
  beta = 1.7
  out = losses.bpr_loss(jnp.asarray(q), jnp.asarray(pos), jnp.asarray(neg), beta, alpha=2.0, cand_reduction=reduction)
  want, cand, rerank = _reference_bpr(q, pos, neg, beta, 2.0, reduction)
  np.testing.assert_allclose([out.loss, out.cand, out.rerank], [want, cand, rerank], rtol=1e-5)


def test_bpr_rerank_uses_continuous_question_and_hashed_passage():
  q = jnp.array([[3.0, -1.0]])
  pos = jnp.array([[0.2, 0.1]])
  out = losses.bpr_loss(q, pos, jnp.array([[-0.4, 0.3]]), 2.0, alpha=2.0)
  hp = np.tanh(2.0 * np.array([[0.2, 0.1], [-0.4, 0.3]]))
  np.testing.assert_allclose(out.scores, np.array([[3.0, -1.0]]) @ hp.T, rtol=1e-6)


def test_dpr_loss_by_hand():
  q = jnp.array([[1.0, 0.0], [0.0, 2.0]])
  pos = jnp.array([[1.0, 0.0], [0.0, 1.0]])
  out = losses.dpr_loss(q, pos, None)
  # q0 logits [1, 0] label 0; q1 logits [0, 2] label 1
  want = (math.log(1 + math.exp(-1)) + math.log(1 + math.exp(-2))) / 2
  assert float(out.loss) == pytest.approx(want, rel=1e-6)
  assert float(out.cand) == 0.0


def test_bad_reduction_is_an_error():
  with pytest.raises(ValueError, match="cand_reduction"):
    losses.candidate_loss(jnp.ones((2, 2)), jnp.ones((3, 2)), alpha=2.0, reduction="avg")


def test_positive_rank():
  scores = jnp.array([[5.0, 1.0, 7.0], [0.0, 2.0, 1.0]])
  np.testing.assert_array_equal(losses.positive_rank(scores), [1, 0])
