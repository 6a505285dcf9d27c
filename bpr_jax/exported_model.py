"""An exported model loaded for inference: `ExportedModel` and `load_exported`.

`load_exported(E)` reads an exported folder (`bpr_jax.export_format`) into its two encoders,
tokenizer and settings; `ExportedModel.encode_questions` / `encode_passages` give float32
vectors through jitted encode functions (`make_encode_fn`) run over fixed-size, length-bucketed
chunks (`encode_batches`); `compile_questions` / `warmup_questions` compile the question
encoder's shapes without running it (a service's warm-up). What encode, search, evaluate and
serve run.
"""
from __future__ import annotations

import dataclasses
import pathlib
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from bpr_jax.export_format import PASSAGE_DIR, QUESTION_DIR, SETTINGS_FILE, PathLike, read_settings
from bpr_jax.models import hf
from bpr_jax.models.bert import BertEncoder
from bpr_jax.shapes import next_pow2
from bpr_jax.tokenization import KEYS, Tokenizer


class EncodeFn:
  """A jitted, deterministic batch -> float32 [B, d] numpy function of one encoder.

  `fn(batch)` encodes a tokenised batch (int32 [B, L] arrays under `tokenization.KEYS`);
  `fn.compile(rows, length)` compiles the [rows, length] shape without running it (lowered with
  the same parameters and argument types as a call, so a later call of that shape finds it in
  the jit cache and compiles nothing; with JAX's persistent compilation cache on, a restart
  loads it from disk).
  """

  def __init__(self, model: BertEncoder):
    graphdef, self._params = nnx.split(model)

    @jax.jit
    def encode(params, input_ids, attention_mask, token_type_ids):
      return nnx.merge(graphdef, params)(input_ids, attention_mask, token_type_ids)

    self._encode = encode

  def __call__(self, batch: dict[str, np.ndarray]) -> np.ndarray:
    # numpy arguments go straight to the jitted function: jnp.asarray would compile a
    # host-to-device "stage" per shape, which `compile` does not cover.
    args = (np.asarray(batch[k], np.int32) for k in KEYS)
    return np.asarray(self._encode(self._params, *args), np.float32)

  def compile(self, rows: int, length: int) -> None:
    """Compiles the int32 [rows, length] shape (no run)."""
    spec = jax.ShapeDtypeStruct((int(rows), int(length)), np.int32)
    self._encode.lower(self._params, spec, spec, spec).compile()


def make_encode_fn(model: BertEncoder) -> EncodeFn:
  """A jitted, deterministic batch -> float32 [B, d] numpy function (`EncodeFn`)."""
  return EncodeFn(model)


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

  def _fn(self, which: str) -> EncodeFn:
    if which not in self._fns:
      model = self.question_encoder if which == "question" else self.passage_encoder
      self._fns[which] = make_encode_fn(model)
    return self._fns[which]

  def encode_questions(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
    """float32 [N, d] question embeddings."""
    batch = self.tokenizer.questions(texts, self.settings["question_max_length"])
    return encode_batches(self._fn("question"), batch, batch_size,
                          self.question_encoder.output_dim)

  def question_shapes(self, max_rows: int, batch_size: int = 64) -> list[tuple[int, int]]:
    """Every (rows, length) shape `encode_questions` can meet with up to `max_rows` questions:
    rows the chunk sizes (`encode_batches`), lengths the buckets (powers of two >= MIN_BUCKET,
    capped at question_max_length)."""
    full = int(self.settings["question_max_length"])
    rows = sorted({min(batch_size, next_pow2(n)) for n in range(1, max(1, max_rows) + 1)})
    lengths = sorted({min(full, max(MIN_BUCKET, next_pow2(n))) for n in range(1, full + 1)})
    return [(r, length) for r in rows for length in lengths]

  def compile_questions(self, rows: int, length: int) -> None:
    """Compiles the question encoder for [rows, length] token batches without encoding
    anything; `encode_questions` calls of that shape then compile nothing (`EncodeFn.compile`)."""
    self._fn("question").compile(rows, length)

  def warmup_questions(self, max_rows: int, batch_size: int = 64) -> int:
    """Compiles (without running) the question encoder for every shape `encode_questions` can
    meet with up to `max_rows` questions (`question_shapes`), so a service never compiles while
    answering; returns the number of shapes."""
    shapes = self.question_shapes(max_rows, batch_size)
    for rows, length in shapes:
      self.compile_questions(rows, length)
    return len(shapes)

  def encode_passages(self, titles: Sequence[str], texts: Sequence[str],
                      batch_size: int = 64) -> np.ndarray:
    """float32 [N, d] passage embeddings."""
    batch = self.tokenizer.passages(titles, texts, self.settings["passage_max_length"])
    return encode_batches(self._fn("passage"), batch, batch_size,
                          self.passage_encoder.output_dim)


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
