"""The original code's loss options run through the real train loop and show in metrics.jsonl."""
import json

import pytest

from bpr_jax import train
from configs import tiny


def _config(**loss):
  c = tiny.get_config()
  c.num_train_steps = 4
  c.batch_size = 8
  c.log_every = 2
  c.eval_every = 4
  c.eval_max_examples = 16
  c.checkpoint_every = 4
  c.async_checkpoints = False
  c.data.question_max_length = 12
  c.data.passage_max_length = 24
  c.loss.update(loss)
  return c


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
