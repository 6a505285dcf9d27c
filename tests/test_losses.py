"""The method's formulas against hand computations."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bpr_jax import losses, schedules
from bpr_jax.models import hash_layer


def test_sign_maps_zero_to_plus_one():
  e = jnp.array([-2.0, -0.0, 0.0, 1e-9, -1e-9, 3.0])
  np.testing.assert_array_equal(hash_layer.hash_sign(e), [-1, 1, 1, 1, -1, 1])


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


# ----------------------------------------------------------------------------- the original code's options


def test_ste_forward_is_sign_backward_is_tanh_gradient():
  e = jnp.array([0.3, -0.2, 0.0, -1.5])
  beta = 2.0
  np.testing.assert_array_equal(hash_layer.hash_ste(e, beta), [1.0, -1.0, 1.0, -1.0])
  grad = jax.grad(lambda x: jnp.sum(hash_layer.hash_ste(x, beta) * jnp.array([1.0, 2.0, 3.0, 4.0])))(e)
  by_hand = np.array([1.0, 2.0, 3.0, 4.0]) * beta * (1 - np.tanh(beta * np.asarray(e)) ** 2)
  np.testing.assert_allclose(grad, by_hand, rtol=1e-4, atol=1e-6)


def test_hash_relaxed_dispatches_and_rejects_unknown():
  e = jnp.array([0.5, -1.0])
  np.testing.assert_allclose(hash_layer.hash_relaxed(e, 2.0, "tanh"), np.tanh([1.0, -2.0]), rtol=1e-6)
  np.testing.assert_array_equal(hash_layer.hash_relaxed(e, 2.0, "ste"), [1.0, -1.0])
  with pytest.raises(ValueError, match="relaxation"):
    hash_layer.hash_relaxed(e, 2.0, "sigmoid")


def test_code_saturation_by_hand():
  e = jnp.array([[0.1, -0.2], [1.0, -3.0]])
  expected = np.mean(np.abs(np.tanh(5.0 * np.array([0.1, -0.2, 1.0, -3.0]))))
  assert float(hash_layer.code_saturation(e, 5.0)) == pytest.approx(expected, rel=1e-6)


def test_final_beta_schedule_reaches_target_with_sqrt_shape():
  fn = schedules.beta_schedule("final", final_beta=43.0, total_steps=200)
  assert float(fn(0)) == pytest.approx(1.0)
  assert float(fn(200)) == pytest.approx(43.0, rel=1e-6)
  gamma = (43.0 ** 2 - 1) / 200
  assert float(fn(50)) == pytest.approx(math.sqrt(gamma * 50 + 1), rel=1e-6)
  paper = schedules.beta_schedule("gamma", gamma=0.1)
  assert float(paper(1000)) == pytest.approx(math.sqrt(101.0))
  with pytest.raises(ValueError, match="final_beta"):
    schedules.beta_schedule("final", final_beta=0.5, total_steps=10)
  with pytest.raises(ValueError, match="total steps"):
    schedules.beta_schedule("final", final_beta=10.0)
  with pytest.raises(ValueError, match="beta schedule"):
    schedules.beta_schedule("cosine")


def _small_batch():
  rng = np.random.default_rng(3)
  q = rng.normal(size=(3, 4)).astype(np.float32)
  pos = rng.normal(size=(3, 4)).astype(np.float32)
  neg = rng.normal(size=(3, 4)).astype(np.float32)
  return q, pos, neg


def _log_softmax_ce(scores):
  scores = np.asarray(scores, np.float64)
  out = []
  for i in range(scores.shape[0]):
    row = scores[i]
    out.append(np.log(np.sum(np.exp(row - row.max()))) + row.max() - row[i])
  return float(np.mean(out))


def test_ce_candidate_loss_by_hand():
  q, pos, neg = _small_batch()
  beta = 1.7
  hq, hp = np.tanh(beta * q), np.tanh(beta * np.concatenate([pos, neg]))
  out = losses.bpr_loss(jnp.array(q), jnp.array(pos), jnp.array(neg), beta, cand_loss="ce")
  assert float(out.cand) == pytest.approx(_log_softmax_ce(hq @ hp.T), rel=1e-5)
  assert float(out.rerank) == pytest.approx(_log_softmax_ce(q @ hp.T), rel=1e-5)
  assert float(out.loss) == pytest.approx(float(out.cand) + float(out.rerank), rel=1e-6)


def test_loss_terms_select_cand_or_rerank_only():
  q, pos, neg = map(jnp.array, _small_batch())
  both = losses.bpr_loss(q, pos, neg, 2.0)
  cand = losses.bpr_loss(q, pos, neg, 2.0, terms="cand")
  rerank = losses.bpr_loss(q, pos, neg, 2.0, terms="rerank")
  assert float(cand.loss) == pytest.approx(float(both.cand), rel=1e-6)
  assert float(rerank.loss) == pytest.approx(float(both.rerank), rel=1e-6)
  # 'cand' alone sends no gradient through <e_q, .> of L_rerank: the gradient w.r.t. q differs
  gq_both = jax.grad(lambda x: losses.bpr_loss(x, pos, neg, 2.0).loss)(q)
  gq_cand = jax.grad(lambda x: losses.bpr_loss(x, pos, neg, 2.0, terms="cand").loss)(q)
  gq_rerank = jax.grad(lambda x: losses.bpr_loss(x, pos, neg, 2.0, terms="rerank").loss)(q)
  np.testing.assert_allclose(gq_both, gq_cand + gq_rerank, rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match="terms"):
    losses.bpr_loss(q, pos, neg, 2.0, terms="none")
  with pytest.raises(ValueError, match="cand_loss"):
    losses.bpr_loss(q, pos, neg, 2.0, cand_loss="hinge")


def test_ste_loss_uses_sign_codes_in_forward():
  q, pos, neg = _small_batch()
  out = losses.bpr_loss(jnp.array(q), jnp.array(pos), jnp.array(neg), 1.0, relaxation="ste")
  sq = np.where(q >= 0, 1.0, -1.0)
  sp = np.where(np.concatenate([pos, neg]) >= 0, 1.0, -1.0)
  assert float(out.rerank) == pytest.approx(_log_softmax_ce(q @ sp.T), rel=1e-5)
  scores = sq @ sp.T
  hinge = [max(0.0, -scores[i, i] + scores[i, j] + 2.0) for i in range(3) for j in range(6) if j != i]
  assert float(out.cand) == pytest.approx(np.mean(hinge), rel=1e-5)
  sat = np.mean(np.abs(np.tanh(np.concatenate([pos, neg]))))
  assert float(out.saturation) == pytest.approx(sat, rel=1e-5)


def test_defaults_are_the_papers_method():
  from configs import nq, tqa
  for cfg in (nq.get_config(), tqa.get_config()):
    assert (cfg.loss.relaxation, cfg.loss.cand_loss, cfg.loss.terms, cfg.loss.beta_schedule) == (
        "tanh", "margin", "both", "gamma")
    assert cfg.loss.gamma == 0.1 and cfg.loss.alpha == 2.0
