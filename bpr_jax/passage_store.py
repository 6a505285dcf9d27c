"""Disk-backed passage lookup through a cached byte-offset index.

A passage corpus (DPR's 21M-passage Wikipedia TSV is ~13 GB) is far too big to
hold as a Python dict in a server. `PassageStore` scans the file once, records
the byte offset of every record and its id, and saves them as `.npy` arrays in a
cache folder. Later runs memory-map those arrays, and `get` reads each passage
with one positioned read (`os.pread`), so lookups are thread-safe and the
resident memory stays small.

Supported formats, with the rules of `bpr_jax.data.passages` (the reader
`bpr_jax.encode` uses, so row r here is row r of an index):
  * DPR TSV: `id<TAB>text<TAB>title`, optionally with a header line naming the
    columns in any order (`tsv_header`); every record needs the three columns
    and a non-empty id (`tsv_passage`). Fields may be CSV-quoted
    (`"a ""quoted"" word"`).
  * BEIR JSONL (`corpus.jsonl`): one object per line with `_id` (or `id`),
    `title` and `text` (`parse_corpus_line`).

The offset index is kept in a cache folder, never beside the corpus file:
`cache_dir`, else `$BPR_CACHE_DIR/passages`, else `~/.cache/bpr_jax/passages`
(`default_cache_dir`).  Its name is the file's name plus a hash of its absolute
path (two files of the same name do not collide) and the file's size and mtime
(any change to the file makes a new one; the old one is removed).  It is built in
a temporary folder and renamed into place, so readers never see a half-written
index, and a failed build leaves nothing behind.

Ids must be unique: a duplicate is a `PassageFormatError` naming the file, the id
and both line numbers.

  store = PassageStore("corpus.jsonl")
  store.get(["doc1"])                  # [(title, text)]
  store.get(ids, rows=rows_hint, default=("", ""))
"""
from __future__ import annotations

import array
import dataclasses
import hashlib
import json
import logging
import os
import pathlib
import shutil
import tempfile
from typing import Iterable, Sequence

import numpy as np

from bpr_jax.data.examples import DataError
from bpr_jax.data.passage_files import (TsvColumns, parse_corpus_line, split_tsv_line, tsv_header,
                                        tsv_passage)

_INDEX_VERSION = 2  # 2: the rules of bpr_jax.data.passage_files (header on the first non-blank line)
_CACHE_SUFFIX = ".pidx"
_OFFSETS = "offsets.npy"
_IDS = "ids.npy"
_ORDER = "order.npy"
_META = "meta.json"

logger = logging.getLogger(__name__)


class PassageFormatError(DataError):
  """The passage file cannot be parsed ("FILE:LINE: message")."""


@dataclasses.dataclass(frozen=True)
class _Layout:
  """How records are laid out in the file."""

  kind: str  # "tsv" or "jsonl"
  id_col: int = 0
  text_col: int = 1
  title_col: int = 2


def _detect_kind(path: pathlib.Path) -> str:
  name = path.name.lower()
  if name.endswith((".gz", ".bz2", ".xz", ".zst")):
    raise PassageFormatError(
        f"{path}: compressed passage files are not supported; decompress it first "
        "(random access needs byte offsets into the plain file)")
  if name.endswith((".jsonl", ".json")):
    return "jsonl"
  if name.endswith((".tsv", ".txt", ".csv")):
    return "tsv"
  with open(path, "rb") as f:
    head = f.read(1).lstrip()
  return "jsonl" if head == b"{" else "tsv"


def _split_tsv(line: bytes) -> list[str]:
  """Splits one TSV record (without its newline), honouring CSV quoting."""
  return split_tsv_line(line.decode("utf-8"))


def _columns(layout: "_Layout") -> TsvColumns:
  return TsvColumns(layout.id_col, layout.text_col, layout.title_col)


def _strip_newline(line: bytes) -> bytes:
  return line.rstrip(b"\r\n")


class PassageStore:
  """Looks passages up by id (or row) in a large TSV/JSONL file on disk.

  Args:
    path: the corpus file.
    cache_dir: where the offset index is kept (default: `default_cache_dir()`,
      `$BPR_CACHE_DIR/passages` or `~/.cache/bpr_jax/passages`).
  """

  def __init__(self, path: str | os.PathLike[str], cache_dir: str | os.PathLike[str] | None = None):
    self.path = pathlib.Path(path).resolve()
    if not self.path.is_file():
      raise FileNotFoundError(f"passage file not found: {self.path}")
    self.kind = _detect_kind(self.path)
    self.cache_dir = pathlib.Path(cache_dir) if cache_dir is not None else default_cache_dir()
    self.built = False  # True when this instance had to (re)build the index.
    self.index_dir = self._load_or_build()
    meta = json.loads((self.index_dir / _META).read_text())
    self._layout = _Layout(meta["kind"], meta["id_col"], meta["text_col"], meta["title_col"])
    self._columns = _columns(self._layout)
    self._offsets = np.load(self.index_dir / _OFFSETS, mmap_mode="r")
    self._ids = np.load(self.index_dir / _IDS, mmap_mode="r")
    self._order = np.load(self.index_dir / _ORDER, mmap_mode="r")
    self._fd = os.open(self.path, os.O_RDONLY)

  # ---------------------------------------------------------------- public API

  def __len__(self) -> int:
    return int(self._ids.shape[0])

  def __enter__(self) -> "PassageStore":
    return self

  def __exit__(self, *exc: object) -> None:
    self.close()

  def __del__(self) -> None:
    try:
      self.close()
    except Exception:  # pragma: no cover - interpreter shutdown
      pass

  def close(self) -> None:
    """Closes the corpus file."""
    fd = getattr(self, "_fd", None)
    if fd is not None:
      self._fd = None
      os.close(fd)

  def id_at(self, row: int) -> str:
    """The passage id stored at `row` (file order, 0-based)."""
    return bytes(self._ids[row]).decode("utf-8")

  def rows_of(self, ids: Sequence[str]) -> np.ndarray:
    """Row of each id, or -1 where the id is unknown."""
    if len(ids) == 0:
      return np.zeros((0,), np.int64)
    query = np.array([str(i).encode("utf-8") for i in ids], dtype=object)
    n = len(self)
    if n == 0:
      return np.full((len(ids),), -1, np.int64)
    pos = np.searchsorted(self._ids, query.astype(self._ids.dtype), sorter=self._order)
    rows = np.full((len(ids),), -1, np.int64)
    for j, (p, q) in enumerate(zip(pos, query)):
      if p < n:
        row = int(self._order[p])
        if bytes(self._ids[row]) == q:
          rows[j] = row
    return rows

  def get(
      self,
      ids: Sequence[str],
      *,
      rows: Sequence[int] | None = None,
      default: tuple[str, str] | None = None,
  ) -> list[tuple[str, str]]:
    """Returns `(title, text)` for each id.

    Args:
      ids: passage ids.
      rows: optional row hints (e.g. from the index); a hint is used when the
        id stored at that row matches, else the id is looked up.
      default: returned for unknown ids; when None an unknown id raises KeyError.
    """
    ids = [str(i) for i in ids]
    resolved = np.full((len(ids),), -1, np.int64)
    if rows is not None:
      if len(rows) != len(ids):
        raise ValueError(f"rows has {len(rows)} entries but ids has {len(ids)}")
      n = len(self)
      for j, (pid, row) in enumerate(zip(ids, rows)):
        if row is not None and 0 <= int(row) < n and self.id_at(int(row)) == pid:
          resolved[j] = int(row)
    todo = np.flatnonzero(resolved < 0)
    if todo.size:
      resolved[todo] = self.rows_of([ids[j] for j in todo])
    missing = [ids[j] for j in np.flatnonzero(resolved < 0)]
    if missing and default is None:
      shown = ", ".join(repr(m) for m in missing[:5])
      raise KeyError(f"{len(missing)} unknown passage id(s) in {self.path.name}: {shown}")
    return [default if r < 0 else self.get_row(int(r)) for r in resolved]  # type: ignore[misc]

  def get_rows(self, rows: Iterable[int]) -> list[tuple[str, str]]:
    """Returns `(title, text)` for each row."""
    return [self.get_row(int(r)) for r in rows]

  def get_row(self, row: int) -> tuple[str, str]:
    """Returns `(title, text)` of the passage at `row`."""
    if not 0 <= row < len(self):
      raise IndexError(f"row {row} out of range for {len(self)} passages")
    if self._fd is None:
      raise ValueError("PassageStore is closed")
    start, end = int(self._offsets[row]), int(self._offsets[row + 1])
    raw = os.pread(self._fd, end - start, start)
    line = _strip_newline(raw.split(b"\n", 1)[0])
    return self._parse(line, row)

  # ----------------------------------------------------------------- internals

  def _parse(self, line: bytes, row: int) -> tuple[str, str]:
    where = f"row {row}"
    try:  # Rows passed these rules when the index was built; this fails if the file changed.
      text = line.decode("utf-8")
      if self._layout.kind == "jsonl":
        p = parse_corpus_line(str(self.path), where, text)
      else:
        p = tsv_passage(split_tsv_line(text), self._columns)
    except DataError as e:
      raise PassageFormatError(str(e)) from None
    except ValueError as e:
      raise PassageFormatError(f"{self.path}:{where}: {e}") from None
    return p.title, p.text

  def _load_or_build(self) -> pathlib.Path:
    st = self.path.stat()
    key = hashlib.sha1(str(self.path).encode()).hexdigest()[:10]
    prefix = f"{self.path.name}.{key}"
    final = self.cache_dir / f"{prefix}.{st.st_size}.{st.st_mtime_ns}{_CACHE_SUFFIX}"
    if _valid_index(final, st):
      return final
    self.cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{prefix}.", suffix=".tmp", dir=self.cache_dir))
    try:
      os.chmod(tmp, 0o755)
      _build_index(self.path, self.kind, tmp, st)
      if self.path.stat().st_mtime_ns != st.st_mtime_ns:
        raise RuntimeError(f"{self.path} changed while its offset index was being built")
      try:
        os.rename(tmp, final)
      except OSError:
        if not _valid_index(final, st):  # Someone else won the race but left junk.
          shutil.rmtree(final, ignore_errors=True)
          os.rename(tmp, final)
    finally:
      if tmp.exists():
        shutil.rmtree(tmp, ignore_errors=True)
    self.built = True
    # Drop indexes of older versions of this file.
    for old in self.cache_dir.glob(f"{prefix}.*{_CACHE_SUFFIX}"):
      if old != final:
        shutil.rmtree(old, ignore_errors=True)
    return final


CACHE_ENV = "BPR_CACHE_DIR"


def cache_root() -> pathlib.Path:
  """bpr_jax's cache folder: `$BPR_CACHE_DIR`, else `~/.cache/bpr_jax`."""
  raw = os.environ.get(CACHE_ENV, "").strip()
  return pathlib.Path(raw).expanduser() if raw else pathlib.Path.home() / ".cache" / "bpr_jax"


def default_cache_dir() -> pathlib.Path:
  """Where offset indexes are kept by default: `cache_root() / "passages"`."""
  return cache_root() / "passages"


def _valid_index(folder: pathlib.Path, st: os.stat_result) -> bool:
  try:
    meta = json.loads((folder / _META).read_text())
  except (OSError, ValueError):
    return False
  return (meta.get("version") == _INDEX_VERSION and meta.get("size") == st.st_size
          and meta.get("mtime_ns") == st.st_mtime_ns
          and all((folder / f).is_file() for f in (_OFFSETS, _IDS, _ORDER)))


def _tsv_layout(path: pathlib.Path, lineno: int, header: bytes) -> _Layout | None:
  """The layout a first non-blank line declares, or None when it is a record."""
  try:
    columns = tsv_header(_split_tsv(header))
  except ValueError as e:
    raise PassageFormatError(f"{path}:{lineno}: {e}") from None
  if columns is None:
    return None
  return _Layout("tsv", columns.id, columns.text, columns.title)


def _record_id(line: bytes, layout: _Layout, path: pathlib.Path, lineno: int) -> bytes:
  """The id of one record, which must pass the reader's rules (`bpr_jax.data.passages`)."""
  try:
    text = line.decode("utf-8")
    if layout.kind == "jsonl":
      return parse_corpus_line(str(path), lineno, text).id.encode("utf-8")
    return tsv_passage(split_tsv_line(text), _columns(layout)).id.encode("utf-8")
  except DataError as e:  # already "FILE:LINE: message"
    raise PassageFormatError(str(e)) from None
  except ValueError as e:  # tsv_passage's rule, or invalid UTF-8
    raise PassageFormatError(f"{path}:{lineno}: {e}") from None


def _build_index(path: pathlib.Path, kind: str, out: pathlib.Path, st: os.stat_result) -> None:
  """Scans `path` once and writes offsets/ids/order/meta into `out`."""
  logger.info("Building passage offset index for %s", path)
  starts = array.array("q")  # Compact while scanning tens of millions of lines.
  linenos = array.array("q")  # Line of each record, for error messages.
  ids: list[bytes] = []
  layout = _Layout(kind)
  first = True
  offset = 0
  end = 0
  with open(path, "rb") as f:
    for lineno, line in enumerate(f, start=1):
      start, offset = offset, offset + len(line)
      body = _strip_newline(line)
      if lineno == 1 and body.startswith(b"\xef\xbb\xbf"):  # UTF-8 byte-order mark.
        body = body[3:]
        start += 3
      if not body.strip():
        continue
      if kind == "tsv" and first:
        first = False
        header = _tsv_layout(path, lineno, body)
        if header is not None:  # A header line (it names id, text and title).
          layout = header
          continue
      ids.append(_record_id(body, layout, path, lineno))
      starts.append(start)
      linenos.append(lineno)
      end = offset
  starts.append(end)
  offsets = np.frombuffer(starts, dtype=np.int64).copy()
  del starts
  width = max((len(i) for i in ids), default=1)
  id_arr = np.array(ids, dtype=f"S{max(width, 1)}")
  if any(i.endswith(b"\x00") for i in ids):
    raise PassageFormatError(f"{path}: passage ids must not end in NUL bytes")
  order = np.argsort(id_arr, kind="stable").astype(np.int64)
  if id_arr.size > 1:
    sorted_ids = id_arr[order]
    dup = np.flatnonzero(sorted_ids[1:] == sorted_ids[:-1])
    if dup.size:
      first, second = sorted((int(order[dup[0]]), int(order[dup[0] + 1])))
      more = f" ({dup.size} duplicates in all)" if dup.size > 1 else ""
      raise PassageFormatError(
          f"{path}: duplicate passage id {sorted_ids[dup[0]].decode('utf-8', 'replace')!r} on "
          f"lines {linenos[first]} and {linenos[second]}{more}; passage ids must be unique")
    del sorted_ids
  np.save(out / _OFFSETS, offsets)
  np.save(out / _IDS, id_arr)
  np.save(out / _ORDER, order)
  meta = {
      "version": _INDEX_VERSION, "path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns,
      "count": len(ids), "kind": layout.kind, "id_col": layout.id_col,
      "text_col": layout.text_col, "title_col": layout.title_col,
  }
  (out / _META).write_text(json.dumps(meta, indent=1))
  logger.info("Indexed %d passages of %s", len(ids), path)
