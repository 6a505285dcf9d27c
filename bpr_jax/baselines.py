"""Research baselines for ``bpr_jax.evaluate --baselines``: float and post-hoc compressed
retrieval over passage embeddings, to compare BPR's binary codes against.

Each function returns ``systems.System`` rows (a search function ``(q_emb [B, d], k) ->
(scores [B, k], rows [B, k])`` with its memory figures) that ``evaluate.evaluate_systems``
times and scores like the BPR rows:

  flat_ip   exact inner product over float32 embeddings (faiss IndexFlatIP)
  hnsw      HNSW graph over float32 embeddings (IndexHNSWFlat, M=32, efSearch=128)
  lsh       post-hoc LSH with ``code_bits`` bits (IndexLSH, random rotation)
  pq        product quantisation with ``code_bits / 8`` bytes (IndexPQ, M = bytes, 8 bits a
            code, inner-product ADC)
  sign-*    sign codes of a float model's embeddings searched by BPR's own two-stage search
            (``sign_systems``: what BPR's trained hash adds over binarising any encoder)

Usage::

  from bpr_jax import baselines, evaluate
  systems = baselines.float_systems(passage_emb, 768, ["flat_ip", "pq"], passage_ids)
  rows = evaluate.evaluate_systems(systems, question_emb, evaluate.Scorer(questions, [1, 20]))

faiss is imported when a baseline is built, not with this module.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from bpr_jax.systems import SearchFn, System, bpr_systems

BASELINES = ("flat_ip", "hnsw", "lsh", "pq")
SIZED_BASELINES = ("lsh", "pq")  # their code size follows the index's code bits (or baseline_bits)
HNSW_M = 32
HNSW_EF_SEARCH = 128
# faiss's k-means asks for this many training points per centroid (ClusteringParameters).
PQ_MIN_POINTS_PER_CENTROID = 39


def faiss_bytes(index) -> int:
  """Size in bytes of a faiss index as it would be saved (``faiss.serialize_index``)."""
  import faiss  # pylint: disable=import-outside-toplevel
  return int(faiss.serialize_index(index).size)


def faiss_search(index, negate: bool = False) -> SearchFn:
  """A search function over a faiss float index: ``(q_emb [B, d], k) -> (scores [B, k] float32,
  rows [B, k] int64)``, best first, padded with -inf / -1 past the index size.

  ``negate`` turns distances (lower is better, e.g. IndexLSH's Hamming) into scores.  BLAS is
  used even for single questions, so batched and one-at-a-time timings compare the same code.
  """
  def search(q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    import faiss  # pylint: disable=import-outside-toplevel
    old = faiss.cvar.distance_compute_blas_threshold
    faiss.cvar.distance_compute_blas_threshold = 1  # BLAS even for single questions
    try:
      dist, rows = index.search(np.ascontiguousarray(q, dtype=np.float32), min(k, index.ntotal))
    finally:
      faiss.cvar.distance_compute_blas_threshold = old
    rows = rows.astype(np.int64)
    scores = (-dist if negate else dist).astype(np.float32)
    scores = np.where(rows >= 0, scores, -np.inf).astype(np.float32)
    if rows.shape[1] < k:
      pad = k - rows.shape[1]
      rows = np.concatenate([rows, np.full((len(q), pad), -1, np.int64)], axis=1)
      scores = np.concatenate([scores, np.full((len(q), pad), -np.inf, np.float32)], axis=1)
    return scores, rows
  return search


def float_systems(embeddings: np.ndarray, code_bits: int, names: Sequence[str],
                  ids: np.ndarray, log: Callable[[str], None] | None = print,
                  ids_bytes: int | None = None) -> list[System]:
  """Float baselines (some of ``BASELINES``) over passage embeddings [N, d].

  ``ids[r]`` is the passage id of embedding row r; ``code_bits`` sizes ``lsh`` (bits) and
  ``pq`` (``code_bits / 8`` sub-quantisers); ``ids_bytes`` (default ``ids.nbytes``) is what the
  ids add to each row's ``index_bytes``.  On a corpus too small for faiss's k-means, ``pq`` says
  so once through ``log``.
  """
  import faiss  # pylint: disable=import-outside-toplevel

  emb = np.ascontiguousarray(embeddings, dtype=np.float32)
  n, d = emb.shape
  ids = np.asarray(ids)
  if ids.shape != (n,):
    raise ValueError(f"{n} passage embeddings but {ids.shape[0] if ids.ndim else 0} ids")
  ids_bytes = int(ids.nbytes) if ids_bytes is None else int(ids_bytes)
  systems = []
  for name in names:
    if name not in BASELINES:
      raise ValueError(f"unknown baseline {name!r}; expected some of {', '.join(BASELINES)}")
    negate = False  # faiss returns distances (lower is better) for LSH
    if name == "flat_ip":
      index = faiss.IndexFlatIP(d)
      bpp = 4.0 * d
    elif name == "hnsw":
      index = faiss.IndexHNSWFlat(d, HNSW_M, faiss.METRIC_INNER_PRODUCT)
      index.hnsw.efSearch = HNSW_EF_SEARCH
      bpp = 4.0 * d
    elif name == "lsh":
      index = faiss.IndexLSH(d, code_bits, True, False)
      index.train(emb)
      negate = True
      bpp = code_bits / 8
    else:
      m = code_bits // 8
      if d % m:
        raise ValueError(f"pq: dimension {d} is not divisible by M={m}")
      nbits = 8 if n >= 256 else max(1, int(np.log2(max(n, 2))))
      # inner-product ADC: the models score by <e_q, e_p>, so PQ must approximate that, not L2
      index = faiss.IndexPQ(d, m, nbits, faiss.METRIC_INNER_PRODUCT)
      want = PQ_MIN_POINTS_PER_CENTROID * 2 ** nbits
      if n < want:
        # faiss would warn once per sub-quantiser (M times); one line says it all.
        index.pq.cp.min_points_per_centroid = 1
        if log is not None:
          log(f"pq: trained on {n} passages, fewer than the {want} faiss asks for "
              f"({PQ_MIN_POINTS_PER_CENTROID} per centroid, {2 ** nbits} centroids); "
              "the PQ row is a weak baseline on this corpus")
      index.train(emb)
      bpp = m * nbits / 8
      if nbits != 8:
        name = f"pq{nbits}"
    index.add(emb)
    systems.append(System(name, faiss_search(index, negate), bpp, faiss_bytes(index) + ids_bytes,
                          ids))
  return systems


def sign_systems(embeddings: np.ndarray, ids: Sequence[str] | np.ndarray, *, l: int = 1000,
                 prefix: str = "sign") -> list[System]:
  """Sign codes of a float model's passage embeddings [N, d] (d a multiple of 8), searched by
  BPR's two-stage search and its two ablations (``systems.bpr_systems`` over a flat index of
  ``codes.pack_codes(embeddings)``).

  Rows are ``PREFIX-two-stage``, ``PREFIX`` (Hamming order only) and ``PREFIX-rerank-all``;
  question embeddings are the float model's own.
  """
  from bpr_jax.codes import pack_codes  # pylint: disable=import-outside-toplevel
  from bpr_jax.index import BinaryIndex  # pylint: disable=import-outside-toplevel

  emb = np.asarray(embeddings)
  if emb.ndim != 2 or len(emb) != len(ids):
    raise ValueError(f"{emb.shape} passage embeddings but {len(ids)} ids")
  if not np.isfinite(emb).all():
    raise ValueError("passage embeddings contain NaN or inf")
  index = BinaryIndex.from_arrays(pack_codes(emb), ids, kind="flat")
  names = {"bpr-flat": f"{prefix}-two-stage", "bpr-flat-no-rerank": prefix,
           "bpr-flat-no-candidates": f"{prefix}-rerank-all"}
  systems = bpr_systems(index, l)
  for s in systems:
    s.name = names[s.name]
  return systems
