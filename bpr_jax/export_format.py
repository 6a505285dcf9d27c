"""The exported model folder: its layout, its settings (bpr.json) and writing one.

Layout of an exported folder E:

  question_encoder/{config.json, model.safetensors, tokenizer files}
  passage_encoder/{config.json, model.safetensors, tokenizer files}
  bpr.json   settings: mode ('bpr' | 'dpr'), pooling, question_max_length,
             passage_max_length, code_bits, hidden_size, shared_encoder, nested_bits and
             "inputs": {"source": ...}, what it was exported from (`bpr_jax.export.checkpoint_source`,
             `bpr_jax.importers.hf_source`, `bpr_jax.importers.dpr_source`)

Each encoder folder loads in transformers as `BertModel` (the pooled vector is
`last_hidden_state[:, 0]` for 'cls' pooling, or the masked mean for 'mean').
`code_bits` is the length of the codes: hidden_size, or the code head's dims when the model was
trained with `model.code_bits > 0`; the head's tensors are `dense.{weight,bias}` and
`layer_norm.{weight,bias}` in each model.safetensors (the authors' names; transformers' BertModel
ignores them): vector = LayerNorm(dense(pooled)).
`nested_bits` lists the code prefixes a model was trained on besides its whole code (nested codes,
`loss.nested_bits`, e.g. [128, 384] of a 768-bit code; [] when not nested, and for an export
written before the field existed): increasing multiples of 8, none beyond the code. The model's
recorded sizes (`code_sizes`) are these and the whole code; encode, search, evaluate and serve
work at any of them with the first N bits of each code (and the first N dims of a question
vector).

This module holds the settings check (`check_settings`, `read_settings`, `code_sizes`), writing a folder
(`save_exported`), the overwrite rule for writing one (`plan_output`: same source reused, another
refused unless overwrite), `is_exported` and `encoder_dir` (an exported folder also starts
training: --config.model.hf_dir=E loads question_encoder/ and passage_encoder/). Reading one for
inference is `bpr_jax.exported_model.load_exported`.
"""
from __future__ import annotations

import json
import os
import pathlib

from bpr_jax import io, provenance
from bpr_jax.losses import MODES
from bpr_jax.models import hf
from bpr_jax.models.bert import POOLINGS, BertEncoder
from bpr_jax.tokenization import Tokenizer

SETTINGS_FILE = "bpr.json"
QUESTION_DIR = "question_encoder"
PASSAGE_DIR = "passage_encoder"
REQUIRED_SETTINGS = ("mode", "pooling", "question_max_length", "passage_max_length",
                     "code_bits", "hidden_size", "shared_encoder")
FORMAT_VERSION = 1

PathLike = str | os.PathLike


def check_settings(settings: dict, source: PathLike = "settings") -> dict:
  """Validates an exported model's settings dict; returns a copy."""
  if not isinstance(settings, dict):
    raise ValueError(f"{source}: settings must be a JSON object")
  missing = [k for k in REQUIRED_SETTINGS if k not in settings]
  if missing:
    raise ValueError(f"{source}: missing settings {', '.join(missing)}")
  if settings["mode"] not in MODES:
    raise ValueError(f"{source}: mode must be one of {MODES}, got {settings['mode']!r}")
  if settings["pooling"] not in POOLINGS:
    raise ValueError(f"{source}: pooling must be one of {POOLINGS}, got {settings['pooling']!r}")
  for key in ("question_max_length", "passage_max_length", "hidden_size", "code_bits"):
    value = settings[key]
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
      raise ValueError(f"{source}: {key} must be a non-negative int, got {value!r}")
  if not isinstance(settings["shared_encoder"], bool):
    raise ValueError(f"{source}: shared_encoder must be true or false")
  if provenance.INPUTS in settings and not isinstance(settings[provenance.INPUTS], dict):
    raise ValueError(f"{source}: {provenance.INPUTS} must be a JSON object (what the model was "
                     "exported from)")
  out = dict(settings)
  nested = out.get("nested_bits", [])
  if not isinstance(nested, (list, tuple)) or any(
      not isinstance(n, int) or isinstance(n, bool) for n in nested):
    raise ValueError(f"{source}: nested_bits must be a list of bit counts, got {nested!r}")
  nested = [int(n) for n in nested]
  width = code_width(out)
  if any(n <= 0 or n % 8 for n in nested):
    raise ValueError(f"{source}: nested_bits must be positive multiples of 8, got {nested}")
  if any(b <= a for a, b in zip(nested, nested[1:])):
    raise ValueError(f"{source}: nested_bits must increase, got {nested}")
  if nested and nested[-1] > width:
    raise ValueError(f"{source}: nested_bits {nested}: {nested[-1]} is more than the code's "
                     f"{width} bits")
  out["nested_bits"] = nested
  return out


def code_width(settings: dict) -> int:
  """The bits of an exported model's whole code: code_bits, or hidden_size when that is 0."""
  return int(settings.get("code_bits") or settings.get("hidden_size") or 0)


def code_sizes(settings: dict) -> list[int]:
  """The code sizes (bits) a model records: its nested_bits and its whole code, increasing.
  encode --code_bits, an index's codes and search may use any of them (the first N bits)."""
  return sorted(set(int(n) for n in settings.get("nested_bits") or []) | {code_width(settings)})


def check_code_size(settings: dict, bits: int, what: str = "the model") -> int:
  """`bits` when it is one of `code_sizes(settings)`, else ValueError (one line naming them)."""
  sizes = code_sizes(settings)
  if bits not in sizes:
    kind = ("nested_bits " + ",".join(map(str, settings.get("nested_bits") or [])) + " and its "
            if settings.get("nested_bits") else "only its ")
    raise ValueError(f"{what} records code sizes {', '.join(map(str, sizes))} ({kind}"
                     f"whole {code_width(settings)}-bit code), not {bits} bits")
  return bits


def save_exported(question_encoder: BertEncoder, passage_encoder: BertEncoder,
                  tokenizer: Tokenizer, settings: dict, out_dir: PathLike, *,
                  inputs: dict | None = None) -> None:
  """Writes an exported model dir (see module docstring), replacing it atomically.

  `inputs` (e.g. `{"source": checkpoint_source(...)}`) is recorded in bpr.json under "inputs";
  it is not part of the model's identity (`provenance.model_fingerprint` leaves it out).
  """
  settings = check_settings(settings)
  if inputs is not None:
    settings[provenance.INPUTS] = dict(inputs)
  for name, model in ((QUESTION_DIR, question_encoder), (PASSAGE_DIR, passage_encoder)):
    if model.config.hidden_size != settings["hidden_size"]:
      raise ValueError(f"{name} hidden size {model.config.hidden_size} != settings "
                       f"hidden_size {settings['hidden_size']}")
    if model.pooling != settings["pooling"]:
      raise ValueError(f"{name} pooling {model.pooling!r} != settings pooling "
                       f"{settings['pooling']!r}")
    if (model.code_bits or settings["code_bits"]) and model.output_dim != settings["code_bits"]:
      raise ValueError(f"{name} gives {model.output_dim}-dim vectors but settings code_bits is "
                       f"{settings['code_bits']}")
  settings.setdefault("format_version", FORMAT_VERSION)
  with io.atomic_directory(out_dir) as tmp:
    for name, model in ((QUESTION_DIR, question_encoder), (PASSAGE_DIR, passage_encoder)):
      (tmp / name).mkdir()
      hf.write_bert_files(model, tmp / name, tokenizer=tokenizer)
    with open(tmp / SETTINGS_FILE, "w", encoding="utf-8") as f:
      json.dump(settings, f, indent=2, sort_keys=True)
      f.write("\n")


def read_settings(path: PathLike) -> dict:
  """The validated bpr.json of an exported dir."""
  path = pathlib.Path(path)
  file = path / SETTINGS_FILE
  if not file.is_file():
    raise FileNotFoundError(f"no {SETTINGS_FILE} in {path} (not an exported model dir)")
  try:
    settings = json.loads(file.read_text(encoding="utf-8"))
  except json.JSONDecodeError as e:
    raise ValueError(f"{file}: not valid JSON ({e})") from None
  return check_settings(settings, file)


def is_exported(path: PathLike) -> bool:
  """True when `path` is an exported model dir (holds bpr.json)."""
  return bool(path) and (pathlib.Path(path) / SETTINGS_FILE).is_file()


def encoder_dir(model_dir: PathLike, which: str = "question") -> str:
  """The HF BERT dir to initialise the `which` ('question' | 'passage') encoder from.

  An exported dir gives its question_encoder/ or passage_encoder/ (also the tokenizer
  and config.json to train with); any other dir (a HF BERT) is returned as is.
  """
  if which not in ("question", "passage"):
    raise ValueError(f"which must be 'question' or 'passage', got {which!r}")
  if not is_exported(model_dir):
    return str(model_dir)
  return str(pathlib.Path(model_dir) / (QUESTION_DIR if which == "question" else PASSAGE_DIR))


# ----------------------------------------------------------------------------
# The overwrite rule


def recorded_inputs(out_dir: PathLike) -> dict | None:
  """The "inputs" record in an existing export's bpr.json (None: none, or unreadable)."""
  file = pathlib.Path(out_dir) / SETTINGS_FILE
  try:
    settings = json.loads(file.read_text(encoding="utf-8"))
  except (OSError, ValueError):
    return None
  record = settings.get(provenance.INPUTS) if isinstance(settings, dict) else None
  return record if isinstance(record, dict) else None


def describe_source(inputs: dict | None) -> str:
  """A short description of an export's source (from its "inputs" record)."""
  source = (inputs or {}).get("source")
  if not isinstance(source, dict):
    return "an unrecorded source"
  kind = source.get("kind")
  if kind == "checkpoint":
    return f"checkpoint {source.get('workdir')} step {source.get('step')}"
  if kind == "hf":
    model = source.get("model") or {}
    return (f"Hugging Face model {model.get('path')} ({source.get('pooling')} pooling, "
            f"max_length {source.get('max_length')}, mode {source.get('mode')})")
  if kind == "dpr":
    parts = [(source.get(k) or {}).get("path") for k in ("question_encoder", "ctx_encoder", "checkpoint")]
    return "DPR " + " and ".join(str(p) for p in parts if p) + \
        f" ({source.get('pooling')} pooling, max_length {source.get('max_length')}, mode {source.get('mode')})"
  return f"a {kind} source"


def plan_output(out_dir: PathLike, inputs: dict, *, overwrite: bool = False) -> str:
  """The overwrite rule for an export to `out_dir` from `inputs` ({"source": ...}).

  Returns "create" (nothing there, or an empty dir), "reuse" (an export from the same source)
  or "overwrite" (another source, `overwrite` given). Raises ProvenanceError (one line naming
  both sources) for another source without `overwrite`, and FileExistsError for a path that
  is not an exported model (a file, or a folder without bpr.json that is not empty: never
  replaced).
  """
  out = pathlib.Path(out_dir)
  if out.exists() and not out.is_dir():
    raise FileExistsError(f"output {out} exists and is not a directory")
  if out.is_dir() and any(out.iterdir()) and not is_exported(out):
    raise FileExistsError(f"output {out} exists and is not an exported model (no {SETTINGS_FILE}); "
                          "choose another output")
  recorded = recorded_inputs(out) if out.is_dir() else None
  try:
    return provenance.check_output(out, recorded, inputs, what="an exported model", overwrite=overwrite)
  except provenance.ProvenanceError:
    old, new = (recorded or {}).get("source"), inputs.get("source")
    fields = provenance.changed(old, new) if isinstance(old, dict) and isinstance(new, dict) else []
    if isinstance(old, dict) and isinstance(new, dict) and old.get("kind") != new.get("kind"):
      fields = ["kind"]
    detail = f" (source changed: {', '.join(fields)})" if fields else ""
    raise provenance.ProvenanceError(
        f"{out} already holds a model exported from {describe_source(recorded)}, not from "
        f"{describe_source(inputs)}{detail}; pass --overwrite to replace it, or choose another "
        "output") from None
