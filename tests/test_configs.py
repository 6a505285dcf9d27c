"""Every configs/*.py loads, stays inside the schema of configs/common.py and validates."""
import importlib
import os
import pathlib

import pytest

from bpr_jax import train
from configs.common import base_config

REPO = pathlib.Path(__file__).resolve().parents[1]
CONFIG_NAMES = sorted(p.stem for p in (REPO / "configs").glob("*.py")
                      if p.stem not in ("__init__", "common"))
# Environment each config reads its paths from (set to a fake folder so validation can run).
PATH_ENV = ("BPR_DATA_DIR", "BPR_MODEL_DIR", "BPR_SHARED_DIR", "BPR_SCIFACT_HARD_NEGATIVES")


def load(name: str):
  return importlib.import_module(f"configs.{name}").get_config()


def flat_keys(c, prefix=""):
  out = set()
  for k, v in c.items():
    if hasattr(v, "items"):
      out |= flat_keys(v, f"{prefix}{k}.")
    else:
      out.add(f"{prefix}{k}")
  return out


def test_expected_configs_present():
  assert {"tiny", "nq", "tqa", "scifact"} <= set(CONFIG_NAMES)


# Configs a command fills in before training (the teacher, the mined data): validated there
# (tests/test_binarize.py trains with it); their docstring shows that command.
FILLED_BY = {"binarize": "python -m bpr_jax.binarize"}


@pytest.mark.parametrize("name", [n for n in CONFIG_NAMES if n not in FILLED_BY])
def test_config_loads_and_validates(name, monkeypatch, tmp_path):
  for var in PATH_ENV:
    monkeypatch.setenv(var, str(tmp_path / var.lower()))
  c = load(name)
  assert flat_keys(c) == flat_keys(base_config()), "configs may only set fields of the schema"
  train.validate_config(c)
  paths = {"model.hf_dir": c.model.hf_dir, "data.train_path": c.data.train_path,
           "data.dev_path": c.data.dev_path, "data.beir_dir": c.data.beir_dir,
           "data.hard_negatives_json": c.data.hard_negatives_json,
           "data.tokenizer_dir": c.data.tokenizer_dir}
  for key, value in paths.items():  # every path a config sets comes from the environment
    assert not value or value.startswith(str(tmp_path)), f"{name}: {key}={value!r} is hard-coded"


@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_config_has_launch_docstring(name):
  module = importlib.import_module(f"configs.{name}")
  assert module.__doc__ and FILLED_BY.get(name, "python -m bpr_jax.main") in module.__doc__
  if name in FILLED_BY:
    assert flat_keys(module.get_config()) == flat_keys(base_config()), "configs may only set fields of the schema"



def test_scifact_paths_come_from_env(monkeypatch, tmp_path):
  monkeypatch.setenv("BPR_SHARED_DIR", str(tmp_path / "sh"))
  monkeypatch.setenv("BPR_SCIFACT_HARD_NEGATIVES", str(tmp_path / "hn.json"))
  c = load("scifact")
  assert c.model.hf_dir == str(tmp_path / "sh" / "models" / "all-MiniLM-L6-v2")
  assert c.data.beir_dir == str(tmp_path / "sh" / "data" / "scifact")
  assert c.data.hard_negatives_json == str(tmp_path / "hn.json")
  assert (c.model.init, c.model.pooling, c.data.source) == ("hf", "mean", "beir")


def test_scifact_defaults_without_env(monkeypatch):
  monkeypatch.delenv("BPR_SHARED_DIR", raising=False)
  monkeypatch.delenv("BPR_SCIFACT_HARD_NEGATIVES", raising=False)
  monkeypatch.delenv("BPR_WORKDIR", raising=False)
  c = load("scifact")
  shared = REPO.parent / "shared"
  assert pathlib.Path(c.model.hf_dir) == shared / "models" / "all-MiniLM-L6-v2"
  assert pathlib.Path(c.data.beir_dir) == shared / "data" / "scifact"
  default = load("scifact").data.hard_negatives_json
  monkeypatch.setenv("BPR_WORKDIR", "/somewhere/else")
  assert load("scifact").data.hard_negatives_json == default  # independent of $BPR_WORKDIR
  assert default.endswith(os.path.join("bpr-scifact", "hard_negatives_train.json"))


def test_scifact_docstring_has_every_command():
  doc = importlib.import_module("configs.scifact").__doc__
  for command in ("bpr_jax.mine_negatives", "bpr_jax.main", "bpr_jax.export", "bpr_jax.encode",
                  "bpr_jax.index", "bpr_jax.evaluate"):
    assert f"python -m {command}" in doc


def test_scifact_against_shared_data(shared, monkeypatch):
  """With the real shared folder the model and data paths exist and the lengths fit MiniLM."""
  monkeypatch.setenv("BPR_SHARED_DIR", str(shared))
  c = load("scifact")
  train.validate_config(c)
  assert (pathlib.Path(c.data.beir_dir) / "corpus.jsonl").is_file()
  assert (pathlib.Path(c.data.beir_dir) / "qrels" / "train.tsv").is_file()
  bert = train.encoder_configs(c, None)
  assert bert.hidden_size == 384 and bert.num_hidden_layers == 6
  assert max(c.data.question_max_length, c.data.passage_max_length) <= bert.max_position_embeddings
  assert bert.hidden_dropout_prob == c.model.dropout


def test_tiny_validates_without_env(monkeypatch):
  for var in PATH_ENV:
    monkeypatch.delenv(var, raising=False)
  train.validate_config(load("tiny"))


def test_validate_rejects_bad_values():
  c = load("tiny")
  c.model.pooling = "max"
  with pytest.raises(ValueError, match="pooling"):
    train.validate_config(c)


@pytest.mark.parametrize("recipe", ["bpr16", "bpr48", "bpr96", "dpr"])
def test_scifact_named_recipes_validate(recipe, monkeypatch, tmp_path):
  monkeypatch.setenv("BPR_SHARED_DIR", str(tmp_path / "sh"))
  module = importlib.import_module("configs.scifact")
  c = module.get_config(recipe)
  assert flat_keys(c) == flat_keys(base_config())
  train.validate_config(c)
  expected = {"bpr16": ("bpr", 128), "bpr48": ("bpr", 0), "bpr96": ("bpr", 768), "dpr": ("dpr", 0)}[recipe]
  assert (c.mode, c.model.code_bits) == expected
  if recipe != "dpr":
    assert c.loss.relaxation == "ste"  # every dev-chosen BPR recipe trains with STE
  assert c.model.attention_dropout == 0.0 and c.num_train_steps == 400


def test_scifact_default_recipe_is_nested_and_unknown_is_refused(monkeypatch, tmp_path):
  """The default is the recipe chosen on dev (at every code size: the nested model)."""
  monkeypatch.setenv("BPR_SHARED_DIR", str(tmp_path / "sh"))
  module = importlib.import_module("configs.scifact")
  assert module.get_config().to_dict() == module.get_config("nested").to_dict()
  with pytest.raises(ValueError, match="unknown recipe 'bpr47'.*bpr16"):
    module.get_config("bpr47")


def test_scifact_recipe_through_the_config_flag(monkeypatch, tmp_path):
  """`--config=configs/scifact.py:bpr96` reaches get_config('bpr96') through ml_collections."""
  from absl import flags
  from ml_collections import config_flags
  monkeypatch.setenv("BPR_SHARED_DIR", str(tmp_path / "sh"))
  fv = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "", flag_values=fv)
  fv([ "prog", f"--config={REPO / 'configs' / 'scifact.py'}:bpr96"])
  assert fv.config.model.code_bits == 768


@pytest.mark.parametrize("recipe", ["free48", "label48", "nested"])
def test_scifact_teacher_and_nested_recipes(recipe, monkeypatch, tmp_path):
  """The issue-24 recipes take the teacher and its mined data from the environment, never the code."""
  monkeypatch.setenv("BPR_SHARED_DIR", str(tmp_path / "sh"))
  monkeypatch.setenv("BPR_SCIFACT_TEACHER", str(tmp_path / "teacher"))
  monkeypatch.setenv("BPR_SCIFACT_TEACHER_NEGATIVES", str(tmp_path / "mined.json"))
  c = importlib.import_module("configs.scifact").get_config(recipe)
  assert flat_keys(c) == flat_keys(base_config())
  if recipe == "nested":
    assert (c.model.code_bits, c.loss.nested_bits, c.loss.teacher) == (768, "128,384,768", "")
    train.validate_config(c)
  else:
    assert c.loss.teacher == str(tmp_path / "teacher") and c.loss.distill_weight == 1.0
  if recipe == "free48":
    assert (c.model.hf_dir, c.data.train_path, c.loss.label_weight) == (
        str(tmp_path / "teacher"), str(tmp_path / "mined.json"), 0.0)
