"""Preemption without a per-step collective: SIGTERM to one of two processes stops both.

Two `python -m bpr_jax.main` processes (4 fake CPU devices each, one shared workdir) train
towards 100000 steps; process 1 alone gets SIGTERM. Both must save the same checkpoint, log
the same preemption step and exit 0 (JAX's preemption service carries the notice from the
signalled process to the other one).
"""
import pathlib
import re
import signal
import subprocess
import time

import pytest

import test_multiprocess as mp
from bpr_jax import checkpoints, preemption

FLAGS = tuple(f for f in mp.TRAIN_FLAGS if not f.startswith(("--config.num_train_steps", "--config.checkpoint_every")))
DEADLINE_S = 240


def _wait_for(path: pathlib.Path, pattern: str, procs, deadline: float) -> None:
  while time.monotonic() < deadline:
    if path.exists() and re.search(pattern, path.read_text(encoding="utf-8", errors="replace")):
      return
    if any(p.poll() is not None for p in procs):
      return
    time.sleep(0.2)


@pytest.mark.parametrize("service", [True, False], ids=["preemption_service", "flag_at_log_steps"])
def test_sigterm_to_one_of_two_processes_checkpoints_on_both(tmp_path, service):
  workdir, logs = tmp_path / "multi", tmp_path / "logs"
  logs.mkdir()
  port = mp.free_port()
  procs, files = [], []
  try:
    for i in range(2):
      log = open(logs / f"process{i}.log", "w", encoding="utf-8")  # pylint: disable=consider-using-with
      files.append(log)
      argv = mp.python("bpr_jax.main", f"--workdir={workdir}", *FLAGS, "--config.num_train_steps=100000",
                       "--config.checkpoint_every=0")
      env = mp.child_env(4, i, 2, port)
      env["JAX_ENABLE_PREEMPTION_SERVICE"] = "true" if service else "false"
      procs.append(subprocess.Popen(argv, cwd=mp.REPO, env=env, stdout=log,
                                    stderr=subprocess.STDOUT))
    deadline = time.monotonic() + DEADLINE_S
    _wait_for(logs / "process0.log", r" step 3/100000 ", procs, deadline)
    assert all(p.poll() is None for p in procs), (logs / "process0.log").read_text()[-3000:]
    procs[1].send_signal(signal.SIGTERM)
    for p in procs:
      p.wait(timeout=max(deadline - time.monotonic(), 1))
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
    for f in files:
      f.close()
  texts = [(logs / f"process{i}.log").read_text(encoding="utf-8", errors="replace") for i in range(2)]
  tails = "\n".join(f"----- process{i} (exit {p.returncode}) -----\n{t[-3000:]}"
                    for i, (p, t) in enumerate(zip(procs, texts)))
  assert [p.returncode for p in procs] == [0, 0], tails
  stops = [re.findall(r"preempted at step (\d+)", t) for t in texts]
  assert all(len(s) == 1 for s in stops), tails
  step = int(stops[0][0])
  assert int(stops[1][0]) == step >= 3, tails
  assert checkpoints.Checkpointer(str(workdir)).latest_step() == step
  assert all(("preemption notice: all processes stop" in t) == service for t in texts), tails


def test_preemption_single_process_reads_local_flag(monkeypatch):
  """One process: the SIGTERM flag is read every step, with no collective."""
  monkeypatch.setattr(preemption.parallel, "any_process", lambda flag: pytest.fail("collective called"))
  with preemption.Preemption(0) as p:
    assert not p.should_stop(1, sync=True)
    signal.raise_signal(signal.SIGTERM)
    assert p.should_stop(2, sync=False)
  assert signal.getsignal(signal.SIGTERM) is not p._handle  # pylint: disable=protected-access
