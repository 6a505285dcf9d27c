"""The real train loop end to end on a shrunk config (as flax examples/lm1b/train_test.py)."""
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from bpr_jax import checkpoints, run_config, train
from bpr_jax.data.examples import DataError
from configs import tiny

REPO = pathlib.Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures"


def shrunk_config(**overrides):
  c = tiny.get_config()
  c.num_train_steps = 10
  c.batch_size = 8
  c.log_every = 2
  c.eval_every = 5
  c.eval_max_examples = 16
  c.checkpoint_every = 5
  c.async_checkpoints = False
  c.data.question_max_length = 12
  c.data.passage_max_length = 24
  for key, value in overrides.items():
    node = c
    *path, last = key.split(".")
    for part in path:
      node = node[part]
    node[last] = value
  return c


def run_main(workdir, *flags, timeout=300, check=True):
  cmd = [sys.executable, "-m", "bpr_jax.main", "--config=configs/tiny.py", f"--workdir={workdir}",
         "--config.num_train_steps=10", "--config.batch_size=8", "--config.log_every=1",
         "--config.eval_every=0", "--config.async_checkpoints=False",
         "--config.data.question_max_length=12", "--config.data.passage_max_length=24", *flags]
  proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout, env=os.environ.copy())
  if check and proc.returncode != 0:
    raise AssertionError(f"exit {proc.returncode}:\n{proc.stderr[-3000:]}")
  return proc


# Fault injection for the kill test: a test-only hook in train.checkpoint_hooks, registered by
# this launcher (the product has no crash switch). argv: workdir, crash step, config overrides.
CRASH_LAUNCHER = """
import os, signal, sys
from absl import app
from bpr_jax import main, train
crash_after = int(os.environ["BPR_TEST_CRASH_AFTER_STEP"])

def crash(step, ckpt):
  if step >= crash_after:
    ckpt.wait()
    os.kill(os.getpid(), signal.SIGKILL)

train.checkpoint_hooks.append(crash)
app.run(main.main)
"""


def run_main_crashing_after(workdir, step, *flags, timeout=300):
  cmd = [sys.executable, "-c", CRASH_LAUNCHER, "--config=configs/tiny.py", f"--workdir={workdir}",
         "--config.num_train_steps=10", "--config.batch_size=8", "--config.log_every=1",
         "--config.eval_every=0", "--config.async_checkpoints=False",
         "--config.data.question_max_length=12", "--config.data.passage_max_length=24", *flags]
  env = dict(os.environ, BPR_TEST_CRASH_AFTER_STEP=str(step))
  return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env)


def snapshot(workdir):
  """{relative path: (size, mtime_ns, sha1)} of every file under workdir."""
  import hashlib
  out = {}
  for p in sorted(pathlib.Path(workdir).rglob("*")):
    if p.is_file():
      st = p.stat()
      out[str(p.relative_to(workdir))] = (st.st_size, st.st_mtime_ns, hashlib.sha1(p.read_bytes()).hexdigest())
  return out


def final_params(workdir):
  """Params of the latest checkpoint, as numpy."""
  q, p, _, _ = checkpoints.restore_encoders(str(workdir))
  from flax import nnx
  return jax.tree.map(np.asarray, {"q": nnx.split(q)[1].to_pure_dict(), "p": nnx.split(p)[1].to_pure_dict()})


def read_metrics(workdir):
  with open(pathlib.Path(workdir) / "metrics.jsonl", encoding="utf-8") as f:
    return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("uninterrupted")
  result = train.train_and_evaluate(shrunk_config(), str(workdir))
  return workdir, result


def test_end_to_end_writes_metrics_checkpoints_and_tensorboard(uninterrupted):
  workdir, result = uninterrupted
  assert result["step"] == 10
  assert np.isfinite(result["loss"])
  rows = read_metrics(workdir)
  train_rows = [r for r in rows if "loss" in r]
  # every log_every=2 steps, and at each checkpoint (its metrics are checked for NaN first)
  assert [r["step"] for r in train_rows] == [2, 4, 5, 6, 8, 10]
  for key in ("loss", "loss_cand", "loss_rerank", "beta", "lr", "grad_norm", "examples_per_s"):
    assert all(key in r for r in train_rows), key
  # beta = sqrt(gamma * step + 1) with gamma = 1 in the tiny config, averaged over steps 8, 9
  # (the step counter is the number of finished optimizer steps when the loss is computed)
  assert train_rows[-1]["beta"] == pytest.approx(np.mean([np.sqrt(8 + 1.0), np.sqrt(9 + 1.0)]), rel=1e-5)
  dev_rows = [r for r in rows if "dev_avg_rank" in r]
  assert [r["step"] for r in dev_rows] == [5, 10]
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(workdir / "tensorboard"))
  assert sorted(checkpoints.Checkpointer(str(workdir)).all_steps()) == [5, 10]
  assert (workdir / "config.json").is_file() and (workdir / "tokenizer").is_dir()


def test_rerun_of_finished_run_is_a_noop(uninterrupted):
  """Bookkeeping settings may change on resume; config.json keeps the run's own settings."""
  workdir, _ = uninterrupted
  before = read_metrics(workdir)
  config_before = (workdir / "config.json").read_bytes()
  result = train.train_and_evaluate(shrunk_config(log_every=3, checkpoint_every=4, eval_every=0,
                                                  keep_checkpoints=5), str(workdir))
  assert result["step"] == 10
  assert read_metrics(workdir) == before
  assert (workdir / "config.json").read_bytes() == config_before


def test_resume_after_kill_matches_uninterrupted_run(uninterrupted, tmp_path):
  workdir, result = uninterrupted
  killed = run_main_crashing_after(tmp_path, 5, "--config.checkpoint_every=5")
  assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
  assert checkpoints.Checkpointer(str(tmp_path)).latest_step() == 5
  resumed = train.train_and_evaluate(shrunk_config(), str(tmp_path))
  assert resumed["step"] == 10
  assert resumed["loss"] == pytest.approx(result["loss"], rel=1e-5)
  want, got = final_params(workdir), final_params(tmp_path)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_sigterm_saves_and_exits_cleanly(tmp_path):
  cmd = [sys.executable, "-m", "bpr_jax.main", "--config=configs/tiny.py", f"--workdir={tmp_path}",
         "--config.num_train_steps=100000", "--config.batch_size=8", "--config.log_every=1",
         "--config.eval_every=0", "--config.checkpoint_every=0",
         "--config.data.question_max_length=12", "--config.data.passage_max_length=24"]
  proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  lines = []
  try:
    deadline = time.time() + 240
    for line in proc.stdout:
      lines.append(line)
      if " step 3/100000 " in line:
        proc.send_signal(signal.SIGTERM)
        break
      assert time.time() < deadline, "".join(lines[-20:])
    out, _ = proc.communicate(timeout=120)
    lines.append(out)
  finally:
    if proc.poll() is None:
      proc.kill()
  log = "".join(lines)
  assert proc.returncode == 0, log[-3000:]
  assert "preempted at step" in log
  step = checkpoints.Checkpointer(str(tmp_path)).latest_step()
  assert step is not None and 3 <= step < 100000


def test_nan_loss_stops_with_a_clear_message(tmp_path, monkeypatch):
  original = train.losses.bpr_loss

  def nan_loss(*args, **kwargs):
    out = original(*args, **kwargs)
    return out._replace(loss=out.loss * float("nan"))
  monkeypatch.setattr(train.losses, "bpr_loss", nan_loss)
  with pytest.raises(train.TrainingError, match="NaN"):
    train.train_and_evaluate(shrunk_config(), str(tmp_path))
  assert checkpoints.Checkpointer(str(tmp_path)).latest_step() is None


def test_resume_with_other_data_is_refused(uninterrupted):
  workdir, _ = uninterrupted
  with pytest.raises(train.TrainingError, match="seed: 42 -> 7"):
    train.train_and_evaluate(shrunk_config(seed=7), str(workdir))


@pytest.mark.parametrize("overrides,named", [
    ({"model.pooling": "cls"}, ["model.pooling: 'mean' -> 'cls'"]),
    ({"data.question_max_length": 10, "optim.learning_rate": 1e-4, "num_train_steps": 20},
     ["data.question_max_length: 12 -> 10", "optim.learning_rate: 0.001 -> 0.0001",
      "num_train_steps: 10 -> 20"]),
    ({"mode": "dpr", "loss.gamma": 0.5}, ["mode: 'bpr' -> 'dpr'", "loss.gamma:"]),
])
def test_resume_with_other_settings_is_refused_before_writing(uninterrupted, overrides, named):
  workdir, _ = uninterrupted
  before = snapshot(workdir)
  with pytest.raises(train.TrainingError, match="other settings") as err:
    train.train_and_evaluate(shrunk_config(**overrides), str(workdir))
  for text in named:
    assert text in str(err.value), str(err.value)
  assert snapshot(workdir) == before  # nothing in the workdir was written
  assert json.loads((workdir / "config.json").read_text())["model"]["pooling"] == "mean"


def test_checkpoint_hooks_are_empty_in_the_product():
  assert train.checkpoint_hooks == []
  assert "testing_crash_after_step" not in tiny.get_config()


@pytest.mark.parametrize("key,value,match", [
    ("mode", "bpx", "mode must be one of"),
    ("loss.cand_reduction", "avg", "cand_reduction"),
    ("model.pooling", "max", "pooling"),
    ("batch_size", 12, "divisible by the 8 devices"),
    ("model.dtype", "float16", "dtype"),
])
def test_bad_config_values(tmp_path, key, value, match):
  with pytest.raises(ValueError, match=match):
    train.train_and_evaluate(shrunk_config(**{key: value}), str(tmp_path))


def test_config_typo_on_command_line_is_an_error(tmp_path):
  proc = run_main(tmp_path, "--config.batch_sise=8", check=False)
  assert proc.returncode != 0
  assert "batch_sise" in proc.stderr


def test_missing_model_dir_fails_before_training(tmp_path):
  c = shrunk_config(**{"model.init": "hf", "model.hf_dir": str(tmp_path / "nope"),
                       "data.source": "dpr_json", "data.train_path": str(FIXTURES / "dpr_small.json"),
                       "data.tokenizer_dir": ""})
  with pytest.raises((FileNotFoundError, OSError, ValueError), match="nope"):
    train.train_and_evaluate(c, str(tmp_path / "w"))
  assert not (tmp_path / "w" / "checkpoints").exists() or not os.listdir(tmp_path / "w" / "checkpoints")


def test_malformed_record_fails_before_training_naming_file_and_record(tmp_path, minilm_dir):
  c = shrunk_config(**{"data.source": "dpr_json", "data.train_path": str(FIXTURES / "dpr_invalid.json"),
                       "data.tokenizer_dir": str(minilm_dir), "model.bert.vocab_size": 0})
  with pytest.raises(DataError, match="dpr_invalid.json:record"):
    train.train_and_evaluate(c, str(tmp_path))
  assert not (tmp_path / "metrics.jsonl").exists()


def test_trains_from_a_tfds_array_record_source(tmp_path):
  """data.source='tfds': the dpr_retriever builder (array_record, no TensorFlow) feeds training."""
  import shutil

  import tensorflow_datasets as tfds

  import bpr_jax.data.tfds  # noqa: F401  (registers the builders)
  from bpr_jax.data.tiny import make_tiny_dataset
  paths = make_tiny_dataset(tmp_path / "tiny", num_train=64, num_dev=16, num_passages=80)
  manual = tmp_path / "manual"
  manual.mkdir()
  shutil.copy(paths["train"], manual / "biencoder-nq-train.json")
  shutil.copy(paths["dev"], manual / "biencoder-nq-dev.json")
  builder = tfds.builder("dpr_retriever/nq", data_dir=str(tmp_path / "tfds"))
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(manual)))
  c = shrunk_config(**{"data.source": "tfds", "data.tfds_name": "dpr_retriever/nq",
                       "data.tfds_data_dir": str(tmp_path / "tfds"), "data.dev_split": "dev",
                       "data.tokenizer_dir": paths["vocab_dir"], "num_train_steps": 4, "eval_every": 4,
                       "checkpoint_every": 4})
  result = train.train_and_evaluate(c, str(tmp_path / "work"))
  assert result["step"] == 4 and np.isfinite(result["loss"]) and "dev_avg_rank" in result


def test_every_config_field_is_classified_for_resume():
  """A new config field must be declared as changing training (refused on resume) or not."""
  from configs.common import base_config

  def leaves(d, prefix=""):
    for k, v in d.items():
      if isinstance(v, dict) and f"{prefix}{k}" != "model.bert":
        yield from leaves(v, f"{prefix}{k}.")
      else:
        yield f"{prefix}{k}"
  fields = set(leaves(base_config().to_dict()))
  classified = set(run_config.RESUME_FIELDS) | set(run_config.RESUME_FREE)
  assert fields - classified == set(), "classify these fields in run_config.RESUME_FIELDS or RESUME_FREE"
  assert not set(run_config.RESUME_FIELDS) & set(run_config.RESUME_FREE)
