"""Multi-process start-up shared by every command (training, encoding).

`jax.distributed.initialize()` runs when this process is one of several: with explicit
BPR_COORDINATOR_ADDRESS / BPR_NUM_PROCESSES / BPR_PROCESS_ID (launch/multinode.sh), or with
JAX's own detection under Slurm and on TPU pods. It must run before any other JAX call.
"""
from __future__ import annotations

import os

from absl import logging


def _is_multiprocess_launch(env=os.environ) -> bool:
  if env.get("BPR_COORDINATOR_ADDRESS"):
    return True
  if int(env.get("SLURM_NTASKS", "1")) > 1 and "SLURM_JOB_ID" in env:
    return True
  if env.get("TPU_WORKER_HOSTNAMES", "").count(",") >= 1 or env.get("MEGASCALE_COORDINATOR_ADDRESS"):
    return True
  return int(env.get("JAX_NUM_PROCESSES", env.get("BPR_NUM_PROCESSES", "1"))) > 1


def initialize_distributed(env=os.environ) -> None:
  """jax.distributed.initialize() when this process is one of several (no-op otherwise)."""
  import jax
  if not _is_multiprocess_launch(env):
    return
  if env.get("BPR_COORDINATOR_ADDRESS"):
    jax.distributed.initialize(coordinator_address=env["BPR_COORDINATOR_ADDRESS"],
                               num_processes=int(env["BPR_NUM_PROCESSES"]),
                               process_id=int(env["BPR_PROCESS_ID"]))
  else:
    jax.distributed.initialize()
  logging.info("jax.distributed: process %d of %d", jax.process_index(), jax.process_count())
