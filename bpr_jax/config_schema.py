"""The schema of a training config: every field's type, default, allowed values, meaning and resume class.

`FIELDS` is the one place a config field is declared.  What reads it:

  configs/common.py       `base_config()` (built here): every field with its default; configs/*.py
                          start from it, so a mistyped override (`--config.batch_sise=...`) is an error
  bpr_jax/run_config.py   `validate_config` checks each field against its allowed values or range
                          (`problem`); RESUME_FIELDS / RESUME_FREE are the fields' resume classes
  bpr_jax/main.py         `--show_config` prints a config's values with this table (`describe`)

Resume classes: RESUME ('resume'): the field changes what is trained or its schedule, so resuming a
checkpoint with it changed is refused (run_config.check_resume names each differing field).  FREE
('free'): it may change on resume (bookkeeping, layout, validation data, caches, or the same function
computed another way).  A field's allowed values are a tuple, a `Rule` (a range in words), or
"module:NAME" for a tuple that its own module defines (e.g. "bpr_jax.losses:MODES"); the last is read
only when validated or shown, so this module (and configs/) imports no JAX.

Checks between fields (teacher and distillation weights, nested_bits against the code size, hf_dir
with model.init='hf', final_beta with beta_schedule='final') stay in run_config.validate_config.
"""
from __future__ import annotations

import dataclasses
import importlib
import os
from typing import Any, Callable

import ml_collections

RESUME = "resume"
FREE = "free"
RESUME_CLASSES = (RESUME, FREE)


def env_path(name: str, *parts: str) -> str:
  """$name joined with parts, or '' when the variable is unset (paths are never hard-coded)."""
  base = os.environ.get(name, "")
  return os.path.join(base, *parts) if base else ""


@dataclasses.dataclass(frozen=True)
class Rule:
  """A range a number must lie in: `words` says it ('>= 0'), `test` checks it, `note` explains an edge."""
  words: str
  test: Callable[[Any], bool]
  note: str = ""

  def __str__(self) -> str:
    return f"{self.words} ({self.note})" if self.note else self.words


def at_least(low: float, note: str = "") -> Rule:
  return Rule(f">= {low}", lambda v: v >= low, note)


def above(low: float, note: str = "") -> Rule:
  return Rule(f"> {low}", lambda v: v > low, note)


def in_range(low: float, high: float) -> Rule:
  """low <= value < high."""
  return Rule(f"in [{low}, {high})", lambda v: low <= v < high)


@dataclasses.dataclass(frozen=True)
class Field:
  """One config field: dotted `name`, `type`, `default` (or a function of the environment giving it),
  one-line `description`, `resume` class, and `allowed` values (tuple, Rule, "module:NAME" or None: any)."""
  name: str
  type: type
  default: Any
  description: str
  resume: str
  allowed: tuple | Rule | str | None = None

  def default_value(self) -> Any:
    return self.default() if callable(self.default) else self.default

  def allowed_values(self) -> tuple | Rule | None:
    """The allowed tuple (a "module:NAME" reference read now), the Rule, or None (any value of the type)."""
    if isinstance(self.allowed, str):
      module, name = self.allowed.split(":")
      return tuple(getattr(importlib.import_module(module), name))
    return self.allowed

  def allowed_text(self) -> str:
    allowed = self.allowed_values()
    if allowed is None:
      return "any"
    if isinstance(allowed, Rule):
      return str(allowed)
    return " | ".join(map(repr, allowed))

  def problem(self, value: Any) -> str | None:
    """One line naming the field and what it allows when `value` is not allowed; None when it is."""
    allowed = self.allowed_values()
    if isinstance(allowed, Rule) and not allowed.test(value):
      return f"{self.name} must be {allowed}, got {value!r}"
    if isinstance(allowed, tuple) and value not in allowed:
      return f"{self.name} must be one of {allowed}, got {value!r}"
    return None


def _f(name, type_, default, description, resume, allowed=None) -> Field:
  return Field(name, type_, default, description, resume, allowed)


_BERT = dict(vocab_size=0, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
             intermediate_size=3072, max_position_embeddings=512)

# The table.  Groups (model., data., loss., optim.) are ConfigDicts in base_config(); model.bert is one
# field (a dict of the architecture of model.init='random'), compared as a whole on resume.
FIELDS: tuple[Field, ...] = (
    _f("mode", str, "bpr", "'bpr': hash layer, L_cand + L_rerank (paper); 'dpr': the float baseline",
       RESUME, "bpr_jax.losses:MODES"),
    _f("seed", int, 42, "seed of parameter init, data order and dropout", RESUME),
    _f("rng_impl", str, "threefry2x32", "PRNG of the dropout masks: 'threefry2x32' (JAX's default, the paper "
       "configs') or XLA's RngBitGenerator ('rbg', 'unsafe_rbg': cheaper bits, other masks); init is always "
       "threefry", RESUME, ("threefry2x32", "rbg", "unsafe_rbg")),
    _f("batch_size", int, 128, "global batch of questions over all devices and hosts (divisible by the "
       "device count)", RESUME, above(0)),
    _f("num_epochs", int, 40, "length of the run in epochs (used when num_train_steps <= 0)", RESUME),
    _f("num_train_steps", int, -1, "length of the run in steps; > 0 overrides num_epochs", RESUME),
    _f("log_every", int, 100, "steps between metrics.jsonl / tensorboard lines", FREE),
    _f("eval_every", int, 1000, "steps between dev evaluations (average rank of the positive passage); "
       "0 disables", FREE),
    _f("eval_max_examples", int, 4096, "dev questions evaluated at most", FREE),
    _f("checkpoint_every", int, 1000, "steps between checkpoints", FREE),
    _f("keep_checkpoints", int, 3, "checkpoints kept in WORKDIR/checkpoints", FREE),
    _f("async_checkpoints", bool, True, "write checkpoints in the background", FREE),
    _f("prefetch", int, 2, "batches prepared ahead of the step", FREE),

    _f("model.init", str, "hf", "'hf': start from model.hf_dir; 'random': a fresh model.bert architecture",
       RESUME, ("hf", "random")),
    _f("model.hf_dir", str, lambda: env_path("BPR_MODEL_DIR", "bert-base-uncased"),
       "Hugging Face model dir to start from with model.init='hf' (default $BPR_MODEL_DIR/bert-base-uncased)",
       RESUME),
    _f("model.pooling", str, "cls", "passage/question vector: 'cls' ([CLS], paper) or 'mean' (of the tokens)",
       RESUME, "bpr_jax.models.bert:POOLINGS"),
    _f("model.dtype", str, "float32", "compute dtype", RESUME, "bpr_jax.models.build:DTYPES"),
    _f("model.shared_encoder", bool, False, "one encoder for questions and passages", RESUME),
    _f("model.remat", bool, False, "recompute activations in the backward pass (less memory, same values)",
       FREE),
    _f("model.dropout", float, 0.1, "hidden dropout rate; < 0 keeps the checkpoint's own rates", RESUME),
    _f("model.attention_dropout", float, -1.0, "attention-probability dropout; < 0 follows model.dropout "
       "(paper, 'manual' path); 0 lets model.attention='auto' use jax.nn.dot_product_attention", RESUME),
    _f("model.attention", str, "auto", "how attention is computed (same function, same parameters; "
       "bpr_jax/models/bert.py)", FREE, "bpr_jax.models.bert:ATTENTION_IMPLS"),
    _f("model.fuse_passages", bool, False, "positives and hard negatives in one passage-encoder forward "
       "(slower on CPU)", RESUME),
    _f("model.scan_layers", bool, False, "run the layers as one lax.scan (same parameter tree)", FREE),
    _f("model.param_sharding", str, "replicated", "parameter layout over the devices (a checkpoint is "
       "restored onto the new layout)", FREE, "bpr_jax.parallel:PARAM_RULES"),
    _f("model.code_bits", int, 0, "0: the code is the pooled vector (paper); N > 0: a code head (dense + "
       "LayerNorm) to N bits", RESUME, at_least(0, "0: no code head")),
    _f("model.code_head_norm", float, 0.0, "starting norm of a fresh code head's vectors (the rerank "
       "logits' scale); 0: LayerNorm's scale 1", RESUME, at_least(0, "0: LayerNorm's scale 1")),
    _f("model.bert", dict, _BERT, "architecture with model.init='random': vocab_size (0: the tokenizer's), "
       "hidden_size, num_hidden_layers, num_attention_heads, intermediate_size, max_position_embeddings",
       RESUME),

    _f("data.source", str, "dpr_json", "where training questions come from", RESUME,
       ("tiny", "dpr_json", "beir", "tfds")),
    _f("data.train_path", str, "", "DPR JSON of the training questions (data.source='dpr_json')", RESUME),
    _f("data.dev_path", str, "", "DPR JSON of the dev questions; '': no dev evaluation", FREE),
    _f("data.beir_dir", str, "", "BEIR dataset dir (data.source='beir')", RESUME),
    _f("data.train_split", str, "train", "split trained on (beir, tfds)", RESUME),
    _f("data.dev_split", str, "", "split evaluated on (beir, tfds); '': none", FREE),
    _f("data.hard_negatives_json", str, "", "hard negatives of the training questions (e.g. from "
       "bpr_jax.mine_negatives)", RESUME),
    _f("data.dev_hard_negatives_json", str, "", "hard negatives of the dev questions", FREE),
    _f("data.tfds_name", str, "", "TFDS dataset name (data.source='tfds')", RESUME),
    _f("data.tfds_data_dir", str, "", "TFDS data dir (data.source='tfds')", RESUME),
    _f("data.tokenizer_dir", str, "", "tokenizer dir; '': model.hf_dir", RESUME),
    _f("data.question_max_length", int, 256, "question tokens kept at most", RESUME),
    _f("data.passage_max_length", int, 256, "passage tokens (title + text) kept at most", RESUME),
    _f("data.pad_multiple", int, 32, "pad each batch to its longest row rounded up to this (padding is "
       "masked); 0: to the max length", FREE),
    _f("data.token_cache_dir", str, "", "token ids made once and kept here; '': WORKDIR/token_cache "
       "(local workdirs)", FREE),
    _f("data.teacher_cache_dir", str, "", "loss.teacher's vectors made once and kept here; '': "
       "WORKDIR/teacher_cache (local workdirs)", FREE),
    _f("data.num_hard_negatives", int, 1, "hard negatives per question in a batch", RESUME, at_least(0)),
    _f("data.shuffle_positives", bool, False, "a seeded random positive per question (else its first)",
       RESUME),
    _f("data.skip_invalid", bool, False, "skip (and count) malformed records instead of failing", RESUME),
    _f("data.tiny_seed", int, 0, "seed of the synthetic data (data.source='tiny')", RESUME),

    _f("loss.alpha", float, 2.0, "margin of L_cand (paper; the original code's default was 0.1)", RESUME),
    _f("loss.gamma", float, 0.1, "beta = sqrt(gamma * step + 1), the hash relaxation's scale", RESUME,
       at_least(0)),
    _f("loss.cand_reduction", str, "mean", "L_cand over (question, negative) pairs: 'mean' (original code) "
       "or 'sum' (paper)", RESUME, "bpr_jax.losses:CAND_REDUCTIONS"),
    _f("loss.relaxation", str, "tanh", "'tanh' (paper) or 'ste' (forward sign, gradient of tanh; original "
       "--use_ste)", RESUME, "bpr_jax.models.hash_layer:RELAXATIONS"),
    _f("loss.cand_loss", str, "margin", "'margin' (paper) or 'ce' (original "
       "--use_binary_cross_entropy_loss)", RESUME, "bpr_jax.losses:CAND_LOSSES"),
    _f("loss.terms", str, "both", "'both' (L_cand + L_rerank), 'cand' (--no_dense_loss), 'rerank' "
       "(--no_binary_loss)", RESUME, "bpr_jax.losses:LOSS_TERMS"),
    _f("loss.beta_schedule", str, "gamma", "'gamma': sqrt(gamma step + 1); 'final': the same shape "
       "reaching loss.final_beta at the last step", RESUME, "bpr_jax.schedules:BETA_SCHEDULES"),
    _f("loss.final_beta", float, 0.0, "beta at the last step with beta_schedule='final' (>= 1; the paper's "
       "runs end near 43)", RESUME),
    _f("loss.teacher", str, "", "float teacher for distillation: an exported model dir; '': none (the "
       "paper's loss)", RESUME),
    _f("loss.label_weight", float, 1.0, "weight of the label terms (L_cand + L_rerank); 0: label-free, "
       "only the teacher", RESUME, at_least(0)),
    _f("loss.distill_weight", float, 0.0, "weight of KL_T(teacher || rerank scores <e_q, h~p>) (DPR mode: "
       "<e_q, e_p>); 0: off", RESUME, at_least(0)),
    _f("loss.distill_cand_weight", float, 0.0, "weight of KL_T(teacher || candidate scores <h~q, h~p>); "
       "0: off", RESUME, at_least(0)),
    _f("loss.distill_temperature", float, 1.0, "T of the student's softmax (the KL is multiplied by T^2)",
       RESUME, above(0)),
    _f("loss.distill_teacher_temperature", float, 0.0, "T of the teacher's softmax; 0: "
       "loss.distill_temperature", RESUME, at_least(0, "0: distill_temperature")),
    _f("loss.distill_similarity", str, "dot", "the scale teacher and student are compared on: 'dot' "
       "(inner products, DPR) or 'cos' (cosines of both, sentence-transformers teachers; then set the "
       "temperature to the teacher's training scale, e.g. 0.05)", RESUME, ("dot", "cos")),
    _f("loss.nested_bits", str, "", "nested codes: the loss averaged over these code prefixes, e.g. "
       "'128,384,768' (multiples of 8, increasing, at most the code size); '': off", RESUME),

    _f("optim.learning_rate", float, 2e-5, "AdamW peak learning rate (linear warm-up, then linear decay)",
       RESUME, above(0)),
    _f("optim.warmup_fraction", float, 0.06, "fraction of the steps spent warming up", RESUME,
       in_range(0, 1)),
    _f("optim.weight_decay", float, 0.0, "AdamW weight decay", RESUME),
    _f("optim.adam_eps", float, 1e-8, "AdamW epsilon", RESUME),
    _f("optim.b1", float, 0.9, "AdamW beta1", RESUME),
    _f("optim.b2", float, 0.999, "AdamW beta2", RESUME),
    _f("optim.grad_clip", float, 2.0, "global gradient-norm clip", RESUME),
)

BY_NAME: dict[str, Field] = {f.name: f for f in FIELDS}
RESUME_FIELDS: tuple[str, ...] = tuple(f.name for f in FIELDS if f.resume == RESUME)
RESUME_FREE: tuple[str, ...] = tuple(f.name for f in FIELDS if f.resume == FREE)


def field(name: str) -> Field:
  """The Field of dotted `name` (KeyError naming it when there is none)."""
  try:
    return BY_NAME[name]
  except KeyError:
    raise KeyError(f"no config field {name!r}") from None


def base_config() -> ml_collections.ConfigDict:
  """A ConfigDict with every field of FIELDS at its default (groups as nested ConfigDicts)."""
  c = ml_collections.ConfigDict()
  for f in FIELDS:
    *groups, leaf = f.name.split(".")
    node = c
    for group in groups:
      if group not in node:
        node[group] = ml_collections.ConfigDict()
      node = node[group]
    value = f.default_value()
    node[leaf] = ml_collections.ConfigDict(dict(value)) if f.type is dict else value
  return c


def leaf_names(config) -> list[str]:
  """The dotted field names of `config` (a ConfigDict or dict), a dict-typed schema field as one name."""
  out = []

  def walk(node, prefix):
    for key, value in node.items():
      name = f"{prefix}{key}"
      if hasattr(value, "items") and not (name in BY_NAME and BY_NAME[name].type is dict):
        walk(value, f"{name}.")
      else:
        out.append(name)
  walk(config, "")
  return out


def value_of(config, name: str, default: Any = None) -> Any:
  """The value of dotted `name` in `config` (ConfigDict or dict), `default` when a part is missing."""
  node = config
  for part in name.split("."):
    if not hasattr(node, "keys") or part not in node.keys():
      return default
    node = node[part]
  return node


def problems(config) -> list[str]:
  """One line per field of `config` whose value is not allowed (a missing field counts as its default)."""
  out = []
  for f in FIELDS:
    message = f.problem(value_of(config, f.name, f.default_value()))
    if message:
      out.append(message)
  return out


def _shown(value: Any) -> str:
  if hasattr(value, "to_dict"):
    value = value.to_dict()
  return repr(value)


def describe(config=None) -> str:
  """Every field as text: `name = value`, then its type, resume class, allowed values (and the default
  when `config` sets another value), then its description.  `config` None: the defaults."""
  lines = []
  group = None
  for f in FIELDS:
    head = f.name.split(".")[0] if "." in f.name else ""
    if head != group:
      if lines:
        lines.append("")
      lines.append(f"[{head or 'run'}]")
      group = head
    default = f.default_value()
    value = default if config is None else value_of(config, f.name, default)
    shown = _shown(value)
    extra = "" if shown == _shown(default) else f"; default {_shown(default)}"
    lines.append(f"{f.name} = {shown}  ({f.type.__name__}; {f.resume}; allowed: {f.allowed_text()}{extra})")
    lines.append(f"    {f.description}")
  return "\n".join(lines)
