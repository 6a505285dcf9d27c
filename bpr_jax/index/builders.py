"""Faiss binary index builders: one function from packed codes to an index.

Kinds:
  flat       ``IndexBinaryFlat``: exact Hamming top-l.
  hash       ``IndexBinaryHash(d, hash_bits)``: buckets on the first
             ``hash_bits`` bits (<= 64, faiss uses a uint64 key), probing all
             keys within ``nflip`` bit flips.
  multihash  ``IndexBinaryMultiHash(d, nhash, hash_bits)``: ``nhash`` tables
             over disjoint ``hash_bits``-bit slices (``nhash*hash_bits <= d``).
  ivf        ``IndexBinaryIVF`` over binary k-means centroids
             (``bpr_jax.index.ivf``).

``index_settings`` reads the kind and settings back from a faiss index;
``flat_codes_view`` exposes a flat index's storage as the codes array.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from bpr_jax.index.ivf import build_ivf

KINDS = ("flat", "hash", "multihash", "ivf")
MAX_HASH_BITS = 64


def default_hash_bits(num_passages: int, code_bits: int) -> int:
  """A bucket width giving ~256-512 passages per bucket on uniform codes."""
  b = int(math.floor(math.log2(max(num_passages, 2)))) - 8
  return int(min(MAX_HASH_BITS, code_bits, max(1, b)))


def build_index(codes: np.ndarray, kind: str, *, hash_bits: int | None = None,
                nflip: int | None = None, nhash: int | None = None, nlist: int | None = None,
                nprobe: int | None = None, train_size: int | None = None, seed: int = 0):
  """Builds a faiss binary index over packed codes [N, d/8].

  Args:
    codes: uint8 [N, d/8] packed codes (``bpr_jax.codes.pack_codes``).
    kind: "flat", "hash", "multihash" or "ivf".
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
    return build_ivf(codes, nlist, nprobe, train_size, seed)
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
