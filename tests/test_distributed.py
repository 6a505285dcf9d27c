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


def test_single_process_is_a_noop():
  distributed.initialize_distributed({})  # must not touch jax.distributed
