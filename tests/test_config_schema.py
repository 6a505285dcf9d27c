"""The config schema (bpr_jax/config_schema.py) is the one place each training-config field is declared:
base_config() is built from it, validation checks its allowed values, the resume classes come from it,
and `python -m bpr_jax.main --show_config` prints it."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from bpr_jax import config_schema, run_config
from bpr_jax.config_schema import FIELDS, Rule
from conftest import REPO_ROOT
from configs import common, tiny

NAMES = [f.name for f in FIELDS]


def test_every_base_config_field_is_in_the_schema_and_back():
  names = config_schema.leaf_names(common.base_config())
  assert sorted(names) == sorted(NAMES)
  assert len(set(NAMES)) == len(NAMES)
  assert common.base_config is config_schema.base_config


@pytest.mark.parametrize("f", FIELDS, ids=NAMES)
def test_each_default_has_its_type_and_is_allowed(f):
  default = f.default_value()
  assert isinstance(default, f.type) and (f.type is bool or not isinstance(default, bool)), (f.name, default)
  value = config_schema.value_of(common.base_config(), f.name)
  if f.type is dict:
    assert value.to_dict() == default
  else:
    assert value == default and type(value) is f.type
  assert f.problem(default) is None
  assert f.description and "\n" not in f.description
  assert f.resume in config_schema.RESUME_CLASSES
  allowed = f.allowed_values()
  assert allowed is None or isinstance(allowed, Rule) or (
      isinstance(allowed, tuple) and allowed and all(isinstance(v, f.type) for v in allowed))


def test_env_dependent_default_is_read_when_built(monkeypatch, tmp_path):
  monkeypatch.setenv("BPR_MODEL_DIR", str(tmp_path))
  assert common.base_config().model.hf_dir == str(tmp_path / "bert-base-uncased")
  monkeypatch.delenv("BPR_MODEL_DIR")
  assert common.base_config().model.hf_dir == ""


def _bad_value(f):
  """A value of f's type that f does not allow."""
  allowed = f.allowed_values()
  if isinstance(allowed, tuple):
    return "no-such-value"
  low = float(allowed.words.split()[-1].strip("[),"))
  if allowed.words.startswith("in ["):  # [low, high): high itself is out
    low = float(allowed.words.split(",")[1].strip(" )"))
    return f.type(low)
  return f.type(low - 1) if allowed.words.startswith(">=") else f.type(low)


CHECKED = [f for f in FIELDS if f.allowed is not None]


def test_the_checked_fields_include_the_old_checks():
  names = {f.name for f in CHECKED}
  assert {"mode", "rng_impl", "batch_size", "model.init", "model.pooling", "model.dtype", "model.attention",
          "model.param_sharding", "model.code_bits", "model.code_head_norm", "data.source",
          "data.num_hard_negatives", "loss.gamma", "loss.cand_reduction", "loss.relaxation", "loss.cand_loss",
          "loss.terms", "loss.beta_schedule", "loss.label_weight", "loss.distill_weight",
          "loss.distill_cand_weight", "loss.distill_temperature", "loss.distill_teacher_temperature",
          "loss.distill_similarity", "optim.learning_rate", "optim.warmup_fraction"} <= names


@pytest.mark.parametrize("f", CHECKED, ids=[f.name for f in CHECKED])
def test_validation_refuses_a_value_outside_the_allowed_ones(f):
  c = tiny.get_config()
  run_config.validate_config(c)
  *groups, leaf = f.name.split(".")
  node = c
  for group in groups:
    node = node[group]
  node[leaf] = _bad_value(f)
  with pytest.raises(ValueError) as err:
    run_config.validate_config(c)
  message = str(err.value)
  assert "\n" not in message and message.startswith(f"config: {f.name} must be ")
  allowed = f.allowed_values()
  assert (str(allowed) if isinstance(allowed, Rule) else repr(allowed)) in message


def test_a_field_missing_from_an_old_config_counts_as_its_default():
  c = tiny.get_config().to_dict()
  del c["rng_impl"], c["model"]["attention"]
  assert config_schema.problems(c) == []


def test_resume_classes_come_from_the_schema():
  assert run_config.RESUME_FIELDS == tuple(f.name for f in FIELDS if f.resume == "resume")
  assert run_config.RESUME_FREE == tuple(f.name for f in FIELDS if f.resume == "free")
  assert set(run_config.RESUME_FIELDS) | set(run_config.RESUME_FREE) == set(NAMES)
  assert not set(run_config.RESUME_FIELDS) & set(run_config.RESUME_FREE)
  # what is trained or its schedule must match on resume; bookkeeping may change
  assert {"loss.alpha", "model.bert", "optim.learning_rate", "num_train_steps"} <= set(run_config.RESUME_FIELDS)
  assert {"log_every", "model.remat", "data.dev_path"} <= set(run_config.RESUME_FREE)


def test_describe_shows_every_field_with_value_type_allowed_resume_and_description():
  c = tiny.get_config()
  text = config_schema.describe(c)
  for f in FIELDS:
    assert f"\n{f.name} = " in "\n" + text and f.description in text
  line = next(l for l in text.splitlines() if l.startswith("loss.relaxation = "))
  assert "str" in line and "resume" in line and "'tanh' | 'ste'" in line


def test_configs_import_no_jax():
  """configs/*.py load the schema without JAX (a reference like "bpr_jax.losses:MODES" is read on use)."""
  code = "import sys, configs.tiny, configs.common; sys.exit('jax' in sys.modules)"
  assert subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, timeout=120).returncode == 0


def _main(*args, tmp_path):
  env = {**os.environ, "BPR_SHARED_DIR": str(tmp_path / "shared")}
  return subprocess.run([sys.executable, "-m", "bpr_jax.main", *args], cwd=REPO_ROOT, capture_output=True,
                        text=True, timeout=300, env=env)


def test_show_config_prints_every_field_and_trains_nothing(tmp_path):
  workdir = tmp_path / "w"
  proc = _main("--show_config", "--config=configs/scifact.py:bpr48", f"--workdir={workdir}", tmp_path=tmp_path)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = proc.stdout
  alpha = out[out.index("\nloss.alpha = "):].splitlines()
  assert "resume" in alpha[1] and config_schema.field("loss.alpha").description in alpha[2]
  assert "loss.relaxation = 'ste'" in out and "default 'tanh'" in out  # the recipe's value, and the default
  assert all(f"\n{name} = " in out for name in NAMES)
  assert not workdir.exists()
  proc = _main("--show_config", "--config=configs/tiny.py", tmp_path=tmp_path)  # no --workdir needed
  assert proc.returncode == 0 and "\nmode = 'bpr'" in proc.stdout, proc.stderr[-3000:]


def test_main_without_workdir_or_show_config_is_one_error_line(tmp_path):
  proc = _main("--config=configs/tiny.py", tmp_path=tmp_path)
  lines = [line for line in proc.stderr.splitlines() if line.strip()]
  assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-3000:]
  assert "--workdir is required" in lines[0]


def test_show_config_names_values_outside_the_allowed_ones(tmp_path):
  proc = _main("--show_config", "--config=configs/tiny.py", "--config.mode=xx", tmp_path=tmp_path)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert proc.stdout.rstrip().splitlines()[-1] == "not allowed: mode must be one of ('bpr', 'dpr'), got 'xx'"
