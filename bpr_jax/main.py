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

import difflib
import os
import re
import shutil
import sys
import traceback
from typing import Sequence

from absl import flags
from absl import logging as absl_logging
from ml_collections import config_flags

from bpr_jax import cli, config_schema, console, distributed

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


# ----------------------------------------------------------------------------- one-line config errors


def _overrides(argv: Sequence[str], name: str) -> list[str]:
  """The FIELD of each --NAME.FIELD[=VALUE] / --noNAME.FIELD in `argv`, in order."""
  pattern = re.compile(rf"^--?(?:no)?{re.escape(name)}\.([^=]+)")
  return [m.group(1) for m in map(pattern.match, argv) if m]


def missing_field(config, fields: Sequence[str], name: str = "config") -> str | None:
  """One line for the first of `fields` (dotted paths) that `config` lacks, naming the closest
  valid field; None when every field exists."""
  for field in fields:
    node, parts = config, field.split(".")
    for i, part in enumerate(parts):
      prefix = ".".join(parts[:i])
      keys = list(node.keys()) if hasattr(node, "keys") else None
      if keys is None:
        return f"--{name}.{field}: {prefix} is a value, not a group of fields"
      if part not in keys:
        close = difflib.get_close_matches(part, [str(k) for k in keys], n=1, cutoff=0.5)
        if close:
          hint = f"did you mean {prefix + '.' if prefix else ''}{close[0]}?"
        else:
          hint = f"fields{' of ' + prefix if prefix else ''}: {', '.join(sorted(map(str, keys)))}"
        return f"--{name}.{field}: no such field; {hint}"
      node = node[part]
  return None


def _missing_file(path: str) -> str | None:
  """One line when the config file `path` is missing, naming the closest file beside it."""
  if os.path.isfile(path):
    return None
  folder = os.path.dirname(path) or "."
  try:
    names = [n for n in os.listdir(folder) if n.endswith(".py") and not n.startswith("_")]
  except OSError:
    names = []
  close = difflib.get_close_matches(os.path.basename(path), names, n=1, cutoff=0.5)
  hint = f"; did you mean {os.path.join(os.path.dirname(path), close[0])}?" if close else ""
  return f"--config={path}: no such file{hint}"


def _config_file_line(error: BaseException, path: str) -> str:
  """The line of `path` (the config file) an exception came from, if any: ' (FILE:LINE)'."""
  frames = [f for f in traceback.extract_tb(error.__traceback__)
            if os.path.abspath(f.filename) == os.path.abspath(path)]
  if isinstance(error, SyntaxError) and error.lineno:
    return f" ({path}:{error.lineno})"
  return f" ({path}:{frames[-1].lineno})" if frames else ""


def _one_line_config_errors(holder: flags.FlagHolder) -> None:
  """Makes the config flag's parse fail with a flags.Error of one line (which `cli.run` prints
  as `error: ...`): a missing file (with the closest name), an error inside the file (with its
  line), an override of a field that does not exist (with the closest field)."""
  flag = FLAGS[holder.name]
  parse = flag.parse

  def checked_parse(argument):
    path = str(argument).split(":", 1)[0]
    missing = _missing_file(path)
    if missing:
      raise flags.IllegalFlagValueError(missing)
    try:
      parse(argument)
    except flags.IllegalFlagValueError as error:
      text = str(error)
      if "Error whilst parsing config file" in text:  # ml_collections' TypeError/ValueError with a traceback
        last = [line for line in text.splitlines() if line.strip()][-1].strip()
        raise flags.IllegalFlagValueError(f"--config={argument}: error in the config file: {last}") from None
      raise
    except flags.Error:
      raise
    except Exception as error:  # pylint: disable=broad-except
      fields = _overrides(sys.argv, holder.name)
      message = None
      if isinstance(error, (KeyError, AttributeError)) and fields:
        try:
          message = missing_field(flag.parser.parse(argument), fields, holder.name)
        except Exception:  # pylint: disable=broad-except
          message = None
      if message is None:
        message = (f"--config={argument}: {type(error).__name__}: {cli.one_line(error)}"
                   f"{_config_file_line(error, path)}")
      raise flags.IllegalFlagValueError(message) from None
    value = flag.value
    if type(value).__name__ == "_ErrorConfig":  # ml_collections defers a failed load until first use
      cause = object.__getattribute__(value, "_error")
      raise flags.IllegalFlagValueError(f"--config={argument}: cannot load the config file: "
                                        f"{' '.join(str(cause).split())}")

  flag.parse = checked_parse


_one_line_config_errors(_CONFIG)


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
