"""Binary passage indexes: build, save, load, plus the ``index`` command.

Input: the output folder of ``bpr_jax.encode`` (one shard: ``codes.npy``,
``ids.npy``, ``manifest.json``; or many shards in ``shard_00000/`` ...,
unioned in shard order).

Output folder layout (``save_index``)::

  index.faiss   faiss binary index (``write_index_binary``)
  codes.npy     uint8 [N, code_bits/8] packed sign codes, memory-mappable,
                used for stage-2 reranking (hash indexes cannot reconstruct)
  ids.npy       passage ids: int64 when every id is a canonical integer,
                else a fixed-width unicode array
  meta.json     kind, code_bits, num_passages, hash settings, sha256 and size
                of every file; written last, so its presence marks a
                complete index

Kinds:
  flat       ``IndexBinaryFlat``: exact Hamming top-l.
  hash       ``IndexBinaryHash(d, hash_bits)``: buckets on the first
             ``hash_bits`` bits (<= 64, faiss uses a uint64 key), probing all
             keys within ``nflip`` bit flips.
  multihash  ``IndexBinaryMultiHash(d, nhash, hash_bits)``: ``nhash`` tables
             over disjoint ``hash_bits``-bit slices (``nhash*hash_bits <= d``).

Usage::

  python -m bpr_jax.index --codes=C --kind=flat --output=I
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import pathlib
import tempfile
import time
from typing import Any, Sequence

import numpy as np

KINDS = ("flat", "hash", "multihash")
INDEX_FORMAT = "bpr-index-v1"
CODES_FORMAT = "bpr-codes-v1"
MAX_HASH_BITS = 64


# ---------------------------------------------------------------------------
# Atomic file helpers (shared with bpr_jax.encode).


def _tmp_path(path: pathlib.Path) -> pathlib.Path:
  fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
  os.close(fd)
  return pathlib.Path(name)


def atomic_save_npy(path: str | os.PathLike, array: np.ndarray) -> None:
  """Writes ``array`` to ``path`` (.npy) through a temp file and a rename."""
  path = pathlib.Path(path)
  tmp = _tmp_path(path)
  try:
    with open(tmp, "wb") as f:
      np.save(f, array, allow_pickle=False)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  finally:
    tmp.unlink(missing_ok=True)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
  """Writes ``text`` to ``path`` through a temp file and a rename."""
  path = pathlib.Path(path)
  tmp = _tmp_path(path)
  try:
    with open(tmp, "w", encoding="utf-8") as f:
      f.write(text)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  finally:
    tmp.unlink(missing_ok=True)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
  atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def sha256_file(path: str | os.PathLike, block: int = 1 << 22) -> str:
  """Hex sha256 of a file, read in 4 MiB blocks."""
  h = hashlib.sha256()
  with open(path, "rb") as f:
    while True:
      buf = f.read(block)
      if not buf:
        break
      h.update(buf)
  return h.hexdigest()


def file_record(path: str | os.PathLike) -> dict[str, Any]:
  """{"sha256", "bytes"} of a file, as stored in manifests."""
  return {"sha256": sha256_file(path), "bytes": os.path.getsize(path)}


def check_file(path: pathlib.Path, record: dict[str, Any] | None, verify: bool) -> None:
  """Raises ValueError when ``path`` is missing, truncated or its sha256 differs."""
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


def load_npy(path: str | os.PathLike, mmap: bool = True) -> np.ndarray:
  """np.load with a clear error for truncated or invalid .npy files."""
  path = pathlib.Path(path)
  if not path.exists():
    raise FileNotFoundError(f"missing file {path}")
  try:
    return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
  except (ValueError, OSError, EOFError) as e:
    raise ValueError(f"{path}: truncated or invalid .npy file ({e})") from None


# ---------------------------------------------------------------------------
# Passage ids.


def normalize_ids(ids: Sequence[Any] | np.ndarray) -> np.ndarray:
  """Passage ids as int64 when all are canonical integers, else unicode."""
  arr = np.asarray(ids)
  if arr.ndim != 1:
    raise ValueError(f"ids must be 1-D, got shape {arr.shape}")
  if arr.dtype.kind in "iu":
    return arr.astype(np.int64)
  strs = [str(x) for x in arr.tolist()]
  try:
    ints = [int(s) for s in strs]
  except ValueError:
    ints = None
  if ints is not None and all(str(i) == s for i, s in zip(ints, strs)) and (
      not ints or (min(ints) >= -(2**63) and max(ints) < 2**63)):
    return np.asarray(ints, dtype=np.int64)
  if not strs:
    return np.zeros((0,), dtype=np.int64)
  return np.asarray(strs, dtype=str)


def concat_ids(parts: Sequence[np.ndarray]) -> np.ndarray:
  """Concatenates id arrays; mixes of int and str ids become str."""
  if not parts:
    return np.zeros((0,), dtype=np.int64)
  if all(p.dtype.kind in "iu" for p in parts):
    return np.concatenate([p.astype(np.int64) for p in parts])
  return np.concatenate([p.astype(str) for p in parts])


# ---------------------------------------------------------------------------
# Reading the encode output.


@dataclasses.dataclass
class CodesDir:
  """Codes, ids and manifests read from an encode output folder."""

  codes: np.ndarray
  ids: np.ndarray
  manifests: list[dict[str, Any]]

  @property
  def code_bits(self) -> int:
    return int(self.codes.shape[1]) * 8


def _read_manifest(path: pathlib.Path) -> dict[str, Any]:
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except json.JSONDecodeError as e:
    raise ValueError(f"{path}: invalid JSON ({e})") from None


def _shard_dirs(codes_dir: pathlib.Path) -> list[pathlib.Path]:
  if (codes_dir / "manifest.json").exists():
    return [codes_dir]
  shards = sorted(p for p in codes_dir.glob("shard_*") if p.is_dir())
  if not shards:
    raise FileNotFoundError(
        f"{codes_dir}: no manifest.json and no shard_* folders; is it an encode output?")
  return shards


def load_codes_dir(codes_dir: str | os.PathLike, *, verify: bool = True,
                   mmap: bool = False) -> CodesDir:
  """Loads codes and ids from an encode output folder (one or many shards).

  Checks every shard is complete (has a manifest), that shard indexes are
  0..n-1 with no gap, that file sizes and sha256 checksums match the
  manifests (checksums only when ``verify``), and that codes and ids have the
  same length.  Shards are unioned in shard order.
  """
  codes_dir = pathlib.Path(codes_dir)
  if not codes_dir.is_dir():
    raise FileNotFoundError(f"codes folder {codes_dir} does not exist")
  dirs = _shard_dirs(codes_dir)
  codes_parts, id_parts, manifests = [], [], []
  for d in dirs:
    mpath = d / "manifest.json"
    if not mpath.exists():
      raise ValueError(f"{d}: shard has no manifest.json (encode did not finish)")
    m = _read_manifest(mpath)
    if m.get("format") != CODES_FORMAT:
      raise ValueError(f"{mpath}: not a {CODES_FORMAT} manifest")
    files = m.get("files", {})
    for name in ("codes.npy", "ids.npy"):
      check_file(d / name, files.get(name), verify)
    codes = load_npy(d / "codes.npy", mmap=mmap)
    ids = load_npy(d / "ids.npy", mmap=False)
    if codes.ndim != 2 or codes.dtype != np.uint8:
      raise ValueError(f"{d}/codes.npy: expected uint8 [N, bytes], got {codes.dtype} {codes.shape}")
    if codes.shape[0] != ids.shape[0]:
      raise ValueError(
          f"{d}: codes has {codes.shape[0]} rows but ids has {ids.shape[0]}")
    if m.get("num_passages", codes.shape[0]) != codes.shape[0]:
      raise ValueError(f"{d}: manifest says {m['num_passages']} passages, codes has {codes.shape[0]}")
    if m.get("code_bits", codes.shape[1] * 8) != codes.shape[1] * 8:
      raise ValueError(f"{d}: manifest code_bits {m['code_bits']} != {codes.shape[1] * 8}")
    codes_parts.append(codes)
    id_parts.append(ids)
    manifests.append(m)
  if len(dirs) > 1 or manifests[0].get("num_shards", 1) > 1:
    num_shards = {m.get("num_shards") for m in manifests}
    if len(num_shards) != 1:
      raise ValueError(f"{codes_dir}: shards disagree on num_shards: {sorted(num_shards)}")
    n = num_shards.pop()
    got = [m.get("shard_index") for m in manifests]
    if got != list(range(n)):
      raise ValueError(f"{codes_dir}: expected shards 0..{n - 1}, found {got}")
  widths = {c.shape[1] for c in codes_parts}
  if len(widths) != 1:
    raise ValueError(f"{codes_dir}: shards have different code widths {sorted(widths)}")
  codes = codes_parts[0] if len(codes_parts) == 1 else np.concatenate(codes_parts)
  return CodesDir(codes=codes, ids=concat_ids(id_parts), manifests=manifests)


# ---------------------------------------------------------------------------
# Building and saving.


def default_hash_bits(num_passages: int, code_bits: int) -> int:
  """A bucket width giving ~256-512 passages per bucket on uniform codes."""
  b = int(math.floor(math.log2(max(num_passages, 2)))) - 8
  return int(min(MAX_HASH_BITS, code_bits, max(1, b)))


def build_index(codes: np.ndarray, kind: str, *, hash_bits: int | None = None,
                nflip: int | None = None, nhash: int | None = None):
  """Builds a faiss binary index over packed codes [N, d/8].

  Args:
    codes: uint8 [N, d/8] packed codes (``bpr_jax.codes.pack_codes``).
    kind: "flat", "hash" or "multihash".
    hash_bits: bits per hash key (<= 64); default ``default_hash_bits``.
    nflip: bit flips probed at search time; default 2 (hash), 1 (multihash).
    nhash: number of hash tables for multihash; default ``min(4, d // b)``.

  Returns:
    A faiss ``IndexBinary`` holding every code, row i = codes[i].
  """
  import faiss  # pylint: disable=import-outside-toplevel

  codes = np.asarray(codes)
  if codes.ndim != 2 or codes.dtype != np.uint8:
    raise ValueError(f"codes must be uint8 [N, d/8], got {codes.dtype} {codes.shape}")
  d = codes.shape[1] * 8
  if kind not in KINDS:
    raise ValueError(f"unknown index kind {kind!r}; expected one of {', '.join(KINDS)}")
  if kind == "flat":
    index = faiss.IndexBinaryFlat(d)
  else:
    b = default_hash_bits(codes.shape[0], d) if hash_bits is None else int(hash_bits)
    if not 1 <= b <= MAX_HASH_BITS:
      raise ValueError(
          f"hash_bits must be in [1, {MAX_HASH_BITS}] (faiss hash keys are uint64), got {b}")
    if b > d:
      raise ValueError(f"hash_bits={b} exceeds code bits {d}")
    if kind == "hash":
      index = faiss.IndexBinaryHash(d, b)
      index.nflip = 2 if nflip is None else int(nflip)
    else:
      nh = min(4, d // b) if nhash is None else int(nhash)
      if nh < 1 or nh * b > d:
        raise ValueError(f"multihash needs 1 <= nhash*hash_bits <= {d}, got {nh}*{b}")
      index = faiss.IndexBinaryMultiHash(d, nh, b)
      index.nflip = 1 if nflip is None else int(nflip)
    if index.nflip < 0 or index.nflip > b:
      raise ValueError(f"nflip must be in [0, hash_bits={b}], got {index.nflip}")
  step = 1 << 20
  for s in range(0, codes.shape[0], step):
    index.add(np.ascontiguousarray(codes[s:s + step]))
  return index


def index_settings(index) -> dict[str, Any]:
  """kind and hash settings of a faiss binary index."""
  import faiss  # pylint: disable=import-outside-toplevel

  if isinstance(index, faiss.IndexBinaryFlat):
    return {"kind": "flat"}
  if isinstance(index, faiss.IndexBinaryHash):
    return {"kind": "hash", "hash_bits": int(index.b), "nflip": int(index.nflip)}
  if isinstance(index, faiss.IndexBinaryMultiHash):
    return {"kind": "multihash", "hash_bits": int(index.b), "nflip": int(index.nflip),
            "nhash": int(index.nhash)}
  raise ValueError(f"unsupported faiss index type {type(index).__name__}")


def save_index(out_dir: str | os.PathLike, index, codes: np.ndarray, ids: Sequence[Any],
               meta: dict[str, Any] | None = None) -> dict[str, Any]:
  """Saves an index folder (layout in the module docstring); returns meta.

  Every file goes through a temp name and a rename; ``meta.json`` is written
  last with the sha256 of the others.
  """
  import faiss  # pylint: disable=import-outside-toplevel

  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  codes = np.asarray(codes)
  ids = normalize_ids(ids)
  if codes.shape[0] != ids.shape[0]:
    raise ValueError(f"codes has {codes.shape[0]} rows but ids has {ids.shape[0]}")
  if index.ntotal != codes.shape[0]:
    raise ValueError(f"index holds {index.ntotal} codes but codes has {codes.shape[0]} rows")
  if index.d != codes.shape[1] * 8:
    raise ValueError(f"index dimension {index.d} != code bits {codes.shape[1] * 8}")
  (out / "meta.json").unlink(missing_ok=True)  # an index being rewritten is incomplete
  tmp = _tmp_path(out / "index.faiss")
  try:
    faiss.write_index_binary(index, str(tmp))
    os.replace(tmp, out / "index.faiss")
  finally:
    tmp.unlink(missing_ok=True)
  atomic_save_npy(out / "codes.npy", np.ascontiguousarray(codes, dtype=np.uint8))
  atomic_save_npy(out / "ids.npy", ids)
  full = dict(meta or {})
  full.update(index_settings(index))
  full.update({
      "format": INDEX_FORMAT,
      "code_bits": int(codes.shape[1] * 8),
      "num_passages": int(codes.shape[0]),
      "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
      "files": {name: file_record(out / name) for name in ("index.faiss", "codes.npy", "ids.npy")},
  })
  atomic_write_json(out / "meta.json", full)
  return full


def build_from_codes_dir(codes_dir: str | os.PathLike, out_dir: str | os.PathLike, kind: str,
                         *, hash_bits: int | None = None, nflip: int | None = None,
                         nhash: int | None = None, verify: bool = True) -> dict[str, Any]:
  """Reads an encode output, builds an index of ``kind`` and saves it."""
  src = load_codes_dir(codes_dir, verify=verify)
  index = build_index(src.codes, kind, hash_bits=hash_bits, nflip=nflip, nhash=nhash)
  first = src.manifests[0]
  meta = {
      "source": str(pathlib.Path(codes_dir).resolve()),
      "model": first.get("model"),
      "passages": first.get("passages"),
      "num_shards": len(src.manifests),
  }
  return save_index(out_dir, index, src.codes, src.ids, meta)


# ---------------------------------------------------------------------------
# Loading.


@dataclasses.dataclass
class BinaryIndex:
  """A loaded binary index.

  Attributes:
    index: the faiss binary index (stage-1 candidates).
    codes: uint8 [N, code_bits/8] codes for reranking.  For ``flat`` this is a
      zero-copy view of the faiss index's own storage (no second copy in
      memory); otherwise ``codes.npy``, memory-mapped when ``mmap``.
    ids: passage ids [N] (int64 or unicode); row i has id ``ids[i]``.
    meta: the contents of ``meta.json`` (``code_bits``, ``kind``, ...).
    path: the folder it was loaded from (None when built in memory).
  """

  index: Any
  codes: np.ndarray
  ids: np.ndarray
  meta: dict[str, Any]
  path: pathlib.Path | None = None

  @property
  def code_bits(self) -> int:
    return int(self.meta["code_bits"])

  @property
  def kind(self) -> str:
    return str(self.meta["kind"])

  @property
  def ntotal(self) -> int:
    return int(self.codes.shape[0])

  @property
  def bytes_per_passage(self) -> float:
    return self.code_bits / 8

  def memory_bytes(self) -> int:
    """Bytes held for search: faiss index + ids (+ codes when stored apart)."""
    if self.path is not None and (self.path / "index.faiss").exists():
      faiss_bytes = (self.path / "index.faiss").stat().st_size
    else:
      faiss_bytes = self.ntotal * self.code_bits // 8
    extra = 0 if self.kind == "flat" else int(self.codes.nbytes)
    return int(faiss_bytes + self.ids.nbytes + extra)

  def ids_of(self, rows: np.ndarray) -> list[str]:
    """Passage ids (as str) for an array of rows; row -1 gives ""."""
    rows = np.asarray(rows).reshape(-1)
    return ["" if r < 0 else str(self.ids[r]) for r in rows.tolist()]

  @classmethod
  def from_arrays(cls, codes: np.ndarray, ids: Sequence[Any] | None = None, kind: str = "flat",
                  **kwargs) -> "BinaryIndex":
    """Builds an in-memory index (tests, benchmarks)."""
    codes = np.ascontiguousarray(codes, dtype=np.uint8)
    ids = normalize_ids(np.arange(codes.shape[0]) if ids is None else ids)
    if ids.shape[0] != codes.shape[0]:
      raise ValueError(f"codes has {codes.shape[0]} rows but ids has {ids.shape[0]}")
    index = build_index(codes, kind, **kwargs)
    meta = dict(index_settings(index), code_bits=codes.shape[1] * 8,
                num_passages=codes.shape[0], format=INDEX_FORMAT)
    if kind == "flat":
      codes = flat_codes_view(index, codes.shape[1])
    return cls(index=index, codes=codes, ids=ids, meta=meta)

  @classmethod
  def load(cls, path: str | os.PathLike, mmap: bool = True, verify: bool = True) -> "BinaryIndex":
    """Loads an index folder written by ``save_index``.

    Raises clear errors for a missing or incomplete folder, truncated files,
    checksum mismatches (sha256 checked when ``verify``) and length mismatches.
    """
    import faiss  # pylint: disable=import-outside-toplevel

    path = pathlib.Path(path)
    mpath = path / "meta.json"
    if not mpath.exists():
      raise FileNotFoundError(f"{path}: no meta.json; not a (complete) BPR index folder")
    meta = _read_manifest(mpath)
    if meta.get("format") != INDEX_FORMAT:
      raise ValueError(f"{mpath}: not a {INDEX_FORMAT} index")
    files = meta.get("files", {})
    for name in ("index.faiss", "codes.npy", "ids.npy"):
      check_file(path / name, files.get(name), verify)
    ids = load_npy(path / "ids.npy", mmap=False)
    try:
      index = faiss.read_index_binary(str(path / "index.faiss"))
    except RuntimeError as e:
      raise ValueError(f"{path}/index.faiss: cannot read faiss index ({e})") from None
    nbytes = meta["code_bits"] // 8
    if index.d != meta["code_bits"]:
      raise ValueError(f"{path}: faiss index has d={index.d}, meta says {meta['code_bits']}")
    if meta["kind"] == "flat":
      codes = flat_codes_view(index, nbytes)
    else:
      codes = load_npy(path / "codes.npy", mmap=mmap)
    if codes.ndim != 2 or codes.shape[1] != nbytes:
      raise ValueError(f"{path}: codes shape {codes.shape} does not match code_bits {meta['code_bits']}")
    if not codes.shape[0] == ids.shape[0] == index.ntotal == meta["num_passages"]:
      raise ValueError(
          f"{path}: length mismatch: codes {codes.shape[0]}, ids {ids.shape[0]}, "
          f"index {index.ntotal}, meta {meta['num_passages']}")
    return cls(index=index, codes=codes, ids=ids, meta=meta, path=path)


def flat_codes_view(index, nbytes: int) -> np.ndarray:
  """A zero-copy uint8 [N, nbytes] view of an IndexBinaryFlat's storage.

  The view is valid while ``index`` lives and no codes are added.
  """
  import faiss  # pylint: disable=import-outside-toplevel

  n = int(index.ntotal)
  if n == 0:
    return np.zeros((0, nbytes), dtype=np.uint8)
  flat = faiss.rev_swig_ptr(index.xb.data(), n * nbytes)
  return flat.reshape(n, nbytes)


# ---------------------------------------------------------------------------
# Command.


def _define_flags() -> None:
  from absl import flags  # pylint: disable=import-outside-toplevel

  flags.DEFINE_string("codes", None, "Output folder of bpr_jax.encode (one or many shards).")
  flags.DEFINE_enum("kind", "flat", list(KINDS), "Index kind.")
  flags.DEFINE_string("output", None, "Index output folder.")
  flags.DEFINE_integer("hash_bits", None, "Bits per hash key (<= 64); default from N.")
  flags.DEFINE_integer("nflip", None, "Bit flips probed (default 2 hash, 1 multihash).")
  flags.DEFINE_integer("nhash", None, "Hash tables for multihash (default 4).")
  flags.DEFINE_boolean("verify", True, "Check sha256 of the encode output.")
  flags.mark_flags_as_required(["codes", "output"])


def main(argv: Sequence[str]) -> None:
  from absl import app, flags  # pylint: disable=import-outside-toplevel

  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  f = flags.FLAGS
  t0 = time.time()
  try:
    meta = build_from_codes_dir(f.codes, f.output, f.kind, hash_bits=f.hash_bits,
                                nflip=f.nflip, nhash=f.nhash, verify=f.verify)
  except (ValueError, FileNotFoundError) as e:
    raise SystemExit(f"error: {e}") from None
  settings = {k: meta[k] for k in ("hash_bits", "nflip", "nhash") if k in meta}
  print(f"wrote {meta['kind']} index of {meta['num_passages']} passages x {meta['code_bits']} bits "
        f"{settings or ''} to {f.output} in {time.time() - t0:.1f}s")


if __name__ == "__main__":
  from absl import app as _app

  _define_flags()
  _app.run(main)
