"""Common record types for retriever training data.

Every data loader in `bpr_jax.data` produces `Example`s made of `Passage`s and
reports problems with the input as `DataError("FILE:RECORD_OR_LINE: message")`.
"""
from __future__ import annotations

from typing import Iterator

import dataclasses
import os
import tempfile
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


def _file_mode() -> int:
  """Permissions a plain open() would give a new file under the current umask."""
  mask = os.umask(0)
  os.umask(mask)
  return 0o666 & ~mask


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
  """Writes `text` to `path` through a temporary file and a rename."""
  path = os.fspath(path)
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=directory)
  os.chmod(tmp, _file_mode())
  try:
    with os.fdopen(fd, "w", encoding="utf-8") as f:
      f.write(text)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise


class AtomicWriter:
  """Context manager yielding a text file that replaces `path` only on success."""

  def __init__(self, path: str | os.PathLike, *, newline: str | None = None):
    self.path = os.fspath(path)
    self._newline = newline
    self._tmp = ""
    self._file = None

  def __enter__(self):
    directory = os.path.dirname(os.path.abspath(self.path))
    os.makedirs(directory, exist_ok=True)
    fd, self._tmp = tempfile.mkstemp(
        prefix="." + os.path.basename(self.path) + ".", suffix=".tmp", dir=directory)
    os.chmod(self._tmp, _file_mode())
    self._file = os.fdopen(fd, "w", encoding="utf-8", newline=self._newline)
    return self._file

  def __exit__(self, exc_type, exc, tb) -> bool:
    assert self._file is not None
    self._file.close()
    if exc_type is None:
      os.replace(self._tmp, self.path)
    elif os.path.exists(self._tmp):
      os.unlink(self._tmp)
    return False
