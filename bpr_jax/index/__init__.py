"""Binary passage indexes: build, save, load, plus the ``index`` command.

Input: the output folder of ``bpr_jax.encode`` (one shard: ``codes.npy``,
``ids.npy``, ``manifest.json``; or many shards in ``shard_00000/`` ...,
unioned in shard order).

Output folder layout (``save_index``)::

  index.faiss   faiss binary index (``write_index_binary``)
  codes.npy     uint8 [N, code_bits/8] packed sign codes, memory-mappable,
                used for stage-2 reranking (hash indexes cannot reconstruct);
                not written for ivf (reranking reads the inverted lists)
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
  ivf        ``IndexBinaryIVF`` with an ``IndexBinaryFlat`` coarse quantiser
             over ``nlist`` centroids (default ``round(4 * sqrt(N))``),
             probing ``nprobe`` lists per question (stored in meta, settable
             at search time).  Centroids come from a two-level binary k-means
             (majority-vote bits) on a sample of at most
             ``train_per_list * nlist`` codes; passages are assigned through
             the same two levels (exact at search time: the query side uses
             the flat quantiser).  Saved folders hold no ``codes.npy``:
             ``save_index`` renumbers rows into inverted-list order, so row
             r's code sits at a computable offset of the lists in
             ``index.faiss`` and stage-2 reranking reads it there (the file is
             memory-mapped once, by faiss, with ``IO_FLAG_MMAP_IFC``).  Memory
             is the lists' 96 + 8 bytes per passage (code + row id); ``ids.npy``
             (passage ids) is memory-mapped too.

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

KINDS = ("flat", "hash", "multihash", "ivf")
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


# ---------------------------------------------------------------------------
# IVF: two-level binary k-means, assignment, and rows read from the lists.

DEFAULT_NPROBE = 32
DEFAULT_TRAIN_PER_LIST = 64
DEFAULT_KMEANS_ITERS = 8
# Up to this many lists, one level (every code compared with every centroid).
ONE_LEVEL_MAX_NLIST = 256
ASSIGN_CHUNK = 1 << 19


def default_nlist(num_passages: int) -> int:
  """round(4 * sqrt(N)), at least 1 and at most N."""
  return int(max(1, min(num_passages, round(4 * math.sqrt(max(num_passages, 1))))))


def _nearest(centroids: np.ndarray, x: np.ndarray) -> np.ndarray:
  """Row of the nearest centroid (Hamming) for every code in ``x``."""
  import faiss  # pylint: disable=import-outside-toplevel

  if centroids.shape[0] == 1:
    return np.zeros(x.shape[0], dtype=np.int64)
  q = faiss.IndexBinaryFlat(centroids.shape[1] * 8)
  q.add(np.ascontiguousarray(centroids))
  with _faiss_threads(1):
    _, a = q.search(np.ascontiguousarray(x), 1)
  return a[:, 0].astype(np.int64)


_BYTE_BITS = np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1).astype(np.float32)


class _faiss_threads:  # pylint: disable=invalid-name
  """Context manager: faiss OpenMP threads set to ``n`` inside, restored after.

  The ivf build runs many small faiss searches; with more threads than free
  cores OpenMP's spin-waiting made them 10-40x slower on the shared 2-core
  machine (k-means on 50k codes: 58 s with 2 threads, 1.4 s with 1), so
  they use one.
  """

  def __init__(self, n: int):
    self.n = n
    self.old = None

  def __enter__(self):
    import faiss  # pylint: disable=import-outside-toplevel
    self.old = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(self.n)

  def __exit__(self, *exc):
    import faiss  # pylint: disable=import-outside-toplevel
    faiss.omp_set_num_threads(self.old)


def binary_kmeans(x: np.ndarray, k: int, iters: int, rng: np.random.Generator) -> np.ndarray:
  """k centroids of packed codes x [n, nb] (n >= k): Hamming k-means.

  Starts from k distinct random rows; each iteration assigns every code to its
  nearest centroid and sets each centroid bit to the majority bit of its
  members (ties and empty clusters keep the old value).
  """
  n = x.shape[0]
  if not 1 <= k <= n:
    raise ValueError(f"k-means needs 1 <= k <= n, got k={k}, n={n}")
  cent = x[np.sort(rng.choice(n, k, replace=False))].copy()
  if k == 1 and iters > 0:
    iters = 1
  nb = x.shape[1]
  for _ in range(iters):
    a = _nearest(cent, x) if k > 1 else np.zeros(n, np.int64)
    counts = np.bincount(a, minlength=k)
    # Byte-value histograms per (cluster, byte position), then bits = hist @ bits of v.
    hist = np.empty((k, nb, 256), dtype=np.float32)
    key = a * 256
    for m in range(nb):
      hist[:, m, :] = np.bincount(key + x[:, m], minlength=k * 256).reshape(k, 256)
    ones = (hist @ _BYTE_BITS).reshape(k, nb * 8)  # exact: counts < 2**24
    twice = 2 * ones
    size = counts[:, None].astype(np.float32)
    old = np.unpackbits(cent, axis=1)
    new = np.where(twice > size, 1, np.where(twice < size, 0, old)).astype(np.uint8)
    cent = np.packbits(new, axis=1)
  return cent


def _split_lists(nlist: int, sizes: np.ndarray) -> np.ndarray:
  """Fine centroids per coarse group: proportional to size, >= 1, <= size, sum nlist."""
  sizes = np.asarray(sizes, dtype=np.int64)
  share = nlist * sizes / sizes.sum()
  k = np.clip(np.floor(share).astype(np.int64), 1, sizes)
  while k.sum() != nlist:
    if k.sum() < nlist:
      room = np.flatnonzero(k < sizes)
      k[room[np.argmax((share - k)[room])]] += 1
    else:
      room = np.flatnonzero(k > 1)
      k[room[np.argmin((share - k)[room])]] -= 1
  return k


@dataclasses.dataclass
class IVFCentroids:
  """Two-level centroids: ``fine`` [nlist, nb] grouped by coarse centroid.

  Fine centroids ``group_start[g]:group_start[g+1]`` belong to ``coarse[g]``.
  """

  coarse: np.ndarray
  fine: np.ndarray
  group_start: np.ndarray

  def assign(self, codes: np.ndarray, chunk: int = ASSIGN_CHUNK) -> np.ndarray:
    """List of every code: nearest coarse centroid, then nearest fine one in it."""
    n = codes.shape[0]
    out = np.empty(n, dtype=np.int64)
    for s in range(0, n, chunk):
      x = np.ascontiguousarray(codes[s:s + chunk])
      g = _nearest(self.coarse, x)
      order = np.argsort(g, kind="stable")
      bounds = np.searchsorted(g[order], np.arange(len(self.coarse) + 1))
      for j in range(len(self.coarse)):
        rows = order[bounds[j]:bounds[j + 1]]
        if len(rows):
          lo, hi = self.group_start[j], self.group_start[j + 1]
          out[s + rows] = lo + _nearest(self.fine[lo:hi], x[rows])
    return out


def train_ivf_centroids(codes: np.ndarray, nlist: int, *, train_size: int | None = None,
                        iters: int = DEFAULT_KMEANS_ITERS, seed: int = 0) -> IVFCentroids:
  """Two-level binary k-means on a sample of at most ``train_size`` codes.

  Level 1: ``round(sqrt(nlist))`` coarse centroids (one when nlist <= 256);
  level 2: each coarse group's sample split into a share of the ``nlist``
  fine centroids proportional to its size.  Cost ~ sample * 2 sqrt(nlist)
  Hamming comparisons per iteration, instead of sample * nlist.
  """
  n = codes.shape[0]
  if not 1 <= nlist <= n:
    raise ValueError(f"nlist must be in [1, N={n}], got {nlist}")
  rng = np.random.default_rng(seed)
  m = min(n, DEFAULT_TRAIN_PER_LIST * nlist if train_size is None else int(train_size))
  m = max(m, nlist)
  sample = np.asarray(codes[np.sort(rng.choice(n, m, replace=False))] if m < n else codes)
  nc = 1 if nlist <= ONE_LEVEL_MAX_NLIST else int(round(math.sqrt(nlist)))
  coarse = binary_kmeans(sample, nc, iters, rng)
  g = _nearest(coarse, sample)
  sizes = np.bincount(g, minlength=nc)
  keep = np.flatnonzero(sizes)  # a coarse centroid with no sample is dropped
  coarse, sizes = coarse[keep], sizes[keep]
  remap = np.full(nc, -1, np.int64)
  remap[keep] = np.arange(len(keep))
  g = remap[g]
  per = _split_lists(nlist, sizes)
  fine = []
  for j in range(len(coarse)):
    fine.append(binary_kmeans(sample[g == j], int(per[j]), iters, rng))
  start = np.concatenate([[0], np.cumsum(per)]).astype(np.int64)
  return IVFCentroids(coarse=coarse, fine=np.concatenate(fine), group_start=start)


def _build_ivf(codes: np.ndarray, nlist: int | None, nprobe: int | None,
               train_size: int | None, seed: int):
  import faiss  # pylint: disable=import-outside-toplevel

  n, nb = codes.shape
  if n == 0:
    raise ValueError("an ivf index needs at least one code")
  nl = default_nlist(n) if nlist is None else int(nlist)
  if not 1 <= nl <= n:
    raise ValueError(f"nlist must be in [1, N={n}], got {nl}")
  cents = train_ivf_centroids(codes, nl, train_size=train_size, seed=seed)
  quantizer = faiss.IndexBinaryFlat(nb * 8)
  quantizer.add(cents.fine)
  index = faiss.IndexBinaryIVF(quantizer, nb * 8, nl)
  quantizer.this.disown()
  index.own_fields = True
  index.is_trained = True
  index.nprobe = min(nl, DEFAULT_NPROBE if nprobe is None else int(nprobe))
  if index.nprobe < 1:
    raise ValueError(f"nprobe must be >= 1, got {nprobe}")
  for s in range(0, n, ASSIGN_CHUNK):
    x = np.ascontiguousarray(codes[s:s + ASSIGN_CHUNK])
    a = cents.assign(x)
    rows = np.arange(s, s + x.shape[0], dtype=np.int64)
    index.add_core(x.shape[0], faiss.swig_ptr(x), faiss.swig_ptr(rows), faiss.swig_ptr(a))
  return index


def ivf_list_sizes(index) -> np.ndarray:
  """int64 [nlist] sizes of an IndexBinaryIVF's inverted lists."""
  il = index.invlists
  return np.fromiter((il.list_size(i) for i in range(index.nlist)), dtype=np.int64,
                     count=index.nlist)


def _ivf_data(path: pathlib.Path, index) -> tuple[np.ndarray, np.ndarray, int]:
  """(file bytes as uint8 memmap, list sizes, offset of the list data).

  faiss writes an IndexBinaryIVF's lists last, list by list, each as its
  codes then its int64 ids, so the data is the last N * (code_size + 8)
  bytes of the file.
  """
  sizes = ivf_list_sizes(index)
  cs = int(index.code_size)
  total = int(sizes.sum())
  if total != index.ntotal:
    raise ValueError(f"{path}: inverted lists hold {total} codes, index says {index.ntotal}")
  mm = np.memmap(path, dtype=np.uint8, mode="r")
  start = mm.shape[0] - total * (cs + 8)
  if start < 0:
    raise ValueError(f"{path}: file too short for {total} inverted-list entries")
  return mm, sizes, start


def _renumber_ivf_file(path: pathlib.Path, index) -> np.ndarray:
  """Rewrites the list ids of a written IVF file to 0..N-1 in list order.

  Returns ``order``: new row r holds old row ``order[r]``.
  """
  sizes = ivf_list_sizes(index)
  cs = int(index.code_size)
  total = int(sizes.sum())
  mm = np.memmap(path, dtype=np.uint8, mode="r+")
  start = mm.shape[0] - total * (cs + 8)
  order = np.empty(total, dtype=np.int64)
  pos = 0
  off = start
  for sz in sizes.tolist():
    if sz:
      ids_at = off + sz * cs
      order[pos:pos + sz] = mm[ids_at:ids_at + 8 * sz].view("<i8")
      mm[ids_at:ids_at + 8 * sz] = np.arange(pos, pos + sz, dtype="<i8").view(np.uint8)
      pos += sz
      off += sz * (cs + 8)
  mm.flush()
  del mm
  return order


class IVFListCodes:
  """Read-only uint8 [N, code_size] rows of a saved ivf index, read from its lists.

  Rows are numbered in inverted-list order (``save_index`` renumbers them), so
  row r of list l is at ``start + 8 * first_row(l) + code_size * r`` in the
  list data.  Supports ``codes[int_array]`` (any shape; stage-2 gathers),
  ``codes[a:b]``, ``codes[i]`` and ``np.asarray(codes)``.
  """

  def __init__(self, data: np.ndarray, sizes: np.ndarray, code_size: int):
    self._data = data  # uint8 view of the list data (codes then ids, list by list)
    self._cs = int(code_size)
    self._n = int(sizes.sum())
    nz = sizes > 0
    self._first = np.concatenate([[0], np.cumsum(sizes)[:-1]])[nz].astype(np.int64)
    self.shape = (self._n, self._cs)
    self.ndim = 2
    self.dtype = np.dtype(np.uint8)
    self.nbytes = self._n * self._cs
    # A word view (8-byte units) makes gathers 8x shorter when code_size % 8 == 0.
    self._words = None
    if self._cs % 8 == 0 and data.shape[0] % 8 == 0:
      self._words = np.ndarray((data.shape[0] // 8,), dtype="<u8", buffer=data)

  def __len__(self) -> int:
    return self._n

  def check_ids(self) -> None:
    """Checks the first and last row id of every list (sequential numbering)."""
    cs = self._cs
    sizes = np.diff(np.concatenate([self._first, [self._n]]))
    for which in (0, -1):
      rows = self._first + (0 if which == 0 else sizes - 1)
      l_off = self._first * (cs + 8)  # byte offset of each list
      at = l_off + sizes * cs + (rows - self._first) * 8
      got = self._data[at[:, None] + np.arange(8)].copy().view("<i8")[:, 0]
      if not np.array_equal(got, rows):
        raise ValueError("ivf index rows are not in inverted-list order (not written by "
                         "bpr_jax.index.save_index?)")

  def _gather(self, rows: np.ndarray) -> np.ndarray:
    rows = np.asarray(rows, dtype=np.int64)
    if rows.size and (rows.min() < 0 or rows.max() >= self._n):
      raise IndexError(f"row out of range [0, {self._n})")
    first = self._first[np.searchsorted(self._first, rows, side="right") - 1]
    byte = first * (self._cs + 8) + (rows - first) * self._cs
    if self._words is not None:
      w = self._cs // 8
      out = self._words[(byte // 8)[..., None] + np.arange(w)]
      return out.view(np.uint8).reshape(rows.shape + (self._cs,))
    return self._data[byte[..., None] + np.arange(self._cs)]

  def __getitem__(self, key):
    if isinstance(key, slice):
      return self._gather(np.arange(*key.indices(self._n)))
    if isinstance(key, (int, np.integer)):
      k = int(key) + (self._n if key < 0 else 0)
      return self._gather(np.array([k]))[0]
    return self._gather(key)

  def __array__(self, dtype=None, copy=None):
    del copy
    arr = self._gather(np.arange(self._n))
    return arr if dtype is None else arr.astype(dtype)


def ivf_codes_view(path: pathlib.Path, index) -> IVFListCodes:
  """Rows of a saved ivf index read from its inverted lists.

  When faiss memory-mapped the file (``IO_FLAG_MMAP_IFC``) and its lists lie
  in one block, this views faiss's own mapping (no second mapping); otherwise
  it memory-maps the file.
  """
  import faiss  # pylint: disable=import-outside-toplevel

  mm, sizes, start = _ivf_data(path, index)
  cs = int(index.code_size)
  total = int(sizes.sum())
  data = mm[start:]
  nz = np.flatnonzero(sizes)
  if total and len(nz):
    il = index.invlists
    base = int(il.get_codes(int(nz[0])))
    firsts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    contiguous = all(
        int(il.get_codes(int(l))) == base + int(firsts[l]) * (cs + 8) for l in nz.tolist())
    if contiguous:
      data = faiss.rev_swig_ptr(il.get_codes(int(nz[0])), total * (cs + 8))
      data.flags.writeable = False  # faiss maps the file read-only
  return IVFListCodes(data, sizes, cs)


def build_index(codes: np.ndarray, kind: str, *, hash_bits: int | None = None,
                nflip: int | None = None, nhash: int | None = None, nlist: int | None = None,
                nprobe: int | None = None, train_size: int | None = None, seed: int = 0):
  """Builds a faiss binary index over packed codes [N, d/8].

  Args:
    codes: uint8 [N, d/8] packed codes (``bpr_jax.codes.pack_codes``).
    kind: "flat", "hash" or "multihash".
    hash_bits: bits per hash key (<= 64); default ``default_hash_bits``.
    nflip: bit flips probed at search time; default 2 (hash), 1 (multihash).
    nhash: number of hash tables for multihash; default ``min(4, d // b)``.
    nlist: ivf inverted lists; default ``default_nlist(N)`` = round(4 sqrt(N)).
    nprobe: ivf lists probed per question (default 32, changeable later).
    train_size: ivf k-means sample size (default 64 * nlist, at most N).
    seed: ivf sampling and k-means seed.

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
  if kind == "ivf":
    return _build_ivf(codes, nlist, nprobe, train_size, seed)
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
      index.nflip = min(2, b) if nflip is None else int(nflip)  # default capped for tiny corpora
    else:
      nh = min(4, d // b) if nhash is None else int(nhash)
      if nh < 1 or nh * b > d:
        raise ValueError(f"multihash needs 1 <= nhash*hash_bits <= {d}, got {nh}*{b}")
      index = faiss.IndexBinaryMultiHash(d, nh, b)
      index.nflip = min(1, b) if nflip is None else int(nflip)
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
  if isinstance(index, faiss.IndexBinaryIVF):
    return {"kind": "ivf", "nlist": int(index.nlist), "nprobe": int(index.nprobe)}
  raise ValueError(f"unsupported faiss index type {type(index).__name__}")


def save_index(out_dir: str | os.PathLike, index, codes: np.ndarray, ids: Sequence[Any],
               meta: dict[str, Any] | None = None) -> dict[str, Any]:
  """Saves an index folder (layout in the module docstring); returns meta.

  Every file goes through a temp name and a rename; ``meta.json`` is written
  last with the sha256 of the others.  For ivf, rows are renumbered into
  inverted-list order in the written file (``index`` itself is unchanged) and
  ``ids.npy`` is permuted to match; no ``codes.npy`` is written.
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
  settings = index_settings(index)
  is_ivf = settings["kind"] == "ivf"
  tmp = _tmp_path(out / "index.faiss")
  try:
    faiss.write_index_binary(index, str(tmp))
    if is_ivf:
      order = _renumber_ivf_file(tmp, index)
      ids = ids[order]
    os.replace(tmp, out / "index.faiss")
  finally:
    tmp.unlink(missing_ok=True)
  if is_ivf:
    (out / "codes.npy").unlink(missing_ok=True)
  else:
    atomic_save_npy(out / "codes.npy", np.ascontiguousarray(codes, dtype=np.uint8))
  atomic_save_npy(out / "ids.npy", ids)
  full = dict(meta or {})
  full.update(settings)
  names = ("index.faiss", "ids.npy") if is_ivf else ("index.faiss", "codes.npy", "ids.npy")
  full.update({
      "format": INDEX_FORMAT,
      "code_bits": int(codes.shape[1] * 8),
      "num_passages": int(codes.shape[0]),
      "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
      "files": {name: file_record(out / name) for name in names},
  })
  atomic_write_json(out / "meta.json", full)
  return full


def build_from_codes_dir(codes_dir: str | os.PathLike, out_dir: str | os.PathLike, kind: str,
                         *, hash_bits: int | None = None, nflip: int | None = None,
                         nhash: int | None = None, nlist: int | None = None,
                         nprobe: int | None = None, train_size: int | None = None,
                         verify: bool = True) -> dict[str, Any]:
  """Reads an encode output, builds an index of ``kind`` and saves it."""
  src = load_codes_dir(codes_dir, verify=verify)
  index = build_index(src.codes, kind, hash_bits=hash_bits, nflip=nflip, nhash=nhash,
                      nlist=nlist, nprobe=nprobe, train_size=train_size)
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
      memory); for a loaded ``ivf`` an ``IVFListCodes`` reading the inverted
      lists; otherwise ``codes.npy``, memory-mapped when ``mmap``.
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

  @property
  def nprobe(self) -> int | None:
    """ivf lists probed per question (None for other kinds)."""
    return int(self.index.nprobe) if self.kind == "ivf" else None

  @nprobe.setter
  def nprobe(self, value: int) -> None:
    if self.kind != "ivf":
      raise ValueError(f"nprobe applies to ivf indexes, not {self.kind}")
    if not 1 <= int(value) <= int(self.index.nlist):
      raise ValueError(f"nprobe must be in [1, nlist={int(self.index.nlist)}], got {value}")
    self.index.nprobe = int(value)

  def memory_bytes(self) -> int:
    """Bytes held for search: faiss index + ids (+ codes when stored apart).

    For ivf the codes live in the inverted lists (counted in the faiss file).
    """
    if self.path is not None and (self.path / "index.faiss").exists():
      faiss_bytes = (self.path / "index.faiss").stat().st_size
    else:
      faiss_bytes = self.ntotal * self.code_bits // 8
      if self.kind == "ivf":
        faiss_bytes += 8 * self.ntotal + int(self.index.nlist) * self.code_bits // 8
    extra = 0 if self.kind in ("flat", "ivf") else int(self.codes.nbytes)
    return int(faiss_bytes + self.ids.nbytes + extra)

  def ids_of(self, rows: np.ndarray) -> list[str]:
    """Passage ids (as str) for an array of rows; row -1 gives ""."""
    rows = np.asarray(rows).reshape(-1)
    return ["" if r < 0 else str(self.ids[r]) for r in rows.tolist()]

  @classmethod
  def from_arrays(cls, codes: np.ndarray, ids: Sequence[Any] | None = None, kind: str = "flat",
                  **kwargs) -> "BinaryIndex":
    """Builds an in-memory index (tests, benchmarks).

    For ivf, ``codes`` stays a separate in-memory array (rows in input order);
    only a saved and loaded ivf index reranks from its inverted lists.
    """
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
    is_ivf = meta.get("kind") == "ivf"
    names = ("index.faiss", "ids.npy") if is_ivf else ("index.faiss", "codes.npy", "ids.npy")
    for name in names:
      check_file(path / name, files.get(name), verify)
    ids = load_npy(path / "ids.npy", mmap=mmap and is_ivf)
    try:
      flags_ = faiss.IO_FLAG_MMAP_IFC if (is_ivf and mmap) else 0
      index = faiss.read_index_binary(str(path / "index.faiss"), flags_)
    except RuntimeError as e:
      raise ValueError(f"{path}/index.faiss: cannot read faiss index ({e})") from None
    nbytes = meta["code_bits"] // 8
    if index.d != meta["code_bits"]:
      raise ValueError(f"{path}: faiss index has d={index.d}, meta says {meta['code_bits']}")
    if meta["kind"] == "flat":
      codes = flat_codes_view(index, nbytes)
    elif meta["kind"] == "ivf":
      if not isinstance(index, faiss.IndexBinaryIVF):
        raise ValueError(f"{path}: meta says ivf but index.faiss is {type(index).__name__}")
      codes = ivf_codes_view(path / "index.faiss", index)
      codes.check_ids()
      if "nprobe" in meta:
        index.nprobe = int(meta["nprobe"])
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
  flags.DEFINE_integer("nlist", None, "ivf inverted lists (default round(4*sqrt(N))).")
  flags.DEFINE_integer("nprobe", None, f"ivf lists probed per question (default {DEFAULT_NPROBE}).")
  flags.DEFINE_integer("train_size", None, "ivf k-means sample (default 64*nlist).")
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
                                nflip=f.nflip, nhash=f.nhash, nlist=f.nlist, nprobe=f.nprobe,
                                train_size=f.train_size, verify=f.verify)
  except (ValueError, FileNotFoundError) as e:
    raise SystemExit(f"error: {e}") from None
  settings = {k: meta[k] for k in ("hash_bits", "nflip", "nhash", "nlist", "nprobe") if k in meta}
  print(f"wrote {meta['kind']} index of {meta['num_passages']} passages x {meta['code_bits']} bits "
        f"{settings or ''} to {f.output} in {time.time() - t0:.1f}s")


if __name__ == "__main__":
  from absl import app as _app

  _define_flags()
  _app.run(main)
