"""Export a model: a training run, a Hugging Face BERT or a pair of DPR encoders, as one folder.

Usage:
  python -m bpr_jax.export --workdir=W --output=E [--step=N]      a training run (default: latest step)
  python -m bpr_jax.export --hf_model=DIR --output=E [--pooling=cls|mean] [--max_length=256]
      one Hugging Face BERT as both encoders (post-hoc sign codes: a baseline); the pooling is
      the model's own (sentence-transformers' pooling config), else [CLS] (printed as a note)
  python -m bpr_jax.export --dpr_question_encoder=Q --dpr_ctx_encoder=C --output=E [--tokenizer=DIR]
      transformers DPRQuestionEncoder / DPRContextEncoder dirs (`save_pretrained`, e.g.
      facebook/dpr-*-single-nq-base); the tokenizer is read from Q unless --tokenizer=DIR

An existing E exported from the same source is reused (nothing is rewritten); one exported from
another source is refused unless --overwrite, which replaces it atomically.

Layout of an exported dir E:

  question_encoder/{config.json, model.safetensors, tokenizer files}
  passage_encoder/{config.json, model.safetensors, tokenizer files}
  bpr.json   settings: mode ('bpr' | 'dpr'), pooling, question_max_length,
             passage_max_length, code_bits, hidden_size, shared_encoder, and
             "inputs": {"source": ...}, what it was exported from (see `checkpoint_source`,
             `hf_source`, `dpr_source`)

Each encoder dir loads in transformers as `BertModel` (the pooled vector is
`last_hidden_state[:, 0]` for 'cls' pooling, or the masked mean for 'mean').
`code_bits` is the length of the codes: hidden_size, or the code head's dims when the model was
trained with `model.code_bits > 0`; the head's tensors are `dense.{weight,bias}` and
`layer_norm.{weight,bias}` in each model.safetensors (the authors' names; transformers' BertModel
ignores them): vector = LayerNorm(dense(pooled)).

An exported dir also starts training: --config.model.hf_dir=E loads question_encoder/
and passage_encoder/ (see `encoder_dir`). Doors out of an export: `bpr_jax.pyserini`
(a folder for Pyserini's BinaryDenseSearcher) and `bpr_jax.sentence_transformers_export`
(two SentenceTransformer dirs).
"""
from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import sys
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags
from flax import nnx

from bpr_jax import io, provenance
from bpr_jax.losses import MODES
from bpr_jax.models import hf
from bpr_jax.models.bert import POOLINGS, BertConfig, BertEncoder
from bpr_jax.shapes import next_pow2
from bpr_jax.tokenization import KEYS, Tokenizer

SETTINGS_FILE = "bpr.json"
QUESTION_DIR = "question_encoder"
PASSAGE_DIR = "passage_encoder"
REQUIRED_SETTINGS = ("mode", "pooling", "question_max_length", "passage_max_length",
                     "code_bits", "hidden_size", "shared_encoder")
FORMAT_VERSION = 1

PathLike = str | os.PathLike
FLAGS = flags.FLAGS


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
  return dict(settings)


def make_encode_fn(model: BertEncoder) -> Callable[[dict[str, np.ndarray]], np.ndarray]:
  """A jitted, deterministic batch -> float32 [B, d] numpy function."""
  graphdef, params = nnx.split(model)

  @jax.jit
  def encode(params, input_ids, attention_mask, token_type_ids):
    return nnx.merge(graphdef, params)(input_ids, attention_mask, token_type_ids)

  def run(batch: dict[str, np.ndarray]) -> np.ndarray:
    return np.asarray(encode(params, *(jnp.asarray(batch[k]) for k in KEYS)), np.float32)

  return run


MIN_BUCKET = 16


def encode_batches(encode: Callable[[dict[str, np.ndarray]], np.ndarray],
                   batch: dict[str, np.ndarray], batch_size: int, dim: int) -> np.ndarray:
  """Runs `encode` over fixed-size chunks (last one zero-padded) of a tokenised batch."""
  if batch_size < 1:
    raise ValueError(f"batch_size must be positive, got {batch_size}")
  n = len(batch["input_ids"])
  if n == 0:
    return np.zeros((0, dim), np.float32)
  size = min(batch_size, next_pow2(n))
  out = []
  for start in range(0, n, size):
    chunk = {k: v[start:start + size] for k, v in batch.items()}
    rows = len(chunk["input_ids"])
    # Length bucketing: drop all-padding columns beyond the next power of two (>= 16) of the
    # longest row. Masked positions do not change the output; at most log2(L) shapes compile.
    full = chunk["input_ids"].shape[1]
    used = int(chunk["attention_mask"].sum(axis=1).max())
    length = min(full, max(MIN_BUCKET, next_pow2(used)))
    if length < full:
      chunk = {k: v[:, :length] for k, v in chunk.items()}
    if rows < size:
      chunk = {k: np.pad(v, ((0, size - rows), (0, 0))) for k, v in chunk.items()}
    out.append(encode(chunk)[:rows])
  return np.concatenate(out)


@dataclasses.dataclass
class ExportedModel:
  """Question and passage encoders with their tokenizer and settings."""
  question_encoder: BertEncoder
  passage_encoder: BertEncoder
  tokenizer: Tokenizer
  settings: dict
  _fns: dict = dataclasses.field(default_factory=dict, repr=False, compare=False)

  def _fn(self, which: str) -> Callable[[dict[str, np.ndarray]], np.ndarray]:
    if which not in self._fns:
      model = self.question_encoder if which == "question" else self.passage_encoder
      self._fns[which] = make_encode_fn(model)
    return self._fns[which]

  def encode_questions(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
    """float32 [N, d] question embeddings."""
    batch = self.tokenizer.questions(texts, self.settings["question_max_length"])
    return encode_batches(self._fn("question"), batch, batch_size,
                          self.question_encoder.output_dim)

  def warmup_questions(self, max_rows: int, batch_size: int = 64) -> int:
    """Compiles the question encoder for every (rows, length) shape `encode_questions` can meet
    with up to `max_rows` questions, so a service never compiles while answering; returns the
    number of shapes."""
    full = int(self.settings["question_max_length"])
    rows = sorted({min(batch_size, next_pow2(n)) for n in range(1, max(1, max_rows) + 1)})
    lengths = sorted({min(full, max(MIN_BUCKET, next_pow2(n))) for n in range(1, full + 1)})
    fn = self._fn("question")
    for r in rows:
      for length in lengths:
        tokens = {k: np.zeros((r, length), np.int32) for k in KEYS}
        tokens["attention_mask"][:, 0] = 1
        fn(tokens)
    return len(rows) * len(lengths)

  def encode_passages(self, titles: Sequence[str], texts: Sequence[str],
                      batch_size: int = 64) -> np.ndarray:
    """float32 [N, d] passage embeddings."""
    batch = self.tokenizer.passages(titles, texts, self.settings["passage_max_length"])
    return encode_batches(self._fn("passage"), batch, batch_size,
                          self.passage_encoder.output_dim)


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


def load_exported(path: PathLike, *, dtype=jnp.float32) -> ExportedModel:
  """Loads a dir written by `save_exported` (or `import_dpr`)."""
  path = pathlib.Path(path)
  if not path.is_dir():
    raise FileNotFoundError(f"exported model directory not found: {path}")
  settings = read_settings(path)
  for name in (QUESTION_DIR, PASSAGE_DIR):
    if not (path / name).is_dir():
      raise FileNotFoundError(f"missing {name}/ in exported model {path}")
  pooling = settings["pooling"]
  question = hf.load_bert(path / QUESTION_DIR, pooling=pooling, dtype=dtype)
  if settings["shared_encoder"]:
    passage = question
  else:
    passage = hf.load_bert(path / PASSAGE_DIR, pooling=pooling, dtype=dtype)
  for name, model in ((QUESTION_DIR, question), (PASSAGE_DIR, passage)):
    if model.config.hidden_size != settings["hidden_size"]:
      raise ValueError(f"{path / name}: hidden size {model.config.hidden_size} != "
                       f"{SETTINGS_FILE} hidden_size {settings['hidden_size']}")
    if (model.code_bits or settings["code_bits"]) and model.output_dim != settings["code_bits"]:
      raise ValueError(f"{path / name}: gives {model.output_dim}-dim vectors (code head: "
                       f"{model.code_bits or 'none'}) but {SETTINGS_FILE} code_bits is {settings['code_bits']}")
  tokenizer = Tokenizer.from_dir(path / QUESTION_DIR)
  return ExportedModel(question, passage, tokenizer, settings)


def _dpr_config(checkpoint: PathLike) -> BertConfig:
  """The BertConfig of a DPR checkpoint: config.json in it, or beside the file."""
  path = pathlib.Path(checkpoint)
  folder = path if path.is_dir() else path.parent
  file = folder / hf.CONFIG_FILE
  if not file.is_file():
    raise FileNotFoundError(f"no {hf.CONFIG_FILE} for DPR checkpoint {path} (looked in {folder})")
  return BertConfig.from_json(file)


def _tokenizer_for(source: PathLike, tokenizer_dir: PathLike | None) -> Tokenizer:
  folder = pathlib.Path(tokenizer_dir if tokenizer_dir is not None else source)
  if not folder.is_dir():
    folder = folder.parent
  try:
    return Tokenizer.from_dir(folder)
  except FileNotFoundError as e:
    hint = "" if tokenizer_dir is not None else (
        " (a checkpoint saved by model.save_pretrained has no tokenizer: pass --tokenizer=DIR "
        "holding vocab.txt or tokenizer.json, e.g. the DPR question encoder's own hub dir)")
    raise FileNotFoundError(f"{e}{hint}") from None


def _dpr_files(source: PathLike) -> tuple[pathlib.Path, list[pathlib.Path]]:
  """(folder, weights and config.json) of a DPR checkpoint dir or weights file."""
  path = pathlib.Path(source)
  if not path.exists():
    raise FileNotFoundError(f"checkpoint not found: {path}")
  folder = path if path.is_dir() else path.parent
  weights = hf.weights_file(path) if path.is_dir() else path
  files = [weights] + [folder / hf.CONFIG_FILE] * (folder / hf.CONFIG_FILE).is_file()
  return folder, files


def _tokenizer_files(folder: PathLike) -> list[pathlib.Path]:
  folder = pathlib.Path(folder)
  if not folder.is_dir():
    folder = folder.parent
  return [folder / n for n in hf.TOKENIZER_FILES if (folder / n).is_file()]


def dpr_source(checkpoint: PathLike | Sequence[PathLike], *, tokenizer_dir: PathLike | None = None,
               mode: str = "bpr", pooling: str = "cls", max_length: int = 256) -> dict:
  """The "source" record of a DPR import: kind "dpr", fingerprints of the checkpoint(s) and the
  tokenizer files, and the settings given (pooling, max_length, mode)."""
  pair = not isinstance(checkpoint, (str, os.PathLike))
  record: dict[str, Any] = {"kind": "dpr"}
  if pair:
    q_source, p_source = list(checkpoint)
    for key, source in (("question_encoder", q_source), ("ctx_encoder", p_source)):
      folder, files = _dpr_files(source)
      record[key] = provenance.fingerprint_files(files, folder)
  else:
    q_source = checkpoint
    folder, files = _dpr_files(checkpoint)
    record["checkpoint"] = provenance.fingerprint_files(files, folder)
  tok_folder = pathlib.Path(tokenizer_dir if tokenizer_dir is not None else q_source)
  tok_folder = tok_folder if tok_folder.is_dir() else tok_folder.parent
  record["tokenizer"] = provenance.fingerprint_files(_tokenizer_files(tok_folder), tok_folder)
  record.update(pooling=pooling, max_length=max_length, mode=mode)
  return record


def import_dpr(checkpoint: PathLike | Sequence[PathLike], out_dir: PathLike, *,
               tokenizer_dir: PathLike | None = None, mode: str = "bpr", pooling: str = "cls",
               max_length: int = 256, overwrite: bool = False) -> str:
  """Builds an exported dir from a published DPR/BPR checkpoint in transformers DPR naming.

  `checkpoint`: a dir (or weights file with config.json beside it) holding both
  encoders, or a (question, passage) pair of DPRQuestionEncoder /
  DPRContextEncoder dirs as written by `save_pretrained`. The tokenizer comes from
  `tokenizer_dir`, else from the (question) checkpoint dir. code_bits = hidden_size
  (as in training exports). DPR pools [CLS]; 'mean' is accepted for checkpoints
  trained that way. An existing `out_dir` follows `plan_output` (reused when exported from the
  same source); returns "create", "reuse" or "overwrite".
  """
  if mode not in MODES:
    raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
  if pooling not in POOLINGS:
    raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
  pair = not isinstance(checkpoint, (str, os.PathLike))
  if pair:
    checkpoint = list(checkpoint)
    if len(checkpoint) != 2:
      raise ValueError(f"expected (question, passage) checkpoints, got {len(checkpoint)}")
  inputs = {"source": dpr_source(checkpoint, tokenizer_dir=tokenizer_dir, mode=mode, pooling=pooling,
                                 max_length=max_length)}
  action = plan_output(out_dir, inputs, overwrite=overwrite)
  if action == "reuse":
    return action
  q_state, p_state = hf.load_dpr_checkpoint(checkpoint)
  q_source, p_source = (checkpoint[0], checkpoint[1]) if pair else (checkpoint, checkpoint)
  tokenizer = _tokenizer_for(q_source, tokenizer_dir)
  encoders = []
  for source, state in ((q_source, q_state), (p_source, p_state)):
    try:
      encoders.append(hf.bert_from_state_dict(_dpr_config(source), state, pooling=pooling))
    except ValueError as e:
      raise ValueError(f"{source}: {e}") from None
  hidden = encoders[0].config.hidden_size
  if encoders[1].config.hidden_size != hidden:
    raise ValueError(f"question encoder hidden size {hidden} != passage encoder hidden size "
                     f"{encoders[1].config.hidden_size}")
  if tokenizer.vocab_size > encoders[0].config.vocab_size:
    raise ValueError(f"tokenizer has {tokenizer.vocab_size} tokens but the encoders' vocab_size is "
                     f"{encoders[0].config.vocab_size} (wrong --tokenizer?)")
  settings = {
      "mode": mode, "pooling": pooling, "question_max_length": max_length,
      "passage_max_length": max_length, "code_bits": hidden,
      "hidden_size": hidden, "shared_encoder": False,
  }
  save_exported(encoders[0], encoders[1], tokenizer, settings, out_dir, inputs=inputs)
  return action


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


def hf_pooling(model_dir: PathLike, pooling: str | None = None) -> tuple[str, str | None]:
  """(the pooling to export `model_dir` with, a one-line note or None).

  `pooling=None` reads the model's own (`hf.read_pooling`: sentence-transformers' pooling
  config); a model without one pools [CLS], with a note saying so. An explicit `pooling` that
  differs from the model's file is used as asked, with a note. A mode bpr-jax cannot do (max,
  ...) raises ValueError unless `pooling` is given.
  """
  if pooling is not None and pooling not in POOLINGS:
    raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
  file = hf.pooling_file(model_dir)
  if pooling is None:
    own = hf.read_pooling(model_dir)
    if own is None:
      return "cls", (f"{model_dir} has no sentence-transformers pooling config; pooling 'cls' "
                     "(pass --pooling=mean for a mean-pooled model)")
    return own, None
  if file is not None:
    own = hf.pooling_of(file)
    if own != pooling:
      return pooling, f"{file} pools {own!r}; exporting with pooling {pooling!r} as asked"
  return pooling, None


def hf_source(model_dir: PathLike, *, mode: str, pooling: str, max_length: int) -> dict:
  """The "source" record of an `--hf_model` export: kind "hf", a fingerprint of the model's
  weights, config and tokenizer files, and the settings it was exported with."""
  model_dir = pathlib.Path(model_dir)
  return {"kind": "hf", "model": provenance.fingerprint_files(hf.model_files(model_dir), model_dir),
          "pooling": pooling, "max_length": max_length, "mode": mode}


def import_hf_encoder(model_dir: PathLike, out_dir: PathLike, *, mode: str = "bpr",
                      pooling: str | None = None, max_length: int = 256,
                      overwrite: bool = False) -> str:
  """Exports an off-the-shelf Hugging Face BERT as both encoders (shared weights).

  For baselines: its sign codes are post-hoc binarisation (e.g. sentence-transformers'
  binary quantisation) served by the same index, search and service as a trained BPR model.
  `pooling=None` uses the model's own (see `hf_pooling`; notes go to stderr). An existing
  `out_dir` follows `plan_output`; returns "create", "reuse" or "overwrite".
  """
  if mode not in MODES:
    raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
  if not pathlib.Path(model_dir).is_dir():
    raise FileNotFoundError(f"model directory not found: {model_dir}")
  pooling, note = hf_pooling(model_dir, pooling)
  if note:
    print(f"note: {note}", file=sys.stderr)
  inputs = {"source": hf_source(model_dir, mode=mode, pooling=pooling, max_length=max_length)}
  action = plan_output(out_dir, inputs, overwrite=overwrite)
  if action == "reuse":
    return action
  encoder = hf.load_bert(model_dir, pooling=pooling)
  hidden = encoder.config.hidden_size
  settings = {
      "mode": mode, "pooling": pooling, "question_max_length": max_length,
      "passage_max_length": max_length, "code_bits": hidden,
      "hidden_size": hidden, "shared_encoder": True,
  }
  save_exported(encoder, encoder, Tokenizer.from_dir(model_dir), settings, out_dir, inputs=inputs)
  return action


def checkpoint_source(workdir: PathLike, step: int) -> dict:
  """The "source" record of a training run's export: kind "checkpoint", the workdir, the step,
  a fingerprint of that step's checkpoint files and one of the run's config and tokenizer."""
  from bpr_jax import checkpoints  # pylint: disable=import-outside-toplevel
  workdir = pathlib.Path(workdir).resolve()
  step_dir, files = checkpoints.step_files(str(workdir), step)
  run_files = [workdir / n for n in ("config.json", "bert_config.json") if (workdir / n).is_file()]
  run_files += [p for p in (workdir / "tokenizer").glob("*") if p.is_file()]
  return {"kind": "checkpoint", "workdir": str(workdir), "step": step,
          "checkpoint": provenance.fingerprint_files(files, step_dir),
          "run": provenance.fingerprint_files(run_files, workdir)}


def export_run(workdir: PathLike, out_dir: PathLike, *, step: int | None = None,
               overwrite: bool = False) -> tuple[str, int]:
  """Exports checkpoint `step` (default: the latest) of a training workdir; returns (action,
  step), action as `plan_output`. A missing workdir or step is refused in one line first."""
  from bpr_jax import checkpoints  # pylint: disable=import-outside-toplevel
  step = checkpoints.resolve_step(str(workdir), step)
  inputs = {"source": checkpoint_source(workdir, step)}
  action = plan_output(out_dir, inputs, overwrite=overwrite)
  if action == "reuse":
    return action, step
  q_model, p_model, tokenizer, settings = checkpoints.restore_encoders(str(workdir), step)
  save_exported(q_model, p_model, tokenizer, settings, out_dir, inputs=inputs)
  return action, step


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


# ----------------------------------------------------------------------------
# Command line


def main(argv: Sequence[str]) -> None:
  """Exports a training workdir, an off-the-shelf HF encoder or a pair of DPR encoders."""
  from bpr_jax import cli  # pylint: disable=import-outside-toplevel
  if len(argv) > 1:
    raise cli.CommandError(f"unexpected arguments: {' '.join(argv[1:])}")
  dpr = (FLAGS.dpr_question_encoder, FLAGS.dpr_ctx_encoder)
  if any(dpr) and not all(dpr):
    raise cli.CommandError("give both --dpr_question_encoder and --dpr_ctx_encoder")
  sources = [bool(FLAGS.workdir), bool(FLAGS.hf_model), all(dpr)]
  if sum(sources) != 1:
    raise cli.CommandError("give exactly one of --workdir (a training run), --hf_model (a Hugging "
                           "Face BERT dir) or --dpr_question_encoder with --dpr_ctx_encoder (DPR "
                           "checkpoints)")
  if FLAGS.tokenizer and not all(dpr):
    raise cli.CommandError("--tokenizer goes with --dpr_question_encoder / --dpr_ctx_encoder")
  if FLAGS.step is not None and not FLAGS.workdir:
    raise cli.CommandError("--step goes with --workdir (a training run)")
  if FLAGS.workdir:
    given = [f"--{n}" for n in ("mode", "pooling", "max_length") if FLAGS[n].present]
    if given:
      raise cli.CommandError(f"{', '.join(given)}: not for --workdir (a training run's settings "
                             "come from its config)")
  out = FLAGS.output
  if all(dpr):
    action = import_dpr(dpr, out, tokenizer_dir=FLAGS.tokenizer or None, mode=FLAGS.mode,
                        pooling=FLAGS.pooling or "cls", max_length=FLAGS.max_length,
                        overwrite=FLAGS.overwrite)
    what = f"DPR encoders {dpr[0]} and {dpr[1]}"
  elif FLAGS.hf_model:
    action = import_hf_encoder(FLAGS.hf_model, out, mode=FLAGS.mode, pooling=FLAGS.pooling,
                               max_length=FLAGS.max_length, overwrite=FLAGS.overwrite)
    what = FLAGS.hf_model
  else:
    action, step = export_run(FLAGS.workdir, out, step=FLAGS.step, overwrite=FLAGS.overwrite)
    what = f"{FLAGS.workdir} step {step}"
  if action == "reuse":
    print(f"{out}: already exported from {describe_source(recorded_inputs(out))} (reused)")
  elif action == "overwrite":
    print(f"exported {what} to {out} (replaced the model that was there)")
  else:
    print(f"exported {what} to {out}")


def define_flags() -> None:
  """Defines --workdir, --output and --step (each only if not already defined) and the rest."""
  if "workdir" not in FLAGS:
    flags.DEFINE_string("workdir", None, "Training workdir holding the checkpoints.")
  if "output" not in FLAGS:
    flags.DEFINE_string("output", None, "Directory to write the exported model to.")
  if "step" not in FLAGS:
    flags.DEFINE_integer("step", None, "With --workdir: the checkpoint step to export (default: "
                         "the latest).")
  flags.DEFINE_string("hf_model", None, "Instead of --workdir: a Hugging Face BERT dir exported as "
                      "both encoders (post-hoc sign codes; a baseline).")
  flags.DEFINE_string("dpr_question_encoder", None, "Instead of --workdir: a transformers "
                      "DPRQuestionEncoder dir (save_pretrained), with --dpr_ctx_encoder.")
  flags.DEFINE_string("dpr_ctx_encoder", None, "The DPRContextEncoder dir going with "
                      "--dpr_question_encoder.")
  flags.DEFINE_string("tokenizer", None, "With --dpr_*: the tokenizer dir (default: "
                      "--dpr_question_encoder).")
  flags.DEFINE_enum("mode", "bpr", list(MODES), "With --hf_model / --dpr_*: 'bpr' (binary codes) "
                    "or 'dpr' (float vectors) in the export's settings.")
  flags.DEFINE_enum("pooling", None, list(POOLINGS), "With --hf_model / --dpr_*: pooling of the "
                    "encoders (default: --hf_model's own sentence-transformers pooling, else cls; "
                    "DPR: cls).")
  flags.DEFINE_integer("max_length", 256, "With --hf_model / --dpr_*: question and passage max "
                       "length.")
  flags.DEFINE_boolean("overwrite", False, "Replace an existing --output exported from another "
                       "source (one from the same source is reused without it).")
  flags.mark_flags_as_required(["output"])


if __name__ == "__main__":
  from bpr_jax import cli

  cli.run(main, define_flags)
