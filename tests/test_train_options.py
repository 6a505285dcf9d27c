"""The original code's loss options run through the real train loop and show in metrics.jsonl."""
import json

import pytest

from bpr_jax import train
from test_train import shrunk_config


def _config(**loss):
  return shrunk_config(num_train_steps=4, eval_every=4, checkpoint_every=4,
                       **{f"loss.{k}": v for k, v in loss.items()})


def _metrics(workdir):
  return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def test_ste_ce_final_beta_run_logs_saturation_and_both_dev_ranks(tmp_path):
  config = _config(relaxation="ste", cand_loss="ce", beta_schedule="final", final_beta=20.0)
  train.train_and_evaluate(config, str(tmp_path))
  rows = _metrics(tmp_path)
  logged = [r for r in rows if "loss" in r]
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
  import numpy as np
  q = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
  p = np.array([[0.2, -0.1], [0.9, 0.3], [-0.5, 0.4]], np.float32)  # rows 0, 1: positives of q0, q1
  # DPR <q, p>: q0 -> [.2, .9, -.5]: rank 1; q1 -> [-.1, .3, .4]: positive .3 below .4 -> rank 1
  assert train.average_rank(q, p, "dpr") == pytest.approx(1.0)
  # BPR sign(p) = [[1,-1],[1,1],[-1,1]]: q0 -> [1, 1, -1]: the tie counts against it -> 1; q1 -> [-1, 1, 1] -> 1
  assert train.average_rank(q, p, "bpr") == pytest.approx(1.0)
  # tanh(10 p): q0 -> [.96, .99, -.99] -> 1; q1 -> [-.76, .995, .9993] -> 1
  assert train.average_rank(q, p, "bpr", beta=10.0) == pytest.approx(1.0)
  p2 = np.array([[0.9, -0.1], [-0.2, 0.8], [-0.5, -0.4]], np.float32)  # signs separate all three
  assert train.average_rank(q, p2, "dpr") == 0.0 and train.average_rank(q, p2, "bpr") == 0.0


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
