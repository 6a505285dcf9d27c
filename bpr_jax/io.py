"""Files: atomic writes, checksums and safe loading, the one place for them.

Every file a command writes goes through a temporary name in the same folder
and an ``os.replace`` (atomic on POSIX), so a reader sees the old file or the
new one, never half of one; a folder is built beside its final name and
renamed into place (``atomic_directory``).  Temporary files get the
permissions a plain ``open`` would give under the current umask.

Arrays are saved and loaded without pickle (``allow_pickle=False``);
``load_npy`` turns a truncated or foreign file into a clear ``ValueError``.
Manifests record ``{"sha256", "bytes"}`` of each file (``file_record``),
checked on load by ``check_file``.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pathlib
import shutil
import tempfile
from typing import IO, Any, Iterator

import numpy as np

PathLike = str | os.PathLike


def _umask() -> int:
  mask = os.umask(0)
  os.umask(mask)
  return mask


def _file_mode() -> int:
  """Permissions a plain open() would give a new file under the current umask."""
  return 0o666 & ~_umask()


def temp_path(path: PathLike) -> pathlib.Path:
  """A new empty temp file beside ``path`` (hidden name, ``.tmp`` suffix).

  The caller writes it and ``os.replace``s it onto ``path``, or unlinks it.
  The parent folder is created when missing.
  """
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
  os.close(fd)
  os.chmod(name, _file_mode())
  return pathlib.Path(name)


@contextlib.contextmanager
def atomic_file(path: PathLike, mode: str = "w", *, newline: str | None = None,
                fsync: bool = True) -> Iterator[IO[Any]]:
  """Yields an open temp file that replaces ``path`` when the block succeeds.

  ``mode`` is "w" (UTF-8 text, ``newline`` as in ``open``) or "wb".  On an
  exception the temp file is removed and ``path`` is left untouched.
  """
  if mode not in ("w", "wb"):
    raise ValueError(f"mode must be 'w' or 'wb', got {mode!r}")
  path = pathlib.Path(path)
  tmp = temp_path(path)
  try:
    if mode == "w":
      f = open(tmp, "w", encoding="utf-8", newline=newline)  # pylint: disable=consider-using-with
    else:
      f = open(tmp, "wb")  # pylint: disable=consider-using-with
    with f:
      yield f
      f.flush()
      if fsync:
        os.fsync(f.fileno())
    os.replace(tmp, path)
  finally:
    tmp.unlink(missing_ok=True)


def atomic_write_text(path: PathLike, text: str) -> None:
  """Writes ``text`` (UTF-8) to ``path`` through a temp file and a rename."""
  with atomic_file(path, "w") as f:
    f.write(text)


def atomic_write_json(path: PathLike, obj: Any, *, indent: int = 2, sort_keys: bool = True) -> None:
  """Writes ``obj`` as JSON (plus a final newline) to ``path``, atomically."""
  atomic_write_text(path, json.dumps(obj, indent=indent, sort_keys=sort_keys) + "\n")


def atomic_save_npy(path: PathLike, array: np.ndarray) -> None:
  """Writes ``array`` to ``path`` (.npy, no pickle) through a temp file and a rename."""
  with atomic_file(path, "wb") as f:
    np.save(f, np.asarray(array), allow_pickle=False)


def atomic_savez(path: PathLike, **arrays: np.ndarray) -> None:
  """Writes arrays to ``path`` (.npz, uncompressed, no pickle), atomically."""
  for name, a in arrays.items():
    if np.asarray(a).dtype == object:
      raise ValueError(f"array {name!r} has dtype object; it would need pickle")
  with atomic_file(path, "wb") as f:
    np.savez(f, **arrays)


@contextlib.contextmanager
def atomic_directory(out_dir: PathLike) -> Iterator[pathlib.Path]:
  """Yields a temp folder beside ``out_dir``; on success it replaces ``out_dir``.

  An existing ``out_dir`` is moved aside first and removed after the rename.
  On an exception the temp folder is removed and ``out_dir`` is untouched.
  """
  out_dir = pathlib.Path(out_dir)
  if out_dir.exists() and not out_dir.is_dir():
    raise FileExistsError(f"output path exists and is not a directory: {out_dir}")
  out_dir.parent.mkdir(parents=True, exist_ok=True)
  tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
  try:
    os.chmod(tmp, 0o777 & ~_umask())  # as a plain mkdir would (mkdtemp gives 0700)
    yield tmp
    old = None
    if out_dir.exists():
      old = pathlib.Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
      os.replace(out_dir, old / "x")
    os.replace(tmp, out_dir)
    if old is not None:
      shutil.rmtree(old, ignore_errors=True)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise


# ---------------------------------------------------------------------------
# Checksums and reading back.


def sha256_file(path: PathLike, block: int = 1 << 22) -> str:
  """Hex sha256 of a file, read in 4 MiB blocks."""
  h = hashlib.sha256()
  with open(path, "rb") as f:
    while True:
      buf = f.read(block)
      if not buf:
        break
      h.update(buf)
  return h.hexdigest()


def file_record(path: PathLike) -> dict[str, Any]:
  """{"sha256", "bytes"} of a file, as stored in manifests."""
  return {"sha256": sha256_file(path), "bytes": os.path.getsize(path)}


def check_file(path: PathLike, record: dict[str, Any] | None, verify: bool = True) -> None:
  """Checks ``path`` against its manifest ``record``.

  Raises FileNotFoundError when it is missing, ValueError when its size
  differs (truncated or rewritten) or, when ``verify``, its sha256 differs.
  """
  path = pathlib.Path(path)
  if not path.exists():
    raise FileNotFoundError(f"missing file {path}")
  if record is None:
    return
  size = path.stat().st_size
  if "bytes" in record and size != record["bytes"]:
    raise ValueError(
        f"{path}: size {size} != {record['bytes']} in manifest (truncated or rewritten file)")
  if verify and "sha256" in record and sha256_file(path) != record["sha256"]:
    raise ValueError(f"{path}: sha256 checksum mismatch with manifest (corrupted file)")


def read_json(path: PathLike) -> Any:
  """json.load of a file, with a ValueError naming the file for invalid JSON."""
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except json.JSONDecodeError as e:
    raise ValueError(f"{path}: invalid JSON ({e})") from None


def load_npy(path: PathLike, mmap: bool = True) -> np.ndarray:
  """np.load (no pickle), memory-mapped when ``mmap``; clear errors for bad files."""
  path = pathlib.Path(path)
  if not path.exists():
    raise FileNotFoundError(f"missing file {path}")
  try:
    return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
  except (ValueError, OSError, EOFError) as e:
    raise ValueError(f"{path}: truncated or invalid .npy file ({e})") from None
