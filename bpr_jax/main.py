"""Trains a BPR (or DPR) retriever from a config file into a workdir.

Usage:
  python -m bpr_jax.main --config=CONFIG --workdir=DIR [--config.FIELD=VALUE ...]

  python -m bpr_jax.main --config=configs/tiny.py --workdir=/tmp/bpr-tiny
  python -m bpr_jax.main --config=configs/nq.py --workdir=runs/nq --config.batch_size=64
  python -m bpr_jax.main --config=configs/scifact.py:bpr48 --show_config

CONFIG is an ml_collections file (configs/*.py); each --config.FIELD=VALUE overrides one field
(nested fields as --config.optim.learning_rate=1e-4), and a field that does not exist is an error.
DIR receives checkpoints/, metrics.jsonl, tensorboard/, config.json, bert_config.json and
tokenizer/. Running again with the same DIR resumes from its latest checkpoint; other settings
than the checkpoint's are refused. A run that fails before its first checkpoint leaves no DIR
behind (nor anything in a DIR that was empty). --show_config prints every field of the config
(value, type, allowed values, resume class, description; the schema is bpr_jax/config_schema.py)
and exits without training; it needs no DIR. When a run finishes:

  python -m bpr_jax.export --workdir=DIR --output=EXPORT

Multi-process launches (launch/README.md) call jax.distributed.initialize() first: with
BPR_COORDINATOR_ADDRESS / BPR_NUM_PROCESSES / BPR_PROCESS_ID (launch/multinode.sh), or with
JAX's own detection under Slurm and on TPU pods.
"""
from __future__ import annotations

import os
import shutil
import sys
from typing import Sequence

from absl import flags
from absl import logging as absl_logging
from ml_collections import config_flags

from bpr_jax import cli, config_schema, console, distributed
from bpr_jax.config_errors import one_line_config_errors

FLAGS = flags.FLAGS
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and exports "
                               "(resumed when it holds a checkpoint).")
_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Training configuration (configs/*.py); override a field with "
    "--config.FIELD=VALUE.", lock_config=True)
_SHOW_CONFIG = flags.DEFINE_boolean(
    "show_config", False, "Print every config field (value, type, allowed values, resume class, "
    "description) and exit without training; --workdir is then not needed.")
flags.mark_flags_as_required(["config"])
flags.register_multi_flags_validator(
    ["workdir", "show_config"], lambda values: values["show_config"] or values["workdir"] is not None,
    message="--workdir is required (unless --show_config)")

one_line_config_errors(_CONFIG)


# ----------------------------------------------------------------------------- no debris


def _state_before(workdir: str) -> str:
  """'absent', 'empty' or 'used': what this run found at `workdir` ('used' for URLs)."""
  if "://" in workdir:
    return "used"
  if not os.path.lexists(workdir):
    return "absent"
  if os.path.isdir(workdir) and not os.path.islink(workdir) and not os.listdir(workdir):
    return "empty"
  return "used"


def remove_debris(workdir: str, before: str) -> bool:
  """After a failed run: removes what the run wrote to a `workdir` that was absent (the folder)
  or empty (its contents) when the run started, unless it now holds a checkpoint (something to
  resume) or other processes share the run. Returns whether anything was removed."""
  if before not in ("absent", "empty") or not os.path.isdir(workdir) or os.path.islink(workdir):
    return False
  jax = sys.modules.get("jax")
  if jax is not None and jax.process_count() > 1:
    return False
  from bpr_jax import checkpoints  # pylint: disable=import-outside-toplevel
  if checkpoints.latest_step_on_disk(workdir) is not None:
    return False
  if before == "absent":
    shutil.rmtree(workdir, ignore_errors=True)
  else:
    for name in os.listdir(workdir):
      path = os.path.join(workdir, name)
      if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
      else:
        try:
          os.remove(path)
        except OSError:
          pass
  return True


# ----------------------------------------------------------------------------- end of the run


def summary(result: dict, workdir: str) -> str:
  """What the finished (or stopped) run did, and the next command."""
  step, total = int(result.get("step", 0)), result.get("total_steps")
  ckpt_dir = os.path.join(workdir, "checkpoints")
  if "loss" not in result:
    head = f"already trained: step {step}" + (f" of {total}" if total else "") + f", checkpoints in {ckpt_dir}"
  else:
    head = f"trained to step {step}" + (f" of {total}" if total else "")
    head += f": final loss {result['loss']:.4f}"
    if "dev_avg_rank" in result:
      head += f", dev average rank {result['dev_avg_rank']:.3f}"
    head += f"; checkpoints in {ckpt_dir}"
  if total and step < total:
    return f"{head}\nstopped early; to resume, run the same command again"
  return f"{head}\nnext: python -m bpr_jax.export --workdir={workdir} --output={os.path.join(workdir, 'export')}"


def show_config(config, source: str) -> str:
  """The text of --show_config: a header naming `source`, every field of `config` (see
  config_schema.describe), then each value outside its field's allowed ones (training refuses them)."""
  text = (f"config {source}: {len(config_schema.FIELDS)} fields; resume class 'resume': must match the "
          f"checkpoint's to resume it, 'free': may change on resume\n\n{config_schema.describe(config)}")
  problems = config_schema.problems(config)
  if problems:
    text += "\n\n" + "\n".join(f"not allowed: {p}" for p in problems)
  return text


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise cli.CommandError(f"unexpected arguments: {' '.join(argv[1:])}")
  if _SHOW_CONFIG.value:
    print(show_config(FLAGS.config, FLAGS["config"].config_filename), flush=True)
    return
  # Token ids are made once before the first step (data/token_cache.py) by the fast tokenizer's
  # batch call, which uses every core when allowed; no step tokenises, so nothing races it.
  os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
  console.quiet_libraries()
  # Training reports its progress at INFO (absl), which cli.run quiets for other commands.
  absl_logging.set_verbosity(FLAGS.verbosity)
  workdir = _WORKDIR.value
  before = _state_before(workdir)
  try:
    distributed.initialize_distributed()
    from bpr_jax import train  # pylint: disable=import-outside-toplevel  (after distributed init)
    try:
      result = train.train_and_evaluate(FLAGS.config, workdir)
    except train.TrainingError as error:
      raise cli.CommandError(str(error)) from error
  except BaseException:
    remove_debris(workdir, before)
    raise
  import jax  # pylint: disable=import-outside-toplevel
  if jax.process_index() == 0:
    print(summary(result, workdir), flush=True)


if __name__ == "__main__":
  cli.run(main)
