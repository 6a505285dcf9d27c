"""Passage files: DPR `psgs_w100.tsv` and BEIR `corpus.jsonl`, their rules and their readers.

The TSV rules, shared with `bpr_jax.passage_store` (`tsv_header`, `tsv_passage`):
the first non-blank line is a header when one of its fields is `id`; a header
must name `id`, `text` and `title` (any order, case-insensitive, other columns
ignored). Without one the columns are `id<TAB>text<TAB>title` (DPR's order).
Every record needs those columns and a non-empty id. Fields use csv-style
quoting (DPR writes the text in double quotes with inner quotes doubled); a
leading UTF-8 byte-order mark is ignored; `.gz` files are read as a stream.
The format is chosen by extension (.tsv/.jsonl, optionally .gz) and otherwise
by the first non-blank character ('{' means JSON lines).

`iter_passage_file` streams a file's passages; `scan_passage_file` checks a whole
file (records, emptiness, duplicate ids) in one pass and counts it; `count_passage_file`
only counts lines. `bpr_jax.data.passages` reads passages by name (a file, or a `tfds:NAME`
dataset) with them.
"""
from __future__ import annotations

import array
import csv
import dataclasses
import gzip
import io
import itertools
import os
from typing import IO, Iterator, Sequence

import numpy as np

from bpr_jax.data.examples import Passage, data_error, json_object, tsv_rows

TSV_HEADER = ("id", "text", "title")


def _open_text(path: str) -> IO[str]:
  # utf-8-sig: a leading byte-order mark is dropped, as PassageStore drops it.
  if path.endswith(".gz"):
    return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8-sig", newline="")
  return open(path, "r", encoding="utf-8-sig", newline="")


@dataclasses.dataclass(frozen=True)
class TsvColumns:
  """Positions of the id, text and title fields of a passage TSV."""
  id: int = 0
  text: int = 1
  title: int = 2

  @property
  def width(self) -> int:
    return max(self.id, self.text, self.title) + 1


def tsv_header(fields: Sequence[str]) -> TsvColumns | None:
  """The header rule (see the module docstring): columns of a header line, or None.

  `fields` is the first non-blank line, split. Returns None when it is not a
  header (no field is `id`); raises ValueError for a header that does not name
  `id`, `text` and `title`.
  """
  cols = [f.strip().lower() for f in fields]
  if cols:
    cols[0] = cols[0].lstrip("\ufeff").strip()
  if "id" not in cols:
    return None
  if any(c not in cols for c in TSV_HEADER):
    raise ValueError(f"TSV header {cols} must name the columns 'id', 'text' and 'title'")
  return TsvColumns(cols.index("id"), cols.index("text"), cols.index("title"))


def tsv_passage(fields: Sequence[str], columns: TsvColumns) -> Passage:
  """The record rule: one split TSV line -> Passage; ValueError when it is malformed."""
  if len(fields) < columns.width:
    raise ValueError(f"expected {columns.width} tab-separated fields (id, text, title), "
                     f"found {len(fields)}")
  pid = fields[columns.id].strip()
  if not pid:
    raise ValueError("empty passage id")
  return Passage(id=pid, title=fields[columns.title], text=fields[columns.text])


def split_tsv_line(line: str) -> list[str]:
  """Splits one TSV record (without its newline), honouring csv quoting (as `tsv_rows`)."""
  if '"' not in line:
    return line.split("\t")
  return next(csv.reader([line], delimiter="\t", quotechar='"'))


def passage_format(path: str | os.PathLike) -> str:
  """'tsv' or 'jsonl' for a passage file, by extension or by content."""
  path = os.fspath(path)
  stem = path[:-3] if path.endswith(".gz") else path
  if stem.endswith(".tsv"):
    return "tsv"
  if stem.endswith((".jsonl", ".json")):
    return "jsonl"
  with _open_text(path) as f:
    for line in f:
      if line.strip():
        return "jsonl" if line.lstrip().startswith("{") else "tsv"
  return "tsv"


def _tsv_record_error(path: str, line: int, first_line: int, row: Sequence[str],
                      error: ValueError) -> Exception:
  if line == first_line:
    return data_error(path, line, f"expected header 'id<TAB>text<TAB>title' or a passage "
                      f"record ({error}): {row!r}")
  return data_error(path, line, str(error))


def _iter_tsv(path: str, start: int) -> Iterator[Passage]:
  with _open_text(path) as f:
    rows = tsv_rows(path, f)
    first = next(rows, None)
    if first is None:
      raise data_error(path, 1, "empty file; expected passages (id<TAB>text<TAB>title)")
    try:
      columns = tsv_header(first[1])
    except ValueError as e:
      raise data_error(path, first[0], str(e)) from None
    if columns is None:  # no header: the first line is already a record
      columns = TsvColumns()
      rows = itertools.chain([first], rows)
    n = 0
    for line, row in rows:
      try:
        passage = tsv_passage(row, columns)
      except ValueError as e:
        raise _tsv_record_error(path, line, first[0], row, e) from None
      n += 1
      if n <= start:
        continue
      yield passage


def _iter_jsonl(path: str, start: int) -> Iterator[Passage]:
  with _open_text(path) as f:
    n = 0
    line_no = 0
    while True:
      try:
        line = f.readline()
      except UnicodeDecodeError as e:
        raise data_error(path, line_no + 1, f"invalid UTF-8: {e}") from None
      if not line:
        return
      line_no += 1
      if not line.strip():
        continue
      n += 1
      if n <= start:
        continue
      yield parse_corpus_line(path, line_no, line)


def parse_corpus_line(path: str, line_no: int, line: str) -> Passage:
  """One BEIR corpus.jsonl line -> Passage; DataError naming path:line when bad."""
  obj = json_object(path, line_no, line)
  pid = obj.get("_id", obj.get("id"))
  if isinstance(pid, bool) or not isinstance(pid, (str, int)) or not str(pid).strip():
    raise data_error(path, line_no, "missing or empty '_id'")
  text = obj.get("text")
  if not isinstance(text, str):
    raise data_error(path, line_no, "'text' missing or not a string")
  title = obj.get("title", "")
  if title is None:
    title = ""
  if not isinstance(title, str):
    raise data_error(path, line_no, "'title' is not a string")
  return Passage(id=str(pid).strip(), title=title, text=text)


def iter_passage_file(path: str | os.PathLike, *, start: int = 0) -> Iterator[Passage]:
  """Streams the passages of a DPR TSV or BEIR JSONL file, skipping the first `start`."""
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise data_error(path, 0, "file not found")
  if start < 0:
    raise ValueError(f"start must be >= 0, got {start}")
  if passage_format(path) == "jsonl":
    return _iter_jsonl(path, start)
  return _iter_tsv(path, start)


def count_passage_file(path: str | os.PathLike) -> int:
  """Number of passages in a TSV/JSONL passage file.

  Counts non-blank lines (minus the TSV header) on raw bytes, so it is fast on
  DPR's 21M-line file; it assumes no field spans several lines, which holds
  for DPR and BEIR files.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise data_error(path, 0, "file not found")
  opener = gzip.open if path.endswith(".gz") else open
  n = 0
  blank = 0
  tail = b"\n"
  with opener(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 24), b""):
      n += chunk.count(b"\n")
      blank += chunk.count(b"\n\n") + chunk.count(b"\n\r\n")
      if tail == b"\n" and chunk[:1] in (b"\n", b"\r"):
        blank += 1
      tail = chunk[-1:]
  if tail not in (b"\n", b""):
    n += 1
  n -= blank
  if passage_format(path) == "tsv" and n > 0 and _tsv_has_header(path):
    n -= 1
  return max(n, 0)


def _tsv_has_header(path: str) -> bool:
  """True when the first non-blank line of a TSV file is a header (`tsv_header`)."""
  with _open_text(path) as f:
    first = next(tsv_rows(path, f), None)
  if first is None:
    return False
  try:
    return tsv_header(first[1]) is not None
  except ValueError:
    return True  # a malformed header is still a header line; iter_passage_file reports it



# ---------------------------------------------------------------------------
# Checking a whole collection.

_scanned: dict[tuple[str, int, int], int] = {}


def _scan_tsv(path: str) -> Iterator[tuple[int, str]]:
  """(line number, id) of each record of a passage TSV, checked by the rules `iter_passage_file`
  applies (without building passages); DataError for an empty or header-only file."""
  with _open_text(path) as f:
    rows = tsv_rows(path, f)
    first = next(rows, None)
    if first is None:
      raise data_error(path, 1, "empty file; expected passages (id<TAB>text<TAB>title)")
    try:
      columns = tsv_header(first[1])
    except ValueError as e:
      raise data_error(path, first[0], str(e)) from None
    header = columns is not None
    if not header:
      columns = TsvColumns()
      rows = itertools.chain([first], rows)
    width, id_col = columns.width, columns.id
    n = 0
    for line, row in rows:
      pid = row[id_col].strip() if len(row) >= width else ""
      if not pid:
        try:
          tsv_passage(row, columns)
        except ValueError as e:
          raise _tsv_record_error(path, line, first[0], row, e) from None
      n += 1
      yield line, pid
    if n == 0 and header:
      raise data_error(path, first[0], "only a header line; no passages")


def _scan_jsonl(path: str) -> Iterator[tuple[int, str]]:
  """(line number, id) of each record of a corpus.jsonl, each parsed as `iter_passage_file` parses
  it; DataError for a file without records."""
  n = 0
  for line_no, passage in _numbered_jsonl(path):
    n += 1
    yield line_no, passage.id
  if n == 0:
    raise data_error(path, 1, "no passages (the file is empty or has only blank lines); "
                     "expected one JSON object per line")


def _numbered_jsonl(path: str) -> Iterator[tuple[int, Passage]]:
  with _open_text(path) as f:
    line_no = 0
    while True:
      try:
        line = f.readline()
      except UnicodeDecodeError as e:
        raise data_error(path, line_no + 1, f"invalid UTF-8: {e}") from None
      if not line:
        return
      line_no += 1
      if line.strip():
        yield line_no, parse_corpus_line(path, line_no, line)


def _scan_records(path: str) -> Iterator[tuple[int, str]]:
  return _scan_jsonl(path) if passage_format(path) == "jsonl" else _scan_tsv(path)


def scan_passage_file(path: str | os.PathLike) -> int:
  """Checks a DPR TSV or BEIR JSONL file in one streaming pass and returns its number of
  passages (the checks, cost and cache: `bpr_jax.data.passages.scan_passages`)."""
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise data_error(path, 0, "file not found")
  st = os.stat(path)
  key = (os.path.realpath(path), st.st_size, st.st_mtime_ns)
  if key in _scanned:
    return _scanned[key]
  hashes = array.array("q")
  for _, pid in _scan_records(path):
    hashes.append(hash(pid))
  ordered = np.sort(np.frombuffer(hashes, dtype=np.int64)) if hashes else np.zeros(0, np.int64)
  repeated = ordered[1:][ordered[1:] == ordered[:-1]]
  if repeated.size:
    _check_duplicates(path, set(repeated.tolist()))
  _scanned[key] = len(hashes)
  return len(hashes)


def _check_duplicates(path: str, candidates: set[int]) -> None:
  """Raises for the first id (in file order) seen twice among ids whose hash is a candidate."""
  seen: dict[str, int] = {}
  for line, pid in _scan_records(path):
    if hash(pid) in candidates:
      if pid in seen:
        raise data_error(path, line, f"duplicate passage id {pid!r} (first on line {seen[pid]})")
      seen[pid] = line
