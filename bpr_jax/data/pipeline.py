"""The training input pipeline: deterministic, host-sharded and resumable.

The batch of global step s is a pure function of (seed, s): epoch e = s // steps_per_epoch
uses the permutation `default_rng([seed, e]).permutation(len(source))`, step s takes its
slice of `global_batch_size` indices, and process p of P returns only rows
[p*B/P, (p+1)*B/P) of it. Resuming therefore needs only the step, which the checkpoint
stores with the pipeline's fingerprint (seed, dataset size, batch size) for a check.

Token ids are made once, before the first step (`token_cache.example_tokens`: every question
and candidate passage, with the tokenizer's batch parallelism, kept in `token_cache_dir` between
runs); a step only picks rows, gathers them and pads them to the global batch's longest row
rounded up to `pad_multiple` (`token_cache.bucket_length`), so every process of a step pads
to the same shape and a run compiles at most max_length / pad_multiple shapes per input.

Each question gets its first positive (or a seeded random one with `shuffle_positives`) and
`num_hard_negatives` hard negatives: seeded picks from `hard_negatives`, falling back to
`negatives`, then to the positive of another random example of the dataset (counted).

With a teacher (`TrainBatches(teacher=...)`, `bpr_jax.teacher.TeacherVectors`: float vectors of
every question and passage row, made once) each batch also carries the teacher's vectors of its
rows, gathered like the token ids: `teacher_q` [b, d_t], `teacher_pos` [b, d_t] and
`teacher_neg` [b*n, d_t] (float32), from which the train step computes the teacher's scores.
"""
from __future__ import annotations

import dataclasses
import os
import queue
import threading
from typing import Iterator, Sequence

import numpy as np
from absl import logging

from bpr_jax.data.examples import Example, ExampleSource, Passage
from bpr_jax.data.token_cache import ExampleTokens, bucket_length, example_tokens

FIELDS = ("input_ids", "attention_mask", "token_type_ids")


@dataclasses.dataclass
class PipelineConfig:
  global_batch_size: int
  question_max_length: int
  passage_max_length: int
  num_hard_negatives: int = 1
  seed: int = 0
  shuffle: bool = True
  shuffle_positives: bool = False
  pad_multiple: int = 32       # pad to the global batch's longest row rounded up to this; 0: to the maximum
  token_cache_dir: str = ""    # where token tables are kept between runs; "": built in memory


def _prefixed(prefix: str, tokens: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  return {f"{prefix}_{k}": tokens[k] for k in FIELDS}


def default_token_cache_dir(configured: str, workdir: str) -> str:
  """`configured`, else WORKDIR/token_cache for a local workdir ("" for gs:// and other URLs)."""
  if configured:
    return configured
  return "" if "://" in workdir else os.path.join(workdir, "token_cache")


def _pick(rng: np.random.Generator, num_positives: int, pool_size: int, index: int, num_examples: int,
          num_negatives: int, shuffle_positives: bool) -> tuple[int, list[tuple[bool, int]]]:
  """The positive's position and the negatives, each (True, position in the pool) or (False,
  another example whose first positive stands in). The one definition of the picks."""
  positive = int(rng.integers(num_positives)) if shuffle_positives else 0
  negatives: list[tuple[bool, int]] = []
  if pool_size and num_negatives:
    order = rng.permutation(pool_size)
    negatives = [(True, int(j)) for j in order[:num_negatives]]
  while len(negatives) < num_negatives:
    other = int(rng.integers(num_examples))
    if other == index:
      continue
    negatives.append((False, other))
  return positive, negatives


class TrainBatches:
  """Per-process training batches for any global step, sliced from token tables made once.

  Questions and passages are padded to the longest row of the global batch (every process
  computes the same lengths) rounded up to `pad_multiple`, so a run compiles at most
  ceil(max_length / pad_multiple) shapes per input.
  """

  def __init__(self, source: ExampleSource, tokenizer, config: PipelineConfig, *,
               process_index: int = 0, process_count: int = 1, tokens: ExampleTokens | None = None,
               teacher=None):
    if config.global_batch_size % process_count:
      raise ValueError(f"global batch {config.global_batch_size} is not divisible by {process_count} processes")
    if len(source) < config.global_batch_size:
      raise ValueError(f"{source.name}: {len(source)} examples, fewer than one global batch of "
                       f"{config.global_batch_size}")
    self.source, self.tokenizer, self.config = source, tokenizer, config
    self.process_index, self.process_count = process_index, process_count
    self.local_batch_size = config.global_batch_size // process_count
    self.steps_per_epoch = len(source) // config.global_batch_size
    self.num_fallback_negatives = 0
    self._perm_epoch, self._perm = -1, None
    if tokens is None:
      tokens = example_tokens(source, tokenizer, config.question_max_length, config.passage_max_length,
                              cache_dir=config.token_cache_dir or None)
    if len(tokens) != len(source):
      raise ValueError(f"token tables hold {len(tokens)} examples, {source.name} has {len(source)}")
    self.tokens = tokens
    if teacher is not None and (len(teacher.questions) != len(tokens.questions)
                                or len(teacher.passages) != len(tokens.passages)):
      raise ValueError(f"teacher vectors hold {len(teacher.questions)} questions and {len(teacher.passages)} "
                       f"passages, the token tables of {source.name} {len(tokens.questions)} and "
                       f"{len(tokens.passages)}")
    self.teacher = teacher

  def fingerprint(self) -> dict:
    """What a checkpoint records to check that a resumed run reads the same data."""
    out = {"seed": self.config.seed, "num_examples": len(self.source),
           "global_batch_size": self.config.global_batch_size, "dataset": self.source.name}
    if self.teacher is not None:
      out["teacher"] = self.teacher.fingerprint()
    return out

  def _permutation(self, epoch: int) -> np.ndarray:
    if epoch != self._perm_epoch:
      n = len(self.source)
      self._perm = (np.random.default_rng([self.config.seed, epoch]).permutation(n)
                    if self.config.shuffle else np.arange(n))
      self._perm_epoch = epoch
    return self._perm

  def global_indices(self, step: int) -> np.ndarray:
    """Dataset indices of the whole global batch of `step` (the same on every process)."""
    epoch, within = divmod(step, self.steps_per_epoch)
    b = self.config.global_batch_size
    return self._permutation(epoch)[within * b:(within + 1) * b]

  def local_indices(self, step: int) -> np.ndarray:
    lo = self.process_index * self.local_batch_size
    return self.global_indices(step)[lo:lo + self.local_batch_size]

  def _picks(self, step: int, indices: np.ndarray):
    cfg = self.config
    epoch = step // self.steps_per_epoch
    for index in indices:
      index = int(index)
      rng = np.random.default_rng([cfg.seed, epoch, index, 1])
      yield index, _pick(rng, int(self.tokens.pos_offsets[index + 1] - self.tokens.pos_offsets[index]),
                         int(self.tokens.pool_offsets[index + 1] - self.tokens.pool_offsets[index]),
                         index, len(self.source), cfg.num_hard_negatives, cfg.shuffle_positives)

  def examples(self, step: int) -> tuple[list[Example], list[Passage], list[Passage]]:
    """This process's questions, positives and hard negatives (flattened, n per question)."""
    examples, positives, negatives = [], [], []
    for index, (pos, negs) in self._picks(step, self.local_indices(step)):
      example = self.source[index]
      pool = list(example.hard_negatives) or list(example.negatives)
      examples.append(example)
      positives.append(example.positives[pos])
      negatives.extend(pool[j] if in_pool else self.source[j].positives[0] for in_pool, j in negs)
    return examples, positives, negatives

  def rows(self, step: int, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Question rows, positive and negative passage rows of `indices`, and how many negatives
    fell back to other examples' positives."""
    t = self.tokens
    pos_rows, neg_rows, fallbacks = [], [], 0
    for index, (pos, negs) in self._picks(step, indices):
      pos_rows.append(t.pos_rows[t.pos_offsets[index] + pos])
      for in_pool, j in negs:
        neg_rows.append(t.pool_rows[t.pool_offsets[index] + j] if in_pool else t.pos_rows[t.pos_offsets[j]])
        fallbacks += not in_pool
    return (np.asarray(indices, np.int64), np.asarray(pos_rows, np.int64), np.asarray(neg_rows, np.int64),
            fallbacks)

  def batch(self, step: int) -> dict[str, np.ndarray]:
    """Local batch: q_* [b, Lq], pos_* [b, Lp], neg_* [b*n, Lp] (int32), Lq and Lp bucketed
    lengths of the global batch's longest question and passage."""
    cfg = self.config
    whole = self.process_count == 1
    q_all, pos_all, neg_all, fallbacks = self.rows(step, self.global_indices(step))
    if whole:
      q, pos, neg, local_fallbacks = q_all, pos_all, neg_all, fallbacks
    else:  # same picks (seeded per example), only this process's rows
      q, pos, neg, local_fallbacks = self.rows(step, self.local_indices(step))
    self.num_fallback_negatives += local_fallbacks
    q_len = bucket_length(self.tokens.questions.longest(q_all), cfg.pad_multiple, cfg.question_max_length)
    p_len = bucket_length(self.tokens.passages.longest(np.concatenate([pos_all, neg_all])), cfg.pad_multiple,
                          cfg.passage_max_length)
    out = _prefixed("q", self.tokens.questions.rows(q, q_len))
    out.update(_prefixed("pos", self.tokens.passages.rows(pos, p_len)))
    if cfg.num_hard_negatives:
      out.update(_prefixed("neg", self.tokens.passages.rows(neg, p_len)))
    if self.teacher is not None:
      out["teacher_q"] = np.asarray(self.teacher.questions[q], np.float32)
      out["teacher_pos"] = np.asarray(self.teacher.passages[pos], np.float32)
      if cfg.num_hard_negatives:
        out["teacher_neg"] = np.asarray(self.teacher.passages[neg], np.float32)
    return out

  def iterate(self, start_step: int, end_step: int, prefetch: int = 2) -> Iterator[tuple[int, dict]]:
    """(step, batch) for start_step <= step < end_step, made ahead in a background thread."""
    return prefetch_iterator((s, self.batch(s)) for s in range(start_step, end_step)) if prefetch else (
        (s, self.batch(s)) for s in range(start_step, end_step))


def tokenize_passages(tokenizer, passages: Sequence[Passage], max_length: int) -> dict[str, np.ndarray]:
  return tokenizer.passages([p.title for p in passages], [p.text for p in passages], max_length)


class _Stop:
  pass


def prefetch_iterator(iterator, size: int = 2):
  """Runs `iterator` in a daemon thread, `size` items ahead; re-raises its errors here."""
  items: queue.Queue = queue.Queue(maxsize=size)
  stop = threading.Event()

  def worker():
    try:
      for item in iterator:
        while not stop.is_set():
          try:
            items.put(item, timeout=0.1)
            break
          except queue.Full:
            continue
        if stop.is_set():
          return
      items.put(_Stop())
    except BaseException as error:  # handed to the consumer
      items.put(error)

  thread = threading.Thread(target=worker, daemon=True)
  thread.start()
  try:
    while True:
      item = items.get()
      if isinstance(item, _Stop):
        return
      if isinstance(item, BaseException):
        raise item
      yield item
  finally:
    stop.set()


_EVAL_TOKENS: dict = {}  # one entry: (source, tokenizer, settings) -> ExampleTokens, reused by every eval


def _eval_tokens(source, tokenizer, n: int, question_max_length: int, passage_max_length: int,
                 token_cache_dir: str) -> ExampleTokens:
  key = (id(source), id(tokenizer), n, question_max_length, passage_max_length, token_cache_dir)
  hit = _EVAL_TOKENS.get(key)
  if hit is not None and hit[0] is source and hit[1] is tokenizer:
    return hit[2]
  tokens = example_tokens(source, tokenizer, question_max_length, passage_max_length,
                          cache_dir=token_cache_dir or None, limit=n, first_only=True)
  _EVAL_TOKENS.clear()
  _EVAL_TOKENS[key] = (source, tokenizer, tokens)
  return tokens


def eval_batches(source: ExampleSource, tokenizer, *, batch_size: int, question_max_length: int,
                 passage_max_length: int, max_examples: int | None = None, process_index: int = 0,
                 process_count: int = 1, pad_multiple: int = 32,
                 token_cache_dir: str = "") -> Iterator[dict[str, np.ndarray]]:
  """Validation batches in dataset order: each question, its first positive and first hard
  negative (or negative; none if it has neither, then a second copy of the positive is not
  added and `neg_valid` is 0). Only whole global batches are used. Tokens are made once per
  (source, tokenizer, lengths) and kept for later calls; lengths are bucketed as in training."""
  n = len(source) if max_examples is None else min(len(source), max_examples)
  local = batch_size // process_count
  if n < batch_size:
    return
  t = _eval_tokens(source, tokenizer, n, question_max_length, passage_max_length, token_cache_dir)
  for start in range(0, n - batch_size + 1, batch_size):
    rows = np.arange(start, start + batch_size)
    pos = t.pos_rows[t.pos_offsets[rows]].astype(np.int64)
    has_pool = t.pool_offsets[rows + 1] > t.pool_offsets[rows]
    first_pool = t.pool_rows[np.minimum(t.pool_offsets[rows], max(len(t.pool_rows) - 1, 0))] if len(
        t.pool_rows) else pos
    neg = np.where(has_pool, first_pool, pos).astype(np.int64)
    q_len = bucket_length(t.questions.longest(rows), pad_multiple, question_max_length)
    p_len = bucket_length(t.passages.longest(np.concatenate([pos, neg])), pad_multiple, passage_max_length)
    mine = slice(process_index * local, (process_index + 1) * local)
    out = _prefixed("q", t.questions.rows(rows[mine], q_len))
    out.update(_prefixed("pos", t.passages.rows(pos[mine], p_len)))
    out.update(_prefixed("neg", t.passages.rows(neg[mine], p_len)))
    out["neg_valid"] = has_pool[mine].astype(np.int32)
    yield out


def log_fallbacks(batches: TrainBatches) -> None:
  if batches.num_fallback_negatives:
    logging.info("%s: %d hard negatives taken from other examples' positives (records without negatives)",
                 batches.source.name, batches.num_fallback_negatives)
