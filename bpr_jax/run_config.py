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

from bpr_jax import checkpoints, io, losses, parallel, schedules
from bpr_jax.models import hash_layer
from bpr_jax.models.bert import ATTENTION_IMPLS, BertConfig
from bpr_jax.models.build import DTYPES
from bpr_jax.tokenization import Tokenizer

MODES = losses.MODES
SOURCES = ("tiny", "dpr_json", "beir", "tfds")
RNG_IMPLS = ("threefry2x32", "rbg", "unsafe_rbg")


class TrainingError(RuntimeError):
  """Training cannot go on (NaN loss, mismatched resume, ...)."""


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the first bad config value, before anything is loaded."""
  def check(cond: bool, message: str) -> None:
    if not cond:
      raise ValueError(f"config: {message}")
  check(config.mode in MODES, f"mode must be one of {MODES}, got {config.mode!r}")
  check(config.get("rng_impl", "threefry2x32") in RNG_IMPLS,
        f"rng_impl must be one of {RNG_IMPLS}, got {config.get('rng_impl')!r}")
  check(config.batch_size > 0, f"batch_size must be positive, got {config.batch_size}")
  check(config.num_train_steps > 0 or config.num_epochs > 0, "set num_epochs or num_train_steps")
  check(config.model.init in ("hf", "random"), f"model.init must be 'hf' or 'random', got {config.model.init!r}")
  check(config.model.pooling in ("cls", "mean"), f"model.pooling must be 'cls' or 'mean', got {config.model.pooling!r}")
  check(config.model.dtype in DTYPES, f"model.dtype must be one of {tuple(DTYPES)}, got {config.model.dtype!r}")
  check(config.model.code_bits >= 0, f"model.code_bits must be >= 0 (0: no code head), got {config.model.code_bits}")
  check(config.model.get("code_head_norm", 0.0) >= 0,
        f"model.code_head_norm must be >= 0 (0: LayerNorm's scale 1), got {config.model.get('code_head_norm')}")
  check(config.model.get("attention", "auto") in ATTENTION_IMPLS,
        f"model.attention must be one of {ATTENTION_IMPLS}, got {config.model.get('attention')!r}")
  check(config.model.param_sharding in parallel.PARAM_RULES,
        f"model.param_sharding must be one of {parallel.PARAM_RULES}, got {config.model.param_sharding!r}")
  if config.model.init == "hf":
    check(bool(config.model.hf_dir), "model.hf_dir is required with model.init='hf'")
  check(config.data.source in SOURCES, f"data.source must be one of {SOURCES}, got {config.data.source!r}")
  check(config.data.num_hard_negatives >= 0, "data.num_hard_negatives must be >= 0")
  check(config.loss.cand_reduction in losses.CAND_REDUCTIONS,
        f"loss.cand_reduction must be one of {losses.CAND_REDUCTIONS}, got {config.loss.cand_reduction!r}")
  check(config.loss.gamma >= 0, f"loss.gamma must be >= 0, got {config.loss.gamma}")
  check(config.loss.relaxation in hash_layer.RELAXATIONS,
        f"loss.relaxation must be one of {hash_layer.RELAXATIONS}, got {config.loss.relaxation!r}")
  check(config.loss.cand_loss in losses.CAND_LOSSES,
        f"loss.cand_loss must be one of {losses.CAND_LOSSES}, got {config.loss.cand_loss!r}")
  check(config.loss.terms in losses.LOSS_TERMS,
        f"loss.terms must be one of {losses.LOSS_TERMS}, got {config.loss.terms!r}")
  check(config.loss.beta_schedule in schedules.BETA_SCHEDULES,
        f"loss.beta_schedule must be one of {schedules.BETA_SCHEDULES}, got {config.loss.beta_schedule!r}")
  if config.loss.beta_schedule == "final":
    check(config.loss.final_beta >= 1, f"loss.final_beta must be >= 1 with beta_schedule='final', "
          f"got {config.loss.final_beta}")
  _check_distillation(config, check)
  check(config.optim.learning_rate > 0, "optim.learning_rate must be positive")
  check(0 <= config.optim.warmup_fraction < 1, "optim.warmup_fraction must be in [0, 1)")
  n = jax.device_count()
  check(config.batch_size % n == 0, f"batch_size {config.batch_size} must be divisible by the {n} devices")


SIMILARITIES = ("dot", "cos")


def _check_distillation(config: ml_collections.ConfigDict, check) -> None:
  """The teacher and nested-code fields of config.loss (see configs/common.py)."""
  loss = config.loss
  weight, cand_weight = loss.get("distill_weight", 0.0), loss.get("distill_cand_weight", 0.0)
  teacher = loss.get("teacher", "")
  check(weight >= 0 and cand_weight >= 0, f"loss.distill_weight and loss.distill_cand_weight must be >= 0, "
        f"got {weight} and {cand_weight}")
  check(loss.get("label_weight", 1.0) >= 0, f"loss.label_weight must be >= 0, got {loss.get('label_weight')}")
  check(loss.get("distill_temperature", 1.0) > 0,
        f"loss.distill_temperature must be > 0, got {loss.get('distill_temperature')}")
  check(loss.get("distill_teacher_temperature", 0.0) >= 0,
        f"loss.distill_teacher_temperature must be >= 0 (0: distill_temperature), "
        f"got {loss.get('distill_teacher_temperature')}")
  check(loss.get("distill_similarity", "dot") in SIMILARITIES,
        f"loss.distill_similarity must be one of {SIMILARITIES}, got {loss.get('distill_similarity')!r}")
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


# Config fields that change what is trained or its schedule. Resuming a checkpoint with any of
# them changed is refused (each differing field is named) before anything in the workdir is
# written. model.hf_dir counts only with model.init='hf', model.bert only with 'random', and
# num_epochs only when num_train_steps <= 0 (it is then what sets the total steps).
# Not listed, free to change on resume: log_every, eval_every, eval_max_examples,
# checkpoint_every, keep_checkpoints, async_checkpoints, prefetch (bookkeeping); model.remat
# (recomputes activations, same values); model.attention and model.scan_layers (the same
# function computed another way, same parameter tree); model.param_sharding (layout only; the checkpoint is
# restored onto the new shardings); data.dev_path, data.dev_split, data.dev_hard_negatives_json
# (validation only); data.pad_multiple (batch shapes only: padding is masked),
# data.token_cache_dir and data.teacher_cache_dir (where token ids and teacher vectors are kept;
# the teacher's own fingerprint is in the checkpoint's data record).  tests/test_train.py checks that every field of configs/common.py is either
# listed here or in RESUME_FREE.
RESUME_FIELDS = (
    "mode", "seed", "rng_impl", "batch_size", "num_train_steps", "num_epochs",
    "model.init", "model.hf_dir", "model.bert", "model.pooling", "model.dtype", "model.shared_encoder",
    "model.dropout", "model.attention_dropout", "model.fuse_passages", "model.code_bits",
    "model.code_head_norm",
    "data.source", "data.train_path", "data.beir_dir", "data.train_split", "data.hard_negatives_json",
    "data.tfds_name", "data.tfds_data_dir", "data.tokenizer_dir", "data.question_max_length",
    "data.passage_max_length", "data.num_hard_negatives", "data.shuffle_positives", "data.skip_invalid",
    "data.tiny_seed",
    "loss.alpha", "loss.gamma", "loss.cand_reduction", "loss.relaxation", "loss.cand_loss", "loss.terms",
    "loss.beta_schedule", "loss.final_beta", "loss.teacher", "loss.label_weight", "loss.distill_weight",
    "loss.distill_cand_weight", "loss.distill_temperature", "loss.distill_teacher_temperature",
    "loss.distill_similarity", "loss.nested_bits",
    "optim.learning_rate", "optim.warmup_fraction", "optim.weight_decay", "optim.adam_eps", "optim.b1",
    "optim.b2", "optim.grad_clip",
)
RESUME_FREE = (
    "log_every", "eval_every", "eval_max_examples", "checkpoint_every", "keep_checkpoints",
    "async_checkpoints", "prefetch", "model.remat", "model.param_sharding", "model.attention",
    "model.scan_layers", "data.dev_path",
    "data.dev_split", "data.dev_hard_negatives_json", "data.pad_multiple", "data.token_cache_dir",
    "data.teacher_cache_dir",
)
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
