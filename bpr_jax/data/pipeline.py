"""The training input pipeline: deterministic, host-sharded and resumable.

The batch of global step s is a pure function of (seed, s): epoch e = s // steps_per_epoch
uses the permutation `default_rng([seed, e]).permutation(len(source))`, step s takes its
slice of `global_batch_size` indices, and process p of P tokenises only rows
[p*B/P, (p+1)*B/P) of it. Resuming therefore needs only the step, which the checkpoint
stores with the pipeline's fingerprint (seed, dataset size, batch size) for a check.

Each question gets its first positive (or a seeded random one with `shuffle_positives`) and
`num_hard_negatives` hard negatives: seeded picks from `hard_negatives`, falling back to
`negatives`, then to the positive of another random example of the dataset (counted).
"""
from __future__ import annotations

import dataclasses
import queue
import threading
from typing import Iterator, Sequence

import numpy as np
from absl import logging

from bpr_jax.data.examples import Example, ExampleSource, Passage

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


def _prefixed(prefix: str, tokens: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  return {f"{prefix}_{k}": tokens[k] for k in FIELDS}


class TrainBatches:
  """Per-process tokenised training batches for any global step."""

  def __init__(self, source: ExampleSource, tokenizer, config: PipelineConfig, *,
               process_index: int = 0, process_count: int = 1):
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

  def fingerprint(self) -> dict:
    """What a checkpoint records to check that a resumed run reads the same data."""
    return {"seed": self.config.seed, "num_examples": len(self.source),
            "global_batch_size": self.config.global_batch_size, "dataset": self.source.name}

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

  def _pick(self, rng: np.random.Generator, example: Example, index: int) -> tuple[Passage, list[Passage]]:
    cfg = self.config
    positive = (example.positives[rng.integers(len(example.positives))]
                if cfg.shuffle_positives else example.positives[0])
    pool = list(example.hard_negatives) or list(example.negatives)
    negatives: list[Passage] = []
    if pool and cfg.num_hard_negatives:
      order = rng.permutation(len(pool))
      negatives = [pool[i] for i in order[:cfg.num_hard_negatives]]
    while len(negatives) < cfg.num_hard_negatives:
      other = int(rng.integers(len(self.source)))
      if other == index:
        continue
      negatives.append(self.source[other].positives[0])
      self.num_fallback_negatives += 1
    return positive, negatives

  def examples(self, step: int) -> tuple[list[Example], list[Passage], list[Passage]]:
    """This process's questions, positives and hard negatives (flattened, n per question)."""
    epoch = step // self.steps_per_epoch
    examples, positives, negatives = [], [], []
    for index in self.local_indices(step):
      index = int(index)
      example = self.source[index]
      rng = np.random.default_rng([self.config.seed, epoch, index, 1])
      positive, negs = self._pick(rng, example, index)
      examples.append(example)
      positives.append(positive)
      negatives.extend(negs)
    return examples, positives, negatives

  def batch(self, step: int) -> dict[str, np.ndarray]:
    """Tokenised local batch: q_* [b, Lq], pos_* [b, Lp], neg_* [b*n, Lp] (int32)."""
    cfg = self.config
    examples, positives, negatives = self.examples(step)
    out = _prefixed("q", self.tokenizer.questions([e.question for e in examples], cfg.question_max_length))
    out.update(_prefixed("pos", tokenize_passages(self.tokenizer, positives, cfg.passage_max_length)))
    if negatives:
      out.update(_prefixed("neg", tokenize_passages(self.tokenizer, negatives, cfg.passage_max_length)))
    return out

  def iterate(self, start_step: int, end_step: int, prefetch: int = 2) -> Iterator[tuple[int, dict]]:
    """(step, batch) for start_step <= step < end_step, tokenised ahead in a background thread."""
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


def eval_batches(source: ExampleSource, tokenizer, *, batch_size: int, question_max_length: int,
                 passage_max_length: int, max_examples: int | None = None, process_index: int = 0,
                 process_count: int = 1) -> Iterator[dict[str, np.ndarray]]:
  """Validation batches in dataset order: each question, its first positive and first hard
  negative (or negative; none if it has neither, then a second copy of the positive is not
  added and `neg_valid` is 0). Only whole global batches are used."""
  n = len(source) if max_examples is None else min(len(source), max_examples)
  local = batch_size // process_count
  for start in range(0, n - batch_size + 1, batch_size):
    lo = start + process_index * local
    examples = [source[i] for i in range(lo, lo + local)]
    negs, valid = [], []
    for e in examples:
      pool = list(e.hard_negatives) or list(e.negatives)
      negs.append(pool[0] if pool else e.positives[0])
      valid.append(1 if pool else 0)
    out = _prefixed("q", tokenizer.questions([e.question for e in examples], question_max_length))
    out.update(_prefixed("pos", tokenize_passages(tokenizer, [e.positives[0] for e in examples], passage_max_length)))
    out.update(_prefixed("neg", tokenize_passages(tokenizer, negs, passage_max_length)))
    out["neg_valid"] = np.asarray(valid, np.int32)
    yield out


def log_fallbacks(batches: TrainBatches) -> None:
  if batches.num_fallback_negatives:
    logging.info("%s: %d hard negatives taken from other examples' positives (records without negatives)",
                 batches.source.name, batches.num_fallback_negatives)
