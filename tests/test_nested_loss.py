"""Nested codes: the loss averaged over prefixes of the code, its config checks, a tiny run."""
import json

import jax.numpy as jnp
import numpy as np
import pytest

from bpr_jax import losses, run_config, train
from test_train import shrunk_config


def _batch(seed=0, b=4, n=1, d=32):
  rng = np.random.default_rng(seed)
  return tuple(jnp.asarray(rng.normal(size=s).astype(np.float32)) for s in ((b, d), (b, d), (b * n, d)))


@pytest.mark.parametrize("options", [{}, {"cand_loss": "ce", "relaxation": "ste"}, {"cand_reduction": "sum"}])
def test_nested_loss_is_the_average_of_the_loss_on_sliced_vectors(options):
  q, pos, neg = _batch()
  out = losses.bpr_loss(q, pos, neg, 1.5, nested_bits="8,16,32", **options)
  parts = [losses.bpr_loss(q[:, :n], pos[:, :n], neg[:, :n], 1.5, **options) for n in (8, 16, 32)]
  for field in ("loss", "cand", "rerank"):
    want = np.mean([float(getattr(o, field)) for o in parts])
    assert float(getattr(out, field)) == pytest.approx(want, rel=1e-6), field
  np.testing.assert_array_equal(np.asarray(out.scores), np.asarray(parts[-1].scores))  # the largest prefix ranks
  # a tuple is the same as the string; no prefixes is the plain loss
  assert float(losses.bpr_loss(q, pos, neg, 1.5, nested_bits=(8, 16, 32), **options).loss) == float(out.loss)
  assert float(losses.bpr_loss(q, pos, neg, 1.5, nested_bits="", **options).loss) == float(
      losses.bpr_loss(q, pos, neg, 1.5, **options).loss)


def test_nested_loss_with_teacher_and_dpr():
  q, pos, neg = _batch(1)
  t = jnp.asarray(np.random.default_rng(3).normal(size=(4, 8)).astype(np.float32))
  kw = dict(teacher_scores=t, distill_weight=1.0, distill_cand_weight=0.5, label_weight=0.3)
  out = losses.bpr_loss(q, pos, neg, 2.0, nested_bits="16,32", **kw)
  parts = [losses.bpr_loss(q[:, :n], pos[:, :n], neg[:, :n], 2.0, **kw) for n in (16, 32)]
  for field in ("loss", "distill", "distill_cand"):
    assert float(getattr(out, field)) == pytest.approx(np.mean([float(getattr(o, field)) for o in parts]), rel=1e-6)
  d = losses.dpr_loss(q, pos, neg, nested_bits="8,24")
  assert float(d.loss) == pytest.approx(np.mean([float(losses.dpr_loss(q[:, :n], pos[:, :n], neg[:, :n]).loss)
                                                 for n in (8, 24)]), rel=1e-6)
  with pytest.raises(ValueError, match="more than the code's 32 bits"):
    losses.bpr_loss(q, pos, neg, 1.0, nested_bits="16,40")


@pytest.mark.parametrize("value,match", [
    ("128,100", "multiple of 8"), ("256,128", "increase"), ("128,128", "increase"), ("12a", "comma-separated"),
    ("0,8", "multiple of 8"),
])
def test_invalid_nested_bits_are_one_line_config_errors(value, match):
  with pytest.raises(ValueError, match=match) as err:
    run_config.validate_config(shrunk_config(**{"loss.nested_bits": value}))
  assert str(err.value).startswith("config: loss.nested_bits") and "\n" not in str(err.value)


def test_nested_bits_above_the_code_size_are_refused(tmp_path):
  with pytest.raises(ValueError, match="more than the code's 32 bits"):
    run_config.validate_config(shrunk_config(**{"model.code_bits": 32, "loss.nested_bits": "16,64"}))
  # without a code head the code size is the encoder's hidden size (64 in the tiny config), known
  # once the architecture is read: refused before training, nothing written
  with pytest.raises(ValueError, match="more than the code's 64 bits") as err:
    train.train_and_evaluate(shrunk_config(**{"loss.nested_bits": "32,128"}), str(tmp_path / "w"))
  assert "\n" not in str(err.value)
  assert not (tmp_path / "w" / "checkpoints").exists()


def test_tiny_run_with_nested_bits_and_a_code_head(tmp_path):
  config = shrunk_config(num_train_steps=4, eval_every=4, checkpoint_every=4,
                         **{"model.code_bits": 48, "loss.nested_bits": "16,32,48"})
  result = train.train_and_evaluate(config, str(tmp_path))
  assert result["step"] == 4 and np.isfinite(result["loss"]) and "dev_avg_rank" in result
  saved = json.loads((tmp_path / "config.json").read_text())
  assert saved["loss"]["nested_bits"] == "16,32,48"
  assert "loss.nested_bits" in run_config.RESUME_FIELDS
