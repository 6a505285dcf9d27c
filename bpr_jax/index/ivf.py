"""IVF binary indexes: two-level binary k-means, and rows read from the lists.

``build_ivf`` makes a faiss ``IndexBinaryIVF`` with an ``IndexBinaryFlat``
coarse quantiser over ``nlist`` centroids (default ``round(4 * sqrt(N))``),
probing ``nprobe`` lists per question.  Centroids come from a two-level
binary k-means (majority-vote bits) on a sample of at most
``train_per_list * nlist`` codes; passages are assigned through the same two
levels (exact at search time: the query side uses the flat quantiser).

A saved ivf index keeps no separate ``codes.npy``: ``renumber_ivf_file``
rewrites the row ids of a written index file into inverted-list order, so
row r's code sits at a computable offset of the list data, and
``IVFListCodes`` reads stage-2 reranking rows there (from faiss's own
memory mapping when the file was read with ``IO_FLAG_MMAP_IFC``).
"""
from __future__ import annotations

import dataclasses
import math
import pathlib

import numpy as np

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


def build_ivf(codes: np.ndarray, nlist: int | None, nprobe: int | None,
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


def renumber_ivf_file(path: pathlib.Path, index) -> np.ndarray:
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
