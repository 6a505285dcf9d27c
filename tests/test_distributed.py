"""When a command treats its launch as multi-process (and calls jax.distributed.initialize)."""
import pytest

from bpr_jax import distributed


@pytest.mark.parametrize("env,expected", [
    ({}, False),
    ({"BPR_COORDINATOR_ADDRESS": "10.0.0.1:1234", "BPR_NUM_PROCESSES": "2", "BPR_PROCESS_ID": "0"}, True),
    ({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "8"}, True),
    ({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "1"}, False),
    ({"TPU_WORKER_HOSTNAMES": "w0,w1,w2,w3"}, True),
    ({"TPU_WORKER_HOSTNAMES": "w0"}, False),
])
def test_multiprocess_launch_detection(env, expected):
  assert distributed._is_multiprocess_launch(env) is expected


def _record_initialize(monkeypatch):
  """Replaces jax.distributed.initialize with a recorder; returns the list of calls' kwargs."""
  import jax
  calls = []
  monkeypatch.setattr(jax.distributed, "initialize", lambda *a, **kw: calls.append((a, kw)))
  return calls


@pytest.mark.parametrize("env", [{}, {"SLURM_JOB_ID": "7", "SLURM_NTASKS": "1"}, {"TPU_WORKER_HOSTNAMES": "w0"}])
def test_single_process_is_a_noop(monkeypatch, env):
  import jax
  calls = _record_initialize(monkeypatch)
  distributed.initialize_distributed(env)
  assert calls == []  # jax.distributed.initialize was never called
  assert jax.process_count() == 1 and jax.process_index() == 0


def test_multiprocess_launch_calls_initialize_with_the_env(monkeypatch):
  """The same recorder sees the call when the launch is multi-process (so the no-op test can fail)."""
  calls = _record_initialize(monkeypatch)
  distributed.initialize_distributed(
      {"BPR_COORDINATOR_ADDRESS": "10.0.0.1:1234", "BPR_NUM_PROCESSES": "2", "BPR_PROCESS_ID": "1"})
  assert calls == [((), {"coordinator_address": "10.0.0.1:1234", "num_processes": 2, "process_id": 1})]
  calls.clear()
  distributed.initialize_distributed({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "8"})
  assert calls == [((), {})]
