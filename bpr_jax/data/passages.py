"""Passage collections by name: a passage file or a `tfds:NAME` dataset.

A name is a DPR TSV or BEIR JSONL file (`bpr_jax.data.passage_files`: the formats' rules and
readers) or `tfds:NAME`, a dataset built by `bpr_jax.data.tfds` (e.g. tfds:dpr_wiki/psgs_w100).
`iter_passages` streams the passages; `scan_passages` checks a whole collection (records,
emptiness, duplicate ids) in one pass and counts it, before anything expensive is done with
it; `count_passages` only counts lines.
"""
from __future__ import annotations

import os
from typing import Iterator

from bpr_jax.data.examples import Passage, data_error
from bpr_jax.data.passage_files import count_passage_file, iter_passage_file, scan_passage_file

TFDS_PREFIX = "tfds:"


def _tfds_passages(spec: str):
  """The `tfds:NAME` passage source (e.g. tfds:dpr_wiki/psgs_w100, built by
  bpr_jax.data.tfds), read with tfds.data_source from $TFDS_DATA_DIR (or TFDS's default)."""
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

  import bpr_jax.data.tfds  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
  name = spec[len(TFDS_PREFIX):]
  try:
    return tfds.data_source(name, split="train", data_dir=os.environ.get("TFDS_DATA_DIR") or None)
  except Exception as e:  # tfds raises several types for a missing or unbuilt dataset
    raise data_error(spec, 0, f"cannot open the TFDS dataset: {e}") from None


def _text(value) -> str:
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _iter_tfds(spec: str, start: int) -> Iterator[Passage]:
  source = _tfds_passages(spec)
  for i in range(start, len(source)):
    record = source[i]
    yield Passage(id=_text(record["passage_id"]), title=_text(record["title"]), text=_text(record["text"]))


def iter_passages(path: str | os.PathLike, *, start: int = 0) -> Iterator[Passage]:
  """Streams the passages of a DPR TSV or BEIR JSONL file, or of a `tfds:NAME` dataset,
  skipping the first `start`."""
  path = os.fspath(path)
  if path.startswith(TFDS_PREFIX):
    if start < 0:
      raise ValueError(f"start must be >= 0, got {start}")
    return _iter_tfds(path, start)
  return iter_passage_file(path, start=start)


def count_passages(path: str | os.PathLike) -> int:
  """Number of passages in a TSV/JSONL passage file.

  Counts non-blank lines (minus the TSV header) on raw bytes, so it is fast on
  DPR's 21M-line file; it assumes no field spans several lines, which holds
  for DPR and BEIR files.
  """
  path = os.fspath(path)
  if path.startswith(TFDS_PREFIX):
    return len(_tfds_passages(path))
  return count_passage_file(path)


def scan_passages(path: str | os.PathLike) -> int:
  """Checks a passage collection in one streaming pass and returns its number of passages.

  Call it before anything expensive (loading a model, writing codes): a collection that
  `iter_passages` would fail on part-way, or that would give an index with two rows of one id,
  is refused up front with a one-line DataError ``FILE:LINE: fault``:

  - a missing file, an empty file, a TSV with only a header, a corpus.jsonl without records;
  - any record `iter_passages` refuses (bad quoting, invalid UTF-8, missing fields, an empty
    id, malformed JSON);
  - a passage id used twice, naming the id and both lines.

  Cost (DPR's 21M-passage TSV, ~1.5 minutes on one core): every record is parsed as
  `iter_passages` parses it, and each id is kept only as a 64-bit hash in one array (8 bytes a passage, ~170 MB), sorted once; equal
  hashes are confirmed exactly in a second pass that runs only when there are any.  The result
  is cached per process by (path, size, modification time), so a command that scans before
  loading its model and `bpr_jax.encode.encode_corpus` scanning again read the file once.

  A ``tfds:NAME`` source is only counted, not scanned (it was written by
  `bpr_jax.data.tfds` from a passage file; scan that file): reading 21M records back through
  TFDS to check them would cost as much as building it.
  """
  path = os.fspath(path)
  if path.startswith(TFDS_PREFIX):
    return len(_tfds_passages(path))
  return scan_passage_file(path)
