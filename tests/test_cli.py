"""Every `python -m bpr_jax.X` command: `--help` exits 0 with clean usage text and its flags; a bad
or missing flag is one `error:` line on stderr; start-up noise of third-party libraries is gone;
`bpr_jax.main` names a mistyped config field or file in one line and leaves no workdir behind."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import REPO_ROOT

NOISE = ("Size (", "PyTorch was not found", "Unable to initialize backend", "Could not load library")

# module -> flags its --help must list
COMMANDS = {
    "bpr_jax.main": ["--config", "--workdir"],
    "bpr_jax.export": ["--workdir", "--output"],
    "bpr_jax.encode": ["--model", "--passages", "--output"],
    "bpr_jax.index": ["--codes", "--kind", "--output"],
    "bpr_jax.evaluate": ["--model", "--index", "--output"],
    "bpr_jax.serve": ["--model", "--index", "--port"],
    "bpr_jax.mine_negatives": ["--output", "--num_hard_negatives"],
    "bpr_jax.pyserini": ["--index", "--model", "--output", "--overwrite"],
    "bpr_jax.sentence_transformers_export": ["--model", "--output", "--overwrite"],
}


def run(module: str, *args: str, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO_ROOT, capture_output=True,
                        text=True, timeout=timeout, env=env if env is not None else os.environ.copy())


def assert_one_error_line(proc: subprocess.CompletedProcess) -> str:
  """The run failed with exactly one stderr line `error: ...` (and no traceback); returns it."""
  lines = [line for line in proc.stderr.splitlines() if line.strip()]
  assert proc.returncode != 0, proc.stdout[-2000:]
  assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
  assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-3000:]
  return lines[0]


def assert_quiet(text: str) -> None:
  for noise in NOISE:
    assert noise not in text, f"{noise!r} in:\n{text[-3000:]}"


@pytest.mark.parametrize("module", sorted(COMMANDS))
def test_help_exits_0_with_usage_and_flags(module):
  proc = run(module, "--help")
  assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
  assert f"python -m {module}" in proc.stdout  # the usage line
  assert "flags:" in proc.stdout
  for flag in COMMANDS[module]:
    assert flag in proc.stdout, flag
  assert_quiet(proc.stdout + proc.stderr)


@pytest.mark.parametrize("module", sorted(COMMANDS))
def test_unknown_flag_is_one_error_line(module):
  line = assert_one_error_line(run(module, "--no_such_flag=1"))
  assert "no_such_flag" in line


@pytest.mark.parametrize("module", sorted(COMMANDS))
def test_missing_required_flags_is_one_error_line(module):
  assert_one_error_line(run(module))


def test_main_names_the_closest_config_field(tmp_path):
  proc = run("bpr_jax.main", "--config=configs/tiny.py", "--config.batch_sise=32", f"--workdir={tmp_path / 'w'}")
  line = assert_one_error_line(proc)
  assert line == "error: --config.batch_sise: no such field; did you mean batch_size?"
  proc = run("bpr_jax.main", "--config=configs/tiny.py", "--config.optim.learnin_rate=1e-4",
             f"--workdir={tmp_path / 'w'}")
  assert "did you mean optim.learning_rate?" in assert_one_error_line(proc)
  assert not (tmp_path / "w").exists()


def test_main_names_a_missing_config_file(tmp_path):
  proc = run("bpr_jax.main", "--config=configs/tny.py", f"--workdir={tmp_path / 'w'}")
  line = assert_one_error_line(proc)
  assert "configs/tny.py" in line and "configs/tiny.py" in line
  assert not (tmp_path / "w").exists()


def test_main_error_in_config_file_is_one_line(tmp_path):
  bad = tmp_path / "bad.py"
  bad.write_text("from configs.common import base_config\n\ndef get_config():\n  return undefined_name\n")
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]))
  line = assert_one_error_line(run("bpr_jax.main", f"--config={bad}", f"--workdir={tmp_path / 'w'}", env=env))
  assert "undefined_name" in line and f"{bad}:4" in line


def test_failed_main_leaves_no_workdir_and_no_noise(tmp_path):
  """The run gets past creating its workdir and fails on the data: no workdir is left behind,
  an empty one the user made stays empty, and JAX's backend probing prints nothing."""
  env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
  args = ["--config=configs/tiny.py", "--config.data.source=dpr_json",
          f"--config.data.train_path={tmp_path / 'missing.json'}"]
  proc = run("bpr_jax.main", *args, f"--workdir={tmp_path / 'w'}", env=env)
  assert proc.returncode == 2, proc.stderr[-3000:]
  errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
  assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
  assert proc.stderr.rstrip().splitlines()[-1] == errors[0]
  assert_quiet(proc.stdout + proc.stderr)
  assert not (tmp_path / "w").exists()
  (tmp_path / "empty").mkdir()
  proc = run("bpr_jax.main", *args, f"--workdir={tmp_path / 'empty'}")
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert list((tmp_path / "empty").iterdir()) == []


def test_remove_debris_keeps_a_workdir_with_a_checkpoint_or_other_files(tmp_path):
  from bpr_jax import main
  used = tmp_path / "used"
  used.mkdir()
  (used / "mine.txt").write_text("user data")
  assert main._state_before(str(used)) == "used"
  assert not main.remove_debris(str(used), "used") and (used / "mine.txt").exists()
  fresh = tmp_path / "fresh"
  assert main._state_before(str(fresh)) == "absent"
  (fresh / "checkpoints" / "3").mkdir(parents=True)
  (fresh / "checkpoints" / "3" / "_CHECKPOINT_METADATA").write_text("{}")
  (fresh / "config.json").write_text("{}")
  assert not main.remove_debris(str(fresh), "absent") and fresh.exists()  # a resumable run stays
  other = tmp_path / "other"
  (other / "tokenizer").mkdir(parents=True)
  (other / "config.json").write_text("{}")
  assert main.remove_debris(str(other), "absent") and not other.exists()
  assert main._state_before("gs://bucket/run") == "used"


def test_missing_field_message():
  from bpr_jax.config_errors import missing_field
  from configs.tiny import get_config
  config = get_config()
  assert missing_field(config, ["batch_size", "optim.learning_rate"]) is None
  assert missing_field(config, ["batch_sise"]) == "--config.batch_sise: no such field; did you mean batch_size?"
  assert "fields of loss:" in missing_field(config, ["loss.qqqqqqqq"])
  assert "is a value" in missing_field(config, ["seed.x"])


def test_end_of_run_summary_names_checkpoints_and_the_next_command():
  from bpr_jax import main
  text = main.summary({"step": 10, "total_steps": 10, "loss": 1.23456, "dev_avg_rank": 2.5}, "/w")
  assert "step 10 of 10" in text and "1.2346" in text and "/w/checkpoints" in text
  assert text.splitlines()[-1] == "next: python -m bpr_jax.export --workdir=/w --output=/w/export"
  stopped = main.summary({"step": 4, "total_steps": 10, "loss": 1.0}, "/w")
  assert "resume" in stopped and "bpr_jax.export" not in stopped
  assert "already trained" in main.summary({"step": 10, "total_steps": 10}, "/w")


def test_eta_leaves_out_the_first_interval():
  """The first logged interval holds compilation: the ETA is '?' there, then the rate since."""
  from bpr_jax import train
  eta = train._Eta()
  assert train._format_eta(eta.seconds_left(now=600.0, step=10, total=110)) == "?"  # 10 steps + compile
  assert eta.seconds_left(now=610.0, step=20, total=110) == pytest.approx(90.0)  # 1 s/step since
  assert eta.seconds_left(now=620.0, step=110, total=110) == 0.0
