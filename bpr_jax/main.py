"""Entry point: `python -m bpr_jax.main --config=configs/nq.py --workdir=DIR`.

Multi-process launches call `jax.distributed.initialize()` first: with explicit
BPR_COORDINATOR_ADDRESS / BPR_NUM_PROCESSES / BPR_PROCESS_ID (launch/multinode.sh), or with
JAX's own detection under Slurm and on TPU pods.
"""
from __future__ import annotations

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from bpr_jax import console

FLAGS = flags.FLAGS
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and exports.")
config_flags.DEFINE_config_file("config", None, "Training configuration (configs/*.py).", lock_config=True)
flags.mark_flags_as_required(["config", "workdir"])


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


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
  console.quiet_libraries()
  initialize_distributed()
  from bpr_jax import train  # after distributed init: importing jax work must follow it
  try:
    result = train.train_and_evaluate(FLAGS.config, _WORKDIR.value)
  except (ValueError, FileNotFoundError, train.TrainingError) as error:
    logging.error("%s", error)
    print(f"error: {error}", file=sys.stderr)
    sys.exit(1)
  logging.info("done: %s", result)


if __name__ == "__main__":
  app.run(main)
