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

from bpr_jax import console, distributed

FLAGS = flags.FLAGS
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and exports.")
config_flags.DEFINE_config_file("config", None, "Training configuration (configs/*.py).", lock_config=True)
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  # Token ids are made once before the first step (data/token_cache.py) by the fast tokenizer's
  # batch call, which uses every core when allowed; no step tokenises, so nothing races it.
  os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
  console.quiet_libraries()
  distributed.initialize_distributed()
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
