"""Common record types for retriever training data.

Every data loader in `bpr_jax.data` produces `Example`s made of `Passage`s and
reports problems with the input as `DataError("FILE:RECORD_OR_LINE: message")`.
"""
from __future__ import annotations

from typing import Iterator

import dataclasses
import os
from typing import Protocol, runtime_checkable


@dataclasses.dataclass(frozen=True)
class Passage:
  """One retrieval unit: a titled chunk of text."""
  id: str
  title: str
  text: str


@dataclasses.dataclass(frozen=True)
class Example:
  """One training question with its positive and negative passages."""
  question: str
  answers: tuple[str, ...]
  positives: tuple[Passage, ...]
  negatives: tuple[Passage, ...]
  hard_negatives: tuple[Passage, ...]
  qid: str = ""


@runtime_checkable
class ExampleSource(Protocol):
  """Random-access collection of examples; callers shuffle indices themselves."""
  name: str

  def __len__(self) -> int:
    ...

  def __getitem__(self, i: int) -> Example:
    ...


class DataError(ValueError):
  """Bad input data; the message starts with "FILE:RECORD_OR_LINE: "."""


def data_error(path: str | os.PathLike, where: int | str, message: str) -> DataError:
  """Builds a one-line DataError for `path` at line/record `where`."""
  one_line = " ".join(str(message).split())
  return DataError(f"{os.fspath(path)}:{where}: {one_line}")


def tsv_rows(path: str, f) -> "Iterator[tuple[int, list[str]]]":
  """(line number, fields) of each non-blank tab-separated line of the open text file `f`.

  An unreadable line (bad quoting, invalid UTF-8) is a DataError naming `path` and the line.
  """
  import csv  # pylint: disable=import-outside-toplevel
  csv.field_size_limit(1 << 30)
  reader = csv.reader(f, delimiter="\t")
  while True:
    try:
      row = next(reader)
    except StopIteration:
      return
    except (csv.Error, UnicodeDecodeError) as e:
      raise data_error(path, reader.line_num, f"unreadable line: {e}") from None
    if row and any(c.strip() for c in row):
      yield reader.line_num, row


def json_object(path: str, line_no: int, line: str) -> dict:
  """One JSON-lines record, which must be an object; DataError naming path:line otherwise."""
  import json  # pylint: disable=import-outside-toplevel
  try:
    obj = json.loads(line)
  except json.JSONDecodeError as e:
    raise data_error(path, line_no, f"malformed JSON: {e.msg}") from None
  if not isinstance(obj, dict):
    raise data_error(path, line_no, f"expected a JSON object, found {type(obj).__name__}")
  return obj


def snippet(text: str, limit: int = 60) -> str:
  """Beginning of `text` on one line, for error messages."""
  flat = " ".join(str(text).split())
  return flat if len(flat) <= limit else flat[:limit] + "..."


def check_index(i: int, n: int) -> int:
  """Normalises a possibly negative index into [0, n) or raises IndexError."""
  i = int(i)
  if i < 0:
    i += n
  if not 0 <= i < n:
    raise IndexError(f"index {i} out of range for {n} examples")
  return i
