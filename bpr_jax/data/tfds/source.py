"""`TfdsSource`: an ExampleSource over a prepared `dpr_retriever` dataset."""
from __future__ import annotations

import os
from typing import Any, Iterator

import tensorflow_datasets as tfds

from bpr_jax.data.examples import Example, Passage, check_index


def _text(value: Any) -> str:
  return value.decode("utf-8") if isinstance(value, (bytes, bytearray)) else str(value)


def _passages(ctxs: dict) -> tuple[Passage, ...]:
  ids, titles, texts = ctxs["passage_id"], ctxs["title"], ctxs["text"]
  return tuple(Passage(id=_text(i), title=_text(t), text=_text(x)) for i, t, x in zip(ids, titles, texts))


def decode_example(record: dict) -> Example:
  """A `dpr_retriever` record from a TFDS data source -> Example."""
  return Example(
      question=_text(record["question"]),
      answers=tuple(_text(a) for a in record["answers"]),
      positives=_passages(record["positive_ctxs"]),
      negatives=_passages(record["negative_ctxs"]),
      hard_negatives=_passages(record["hard_negative_ctxs"]),
      qid=_text(record["qid"]),
  )


class TfdsSource:
  """Random access to `dpr_retriever/CONFIG` examples through tfds.data_source.

  `dataset` is "dpr_retriever/nq", "dpr_retriever/tqa" or an existing data
  source (anything indexable returning dpr_retriever records).
  """

  def __init__(self, dataset: str | Any = "dpr_retriever/nq", split: str = "train", *,
               data_dir: str | os.PathLike | None = None):
    if isinstance(dataset, str):
      # registers the builders with TFDS (their modules: the package itself imports this one)
      from bpr_jax.data.tfds import dpr_qas, dpr_retriever, dpr_wiki  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
      self._source = tfds.data_source(dataset, split=split, data_dir=None if data_dir is None else os.fspath(data_dir))
      self.name = f"tfds:{dataset}/{split}"
    else:
      self._source = dataset
      self.name = f"tfds:{getattr(dataset, 'name', type(dataset).__name__)}/{split}"

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, i: int) -> Example:
    return decode_example(self._source[check_index(i, len(self._source))])

  def __iter__(self) -> Iterator[Example]:
    for i in range(len(self)):
      yield self[i]
