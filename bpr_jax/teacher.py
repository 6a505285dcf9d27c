"""A float teacher's vectors of the training data, computed once and kept beside the run.

Distillation (`loss.teacher`, `loss.distill_weight` in configs/common.py; the loss in
bpr_jax/losses.py) needs, every step, the teacher's scores <t_q, t_p> of each question of the
global batch against every candidate passage. The teacher's vectors never change, so they are
computed once before the first step: one float32 vector per training question and per distinct
candidate passage (positives and the negative pools), in exactly the row order of the token tables
(`data.token_cache.example_tokens`). The pipeline then gathers the rows of each batch
(`pipeline.TrainBatches(teacher=...)`: `teacher_q`, `teacher_pos`, `teacher_neg`) and the train
step computes the [B, P] teacher scores from them (one small matmul).

The teacher is any exported model dir (`bpr_jax.export`: a training run, `--hf_model`,
a DPR import), read with `exported_model.load_exported` and used with its own settings (tokenizer,
lengths, pooling, code head): the float vectors it gives `encode --save_float`.

Cache (`data.teacher_cache_dir`, default WORKDIR/teacher_cache):

  questions.npy   float32 [N, d_t]   row i: question of training example i
  passages.npy    float32 [M, d_t]   row r: passage row r of the token tables
  teacher.json    {"format", "inputs": {"teacher": provenance.model_fingerprint(T),
                   "data": {"sha256" of the texts in row order, "questions", "passages"},
                   "settings": {"dtype"}}}

It is reused when the recorded inputs equal the current ones; otherwise it is recomputed, with one
log line naming what changed, and replaced atomically. Validation needs no teacher.

Library use:

  vectors = teacher.teacher_vectors(export_dir, train_source, cache_dir)
  vectors.questions[i], vectors.passages[r]
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
from typing import Callable, Sequence

import numpy as np
from absl import logging

from bpr_jax import io, provenance

FORMAT = "bpr-jax-teacher-vectors-v1"
META = "teacher.json"
QUESTIONS = "questions.npy"
PASSAGES = "passages.npy"


@dataclasses.dataclass
class TeacherVectors:
  """The teacher's float vectors of a training source (rows as in the token tables)."""
  questions: np.ndarray   # float32 [N, d_t]
  passages: np.ndarray    # float32 [M, d_t]
  inputs: dict            # what they were made from (teacher.json's "inputs")

  @property
  def dim(self) -> int:
    return int(self.questions.shape[1])

  def fingerprint(self) -> str:
    """A short hash of the inputs (teacher and data); checkpoints record it."""
    identity = provenance._identity(self.inputs)  # pylint: disable=protected-access
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def training_texts(source) -> tuple[list[str], list[str], list[str]]:
  """(questions, passage titles, passage texts) of `source` in the token tables' row order.

  The same walk as `token_cache.example_tokens`: one question per example; passages are the
  distinct (title, text) pairs of each example's positives, then its negative pool (hard
  negatives, else negatives), in order of first appearance.
  """
  row_of: dict = {}
  questions: list[str] = []
  titles: list[str] = []
  texts: list[str] = []
  for i in range(len(source)):
    example = source[i]
    questions.append(example.question)
    pool = list(example.hard_negatives) or list(example.negatives)
    for p in list(example.positives) + pool:
      key = (p.title, p.text)
      if key not in row_of:
        row_of[key] = len(texts)
        titles.append(p.title)
        texts.append(p.text)
  return questions, titles, texts


def texts_fingerprint(questions: Sequence[str], titles: Sequence[str], texts: Sequence[str]) -> dict:
  """{"sha256", "questions", "passages"} of the texts in row order (what decides the vectors)."""
  h = hashlib.sha256(f"{FORMAT}\0{len(questions)}\0{len(texts)}\0".encode())
  for q in questions:
    h.update(q.encode("utf-8", "surrogatepass") + b"\0")
  for title, text in zip(titles, texts):
    h.update(title.encode("utf-8", "surrogatepass") + b"\0" + text.encode("utf-8", "surrogatepass") + b"\0")
  return {"sha256": h.hexdigest(), "questions": len(questions), "passages": len(texts)}


def _read_cache(directory: pathlib.Path) -> tuple[dict | None, TeacherVectors | None]:
  """(recorded inputs or None, the vectors or None when unreadable)."""
  meta_path = directory / META
  if not meta_path.is_file():
    return None, None
  try:
    meta = io.read_json(meta_path)
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
      return None, None
    inputs = meta.get(provenance.INPUTS)
    q = io.load_npy(directory / QUESTIONS)
    p = io.load_npy(directory / PASSAGES)
  except (OSError, ValueError):
    return None, None
  return inputs, TeacherVectors(q, p, inputs)


ENCODE_CHUNK = 8192


def encode_in_chunks(encode: Callable[[int, int], np.ndarray], n: int) -> np.ndarray:
  """encode(lo, hi) over [0, n) in ENCODE_CHUNK pieces, concatenated (float32)."""
  parts = [np.asarray(encode(lo, min(lo + ENCODE_CHUNK, n)), np.float32) for lo in range(0, n, ENCODE_CHUNK)]
  return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)


def encode_texts(teacher_dir: str | os.PathLike, questions: Sequence[str], titles: Sequence[str],
                 texts: Sequence[str], batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
  """The teacher's float32 question and passage vectors (its own tokenizer, lengths, pooling)."""
  from bpr_jax.exported_model import load_exported  # pylint: disable=import-outside-toplevel
  model = load_exported(teacher_dir)
  # a chunk at a time: the tokenizer pads a whole call to the max length
  q = encode_in_chunks(lambda lo, hi: model.encode_questions(questions[lo:hi], batch_size=batch_size), len(questions))
  p = encode_in_chunks(lambda lo, hi: model.encode_passages(titles[lo:hi], texts[lo:hi], batch_size=batch_size), len(texts))
  for name, a in (("question", q), ("passage", p)):
    if not np.isfinite(a).all():
      raise ValueError(f"teacher {teacher_dir}: non-finite {name} vectors")
  return np.asarray(q, np.float32), np.asarray(p, np.float32)


def teacher_vectors(teacher_dir: str | os.PathLike, source, cache_dir: str | os.PathLike | None = None, *,
                    batch_size: int = 64, write: bool = True,
                    note: Callable[[str], None] = logging.warning) -> TeacherVectors:
  """The teacher's vectors of `source`: from `cache_dir` when made from the same inputs, else
  computed (and, with `write`, stored there atomically; `note` gets one line saying why)."""
  teacher_dir = os.fspath(teacher_dir)
  questions, titles, texts = training_texts(source)
  inputs = {"teacher": provenance.model_fingerprint(teacher_dir),
            "data": texts_fingerprint(questions, titles, texts),
            "settings": {"dtype": "float32"}}
  directory = pathlib.Path(cache_dir) if cache_dir else None
  if directory is not None:
    recorded, cached = _read_cache(directory)
    if cached is not None and not provenance.changed(recorded, inputs):
      if cached.questions.shape[0] == len(questions) and cached.passages.shape[0] == len(texts):
        logging.info("teacher cache: %d questions, %d passages from %s", len(questions), len(texts), directory)
        return cached
    if recorded is not None or (directory / META).exists():
      note(f"teacher cache {directory}: recomputing ({provenance.describe(recorded, inputs) or 'unreadable'})")
  logging.info("teacher %s: encoding %d questions and %d passages", teacher_dir, len(questions), len(texts))
  q, p = encode_texts(teacher_dir, questions, titles, texts, batch_size=batch_size)
  if directory is not None and write:
    with io.atomic_directory(directory) as tmp:
      np.save(tmp / QUESTIONS, q, allow_pickle=False)
      np.save(tmp / PASSAGES, p, allow_pickle=False)
      (tmp / META).write_text(json.dumps({"format": FORMAT, provenance.INPUTS: inputs}, indent=1, sort_keys=True),
                              encoding="utf-8")
  return TeacherVectors(q, p, inputs)


def default_cache_dir(configured: str, workdir: str) -> str:
  """`configured`, else WORKDIR/teacher_cache for a local workdir ("" for gs:// and other URLs)."""
  if configured:
    return configured
  return "" if "://" in workdir else os.path.join(workdir, "teacher_cache")


def for_training(config, source, workdir: str, *, process_index: int = 0, sync: Callable[[str], None] | None = None
                 ) -> TeacherVectors | None:
  """The run's teacher vectors (None without `loss.teacher`): process 0 makes or reuses the
  cache, the others read it after `sync` (without a cache folder every process computes them)."""
  teacher_dir = config.loss.get("teacher", "")
  if not teacher_dir:
    return None
  cache = default_cache_dir(config.data.get("teacher_cache_dir", ""), workdir)
  if not cache or sync is None:
    return teacher_vectors(teacher_dir, source, cache or None)
  vectors = teacher_vectors(teacher_dir, source, cache) if process_index == 0 else None
  sync("teacher_cache")
  if vectors is None:
    vectors = teacher_vectors(teacher_dir, source, cache, write=False)
  return vectors


def teacher_scores(tq, tp, similarity: str = "dot"):
  """[B, P] teacher scores <t_q, t_p> ('cos': of the unit-normalised vectors), in jnp."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  tq = tq.astype(jnp.float32)
  tp = tp.astype(jnp.float32)
  if similarity == "cos":
    tq = tq / jnp.maximum(jnp.linalg.norm(tq, axis=-1, keepdims=True), 1e-12)
    tp = tp / jnp.maximum(jnp.linalg.norm(tp, axis=-1, keepdims=True), 1e-12)
  elif similarity != "dot":
    raise ValueError(f"teacher similarity must be 'dot' or 'cos', got {similarity!r}")
  return jax.lax.stop_gradient(tq @ tp.T)
