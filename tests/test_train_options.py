"""The original code's loss options run through the real train loop and show in metrics.jsonl."""
import json

import numpy as np
import pytest

from bpr_jax import train
from test_train import shrunk_config


def _config(**loss):
  return shrunk_config(num_train_steps=4, eval_every=4, checkpoint_every=4,
                       **{f"loss.{k}": v for k, v in loss.items()})


def _metrics(workdir):
  return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def _spy_bpr_loss(monkeypatch):
  """Wraps losses.bpr_loss so every executed train step hands (q, pos, neg, beta, cand, rerank) to the host."""
  import jax
  from bpr_jax import losses
  seen, original = [], losses.bpr_loss

  def spy(q, pos, neg, beta, **kw):
    out = original(q, pos, neg, beta, **kw)
    jax.debug.callback(lambda *a: seen.append([np.asarray(x, np.float64) for x in a]),
                       q, pos, pos[:0] if neg is None else neg, beta, out.cand, out.rerank)
    return out
  monkeypatch.setattr(losses, "bpr_loss", spy)
  return seen


def _ce(scores):
  """Mean softmax cross-entropy of row i's column i, in float64 numpy."""
  m = scores.max(1, keepdims=True)
  lse = np.log(np.exp(scores - m).sum(1)) + m[:, 0]
  return float(np.mean(lse - np.diag(scores)))


def test_ste_ce_final_beta_run_logs_saturation_and_both_dev_ranks(tmp_path, monkeypatch):
  config = _config(relaxation="ste", cand_loss="ce", beta_schedule="final", final_beta=20.0)
  seen = _spy_bpr_loss(monkeypatch)
  train.train_and_evaluate(config, str(tmp_path))
  rows = _metrics(tmp_path)
  logged = [r for r in rows if "loss" in r]
  # Oracle for relaxation='ste' + cand_loss='ce': from the loop's own encoder outputs, numpy gives
  # L_cand = CE(sign(q) sign(p)^T) (the forward pass of STE is sign, 0 -> +1) and
  # L_rerank = CE(q sign(p)^T).  A loop ignoring either option computes tanh / margin values instead.
  assert len(seen) == config.num_train_steps  # the callback runs once per executed step
  cands, reranks = [], []
  for q, pos, neg, beta, cand, rerank in seen:
    p = np.concatenate([pos, neg]) if neg.size else pos
    hq, hp = np.where(q >= 0, 1.0, -1.0), np.where(p >= 0, 1.0, -1.0)
    assert float(cand) == pytest.approx(_ce(hq @ hp.T), rel=1e-4, abs=1e-4)
    assert float(rerank) == pytest.approx(_ce(q @ hp.T), rel=1e-4, abs=1e-4)
    tanh_cand = _ce(np.tanh(beta * q) @ np.tanh(beta * p).T)
    assert abs(tanh_cand - float(cand)) > 1e-3  # the inputs tell ste from tanh apart
    cands.append(float(cand))
    reranks.append(float(rerank))
  # metrics.jsonl's losses are those values, averaged over each log window (steps 0-1, 2-3)
  assert [r["loss_cand"] for r in logged] == pytest.approx([np.mean(cands[:2]), np.mean(cands[2:])], rel=1e-5)
  assert [r["loss_rerank"] for r in logged] == pytest.approx([np.mean(reranks[:2]), np.mean(reranks[2:])],
                                                             rel=1e-5)
  assert logged and all(0.0 < r["code_saturation"] <= 1.0 for r in logged)
  # beta reaches final_beta at the last step: the last logged average covers steps 2 and 3 (0-based)
  gamma = (20.0 ** 2 - 1) / 4
  assert logged[-1]["beta"] == pytest.approx(((gamma * 2 + 1) ** 0.5 + (gamma * 3 + 1) ** 0.5) / 2, rel=1e-5)
  dev = [r for r in rows if "dev_avg_rank" in r]
  assert dev and "dev_avg_rank_tanh" in dev[-1]


def test_bad_loss_options_are_config_errors(tmp_path):
  for bad, match in (({"relaxation": "sigmoid"}, "loss.relaxation"), ({"cand_loss": "hinge"}, "loss.cand_loss"),
                     ({"terms": "all"}, "loss.terms"), ({"beta_schedule": "final", "final_beta": 0.0}, "final_beta")):
    with pytest.raises(ValueError, match=match):
      train.validate_config(_config(**bad))


def test_average_rank_by_hand_sign_tanh_and_float():
  q = np.array([[1.0, 1.0], [0.0, 1.0]], np.float32)
  # rows 0, 1: positives of q0, q1; rows 2, 3: other passages.  Chosen so that the float, the
  # sign and the tanh(1 * p) ranks all differ (so identity in place of sign or tanh fails).
  p = np.array([[0.45, 0.45], [-0.3, 0.5], [2.0, -1.0], [0.1, 0.3]], np.float32)
  # DPR <q, p>: q0 -> [.9, .2, 1.0, .4]: 1.0 beats .9 -> 1; q1 -> [.45, .5, -1, .3] -> 0.  Mean .5
  assert train.average_rank(q, p, "dpr") == pytest.approx(0.5)
  # sign(p) = [[1,1],[-1,1],[1,-1],[1,1]]: q0 -> [2, 0, 0, 2]: row 3 ties -> 1;
  # q1 -> [1, 1, -1, 1]: rows 0 and 3 tie, ties count against the positive -> 2.  Mean 1.5
  assert train.average_rank(q, p, "bpr") == pytest.approx(1.5)
  # tanh(1 p): q0 -> [.844, .171, .202, .391] -> 0; q1 -> [.422, .462, -.762, .291] -> 0.  Mean 0
  assert train.average_rank(q, p, "bpr", beta=1.0) == pytest.approx(0.0)
  # tanh(100 p) saturates to the sign codes in float32 -> the sign's 1.5
  assert train.average_rank(q, p, "bpr", beta=100.0) == pytest.approx(1.5)
  # sign(0) = +1: a zero coordinate ties with the positive's +1 -> rank 1 (with sign(0) = 0: rank 0)
  qz = np.array([[0.0, 1.0]], np.float32)
  pz = np.array([[0.5, 0.2], [0.3, 0.0]], np.float32)
  assert train.average_rank(qz, pz, "bpr") == pytest.approx(1.0)
  assert train.average_rank(qz, pz, "dpr") == pytest.approx(0.0)
  p2 = np.array([[0.9, -0.1], [-0.2, 0.8], [-0.5, -0.4]], np.float32)  # signs separate all three
  q2 = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
  assert train.average_rank(q2, p2, "dpr") == 0.0 and train.average_rank(q2, p2, "bpr") == 0.0


def _rank_by_loops(q, p, score):
  """Mean 0-based rank of q[i]'s positive p[i], ties against it, by plain Python loops."""
  total = 0
  for i, qi in enumerate(q.tolist()):
    s = [score(qi, pj) for pj in p.tolist()]
    total += sum(1 for j in range(len(s)) if j != i and s[j] >= s[i])
  return total / len(q)


def test_average_rank_matches_loops_on_random_codes_with_zeros():
  import math
  rng = np.random.default_rng(0)
  q = rng.normal(size=(6, 8)).astype(np.float32)
  p = rng.normal(size=(15, 8)).astype(np.float32)
  p[rng.random(p.shape) < 0.2] = 0.0  # exact zeros: sign(0) = +1
  sgn = lambda x: 1.0 if x >= 0 else -1.0  # noqa: E731
  dot = lambda a, b: sum(x * y for x, y in zip(a, b))  # noqa: E731
  expect_sign = _rank_by_loops(q, p, lambda a, b: dot(a, [sgn(x) for x in b]))
  expect_tanh = _rank_by_loops(q, p, lambda a, b: dot(a, [math.tanh(0.7 * x) for x in b]))
  expect_dpr = _rank_by_loops(q, p, dot)
  assert len({expect_sign, expect_tanh, expect_dpr}) == 3  # the inputs tell the three apart
  assert train.average_rank(q, p, "bpr") == pytest.approx(expect_sign)
  assert train.average_rank(q, p, "bpr", beta=0.7) == pytest.approx(expect_tanh)
  assert train.average_rank(q, p, "dpr") == pytest.approx(expect_dpr)


def test_rbg_dropout_key_trains_other_masks_and_is_a_resume_setting(tmp_path):
  import jax
  from bpr_jax.run_config import TrainingError
  config = shrunk_config(num_train_steps=4, eval_every=0, checkpoint_every=2, log_every=2, rng_impl="rbg")
  key = train.dropout_key(config)
  assert "rbg" in str(jax.random.key_impl(key))
  # the masks follow the rate under either impl; the same seed gives other masks
  keep = [jax.random.bernoulli(jax.random.fold_in(k, 3), 0.9, (20000,))
          for k in (key, train.dropout_key(shrunk_config()))]
  assert all(abs(float(m.mean()) - 0.9) < 0.01 for m in keep) and bool((keep[0] != keep[1]).any())
  train.train_and_evaluate(config, str(tmp_path))
  logged = [r for r in _metrics(tmp_path) if "loss" in r]
  assert logged and all(r["loss"] == r["loss"] for r in logged)  # finite, not NaN
  config.num_train_steps = 6
  config.rng_impl = "threefry2x32"  # other masks from here on: refused, named
  with pytest.raises(TrainingError, match="rng_impl"):
    train.train_and_evaluate(config, str(tmp_path))
  with pytest.raises(ValueError, match="rng_impl"):
    train.validate_config(shrunk_config(rng_impl="philox"))
