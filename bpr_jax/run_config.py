"""The config of a training run: its checks, resume compatibility and the run info in the workdir.

`validate_config` names the first bad value before anything is loaded; `check_resume` refuses to
resume a checkpoint whose settings change what is trained or its schedule, before any file in the
workdir is written; `save_run_info` writes what export needs (config, architecture, tokenizer).
"""
from __future__ import annotations

import json
import os

import jax
import ml_collections

from bpr_jax import checkpoints, config_schema, io, losses
from bpr_jax.models.bert import BertConfig
from bpr_jax.tokenization import Tokenizer

# Allowed values of some fields, as named elsewhere (the schema, bpr_jax/config_schema.py, is their source).
MODES = losses.MODES
SOURCES = config_schema.field("data.source").allowed_values()
RNG_IMPLS = config_schema.field("rng_impl").allowed_values()
SIMILARITIES = config_schema.field("loss.distill_similarity").allowed_values()


class TrainingError(RuntimeError):
  """Training cannot go on (NaN loss, mismatched resume, ...)."""


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError (one line, `config: ...`) naming the first bad config value, before anything is loaded.

  Each field against its allowed values or range in the schema (bpr_jax/config_schema.py; a field the
  config lacks counts as its default), then the checks between fields.
  """
  def check(cond: bool, message: str) -> None:
    if not cond:
      raise ValueError(f"config: {message}")
  for problem in config_schema.problems(config):
    check(False, problem)
  check(config.num_train_steps > 0 or config.num_epochs > 0, "set num_epochs or num_train_steps")
  if config.model.init == "hf":
    check(bool(config.model.hf_dir), "model.hf_dir is required with model.init='hf'")
  if config.loss.beta_schedule == "final":
    check(config.loss.final_beta >= 1, f"loss.final_beta must be >= 1 with beta_schedule='final', "
          f"got {config.loss.final_beta}")
  _check_distillation(config, check)
  n = jax.device_count()
  check(config.batch_size % n == 0, f"batch_size {config.batch_size} must be divisible by the {n} devices")


def _check_distillation(config: ml_collections.ConfigDict, check) -> None:
  """The checks between the teacher, distillation and nested-code fields of config.loss (each field's own
  range is checked by the schema, bpr_jax/config_schema.py)."""
  loss = config.loss
  weight, cand_weight = loss.get("distill_weight", 0.0), loss.get("distill_cand_weight", 0.0)
  teacher = loss.get("teacher", "")
  if config.mode == "dpr":
    check(cand_weight == 0, "loss.distill_cand_weight needs mode='bpr' (DPR has no candidate codes); "
          "use loss.distill_weight")
  distilling = weight > 0 or cand_weight > 0
  check(not distilling or bool(teacher), "loss.distill_weight / loss.distill_cand_weight > 0 needs "
        "loss.teacher (an exported model dir)")
  check(distilling or loss.get("label_weight", 1.0) > 0, "loss.label_weight is 0 and no distillation "
        "weight is > 0: nothing would be trained")
  if teacher:
    check(os.path.isfile(os.path.join(teacher, "bpr.json")),
          f"loss.teacher {teacher}: not an exported model dir (no bpr.json)")
    check(distilling, "loss.teacher is set but loss.distill_weight and loss.distill_cand_weight are 0")
    if config.model.init == "hf" and os.path.realpath(config.model.hf_dir) == os.path.realpath(teacher):
      pooling = io.read_json(os.path.join(teacher, "bpr.json")).get("pooling")
      check(pooling == config.model.pooling, f"model.pooling {config.model.pooling!r} differs from the teacher's "
            f"{pooling!r} (model.hf_dir is the teacher, so the student would not start as the teacher); "
            f"set model.pooling={pooling!r}")
  try:
    sizes = losses.parse_nested_bits(loss.get("nested_bits", ""))
  except ValueError as e:
    raise ValueError(f"config: loss.{e}") from None
  if sizes and config.model.code_bits > 0:
    check_nested_bits(sizes, config.model.code_bits)


def check_nested_bits(sizes, code_size: int) -> None:
  """ValueError (one line) when the largest nested prefix exceeds the code's `code_size` bits."""
  sizes = losses.parse_nested_bits(sizes)
  if sizes and sizes[-1] > code_size:
    raise ValueError(f"config: loss.nested_bits {','.join(map(str, sizes))}: {sizes[-1]} is more than "
                     f"the code's {code_size} bits (model.code_bits, else the encoder's hidden size)")


# The schema's resume classes (bpr_jax/config_schema.py). RESUME_FIELDS change what is trained or its
# schedule: resuming a checkpoint with any of them changed is refused (each differing field is named)
# before anything in the workdir is written; model.hf_dir counts only with model.init='hf', model.bert
# only with 'random', and num_epochs only when num_train_steps <= 0 (it then sets the total steps).
# RESUME_FREE may change on resume (bookkeeping, layout, validation data, caches, the same function
# computed another way).
RESUME_FIELDS = config_schema.RESUME_FIELDS
RESUME_FREE = config_schema.RESUME_FREE
_ABSENT = "<absent>"


def resume_settings(config: dict) -> dict:
  """The RESUME_FIELDS of a config (as a plain dict), JSON-normalised."""
  def get(key: str):
    node = config
    for part in key.split("."):
      if not isinstance(node, dict) or part not in node:
        return _ABSENT
      node = node[part]
    return json.loads(json.dumps(node, sort_keys=True, default=str))
  out = {key: get(key) for key in RESUME_FIELDS}
  if out["model.init"] != "hf":
    out.pop("model.hf_dir")
  if out["model.init"] != "random":
    out.pop("model.bert")
  return out


def check_resume(config: ml_collections.ConfigDict, workdir: str) -> int | None:
  """Latest checkpoint step of `workdir` (None: a new run); refuses a resume with other settings.

  Reads only: WORKDIR/config.json (written when the run started) against `config`.
  """
  step = checkpoints.latest_step_on_disk(workdir)
  if step is None:
    return None
  path = os.path.join(workdir, "config.json")
  if not os.path.isfile(path):
    raise TrainingError(f"{workdir}: has checkpoint {step} but no config.json; use a new workdir")
  with open(path, encoding="utf-8") as f:
    old = resume_settings(json.load(f))
  new = resume_settings(config.to_dict())
  if old["num_train_steps"] != _ABSENT and old["num_train_steps"] > 0 and new["num_train_steps"] > 0:
    old.pop("num_epochs")
    new.pop("num_epochs")
  diff = [(k, old.get(k, _ABSENT), new.get(k, _ABSENT)) for k in sorted(set(old) | set(new))
          if old.get(k, _ABSENT) != new.get(k, _ABSENT) and old.get(k, _ABSENT) != _ABSENT]
  if diff:
    shown = "; ".join(f"{k}: {a!r} -> {b!r}" for k, a, b in diff)
    raise TrainingError(f"{workdir}: checkpoint {step} was trained with other settings, and resuming "
                        f"would change what is trained or its schedule (checkpoint -> now): {shown}. "
                        "Use a new workdir, or the checkpoint's settings.")
  return step


def total_train_steps(config: ml_collections.ConfigDict, steps_per_epoch: int) -> int:
  return config.num_train_steps if config.num_train_steps > 0 else config.num_epochs * steps_per_epoch


def save_run_info(workdir: str, config: ml_collections.ConfigDict, tokenizer: Tokenizer, bert: BertConfig) -> None:
  """What export needs without the original paths: the config, tokenizer and architecture."""
  if jax.process_index() != 0:
    return
  io.atomic_write_text(os.path.join(workdir, "config.json"), config.to_json_best_effort(indent=2))
  io.atomic_write_json(os.path.join(workdir, "bert_config.json"), bert.to_dict(), sort_keys=False)
  tok_dir = os.path.join(workdir, "tokenizer")
  if not os.path.isdir(tok_dir):
    with io.atomic_directory(tok_dir) as tmp:
      tokenizer.save(tmp)
