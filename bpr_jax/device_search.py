"""Exact Hamming top-k with the passage codes resident on the accelerator.

``DeviceHammingIndex`` uploads packed codes once and answers batches of
question codes on the device (GPU/TPU; also runs on CPU).  Distances come from
XOR + popcount or, on GPU, from a +-1 matmul on tensor cores
(``hamming = (d - <s_q, s_p>) / 2``); selection keeps each group's few best
rows and falls back to an exact merge for any question where that could have
lost a neighbour, so results are always exact.  ``benchmarks/device_speed.py``
measures it.  The host-side search (faiss) is ``bpr_jax.search``.
"""
from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from bpr_jax.shapes import next_pow2

_INT32_MAX = int(np.iinfo(np.int32).max)
# A single-block database is cut into at least this many groups (auto group size).
_MIN_GROUPS = 64


def _code_words(codes: jax.Array) -> jax.Array:
  """uint8 [..., nb] -> uint32 [..., nb/4]: little-endian words (a numpy ``view("<u4")``).

  Any fixed byte order gives the same Hamming distance (popcount of XOR) as
  long as questions and passages use the same one.
  """
  return jax.lax.bitcast_convert_type(codes.reshape(*codes.shape[:-1], -1, 4), jnp.uint32)


def _code_signs(codes: jax.Array, dtype) -> jax.Array:
  """uint8 [..., nb] -> +-1 [..., 8 nb] in ``dtype`` (MSB first, the ``bpr_jax.codes`` layout)."""
  shifts = jnp.arange(7, -1, -1, dtype=jnp.uint8)
  bits = (codes[..., None] >> shifts) & jnp.uint8(1)
  bits = bits.reshape(*codes.shape[:-1], codes.shape[-1] * 8).astype(dtype)
  return (bits * 2 - 1).astype(dtype)


def _merge_topk(best_d: jax.Array, best_r: jax.Array, d: jax.Array, r: jax.Array, k: int):
  """The k smallest (distance, row) pairs of both sets, lexicographically ordered."""
  cat_d = jnp.concatenate([best_d, d], axis=1)
  cat_r = jnp.concatenate([best_r, r], axis=1)
  cat_d, cat_r = jax.lax.sort((cat_d, cat_r), dimension=1, num_keys=2)
  return cat_d[:, :k], cat_r[:, :k]


def _device_hamming_search(db: jax.Array, q: jax.Array, *, k: int, nfull: int, n_tail: int,
                           method: str, matmul_dtype: str, groups: int, group: int,
                           group_k: int, grouped: bool):
  """Exact Hamming top-k of questions ``q`` [B, nb] over ``db`` [nblocks, c, nb] (uint8).

  Block b holds rows ``b*c .. b*c + c - 1``, stored group-major: position
  ``j*group + i`` is local row ``i*groups + j`` (group j = every ``groups``-th
  row from j), so passages that are neighbours in row order fall into different
  groups.  ``nfull`` blocks are complete; when ``n_tail`` > 0 block ``nfull``
  holds only ``n_tail`` valid rows.

  ``grouped``: each group keeps its ``group_k`` best rows (``lax.top_k`` on a
  float32 score, a fast small-k kernel on GPU) and only those are merged into
  the running top-k.  That is exact unless a group has more than ``group_k``
  members in the final top-k; the returned flag ``exact`` [B] is False where
  this cannot be ruled out (a group's ``group_k``-th kept pair is below the
  final k-th pair), and the caller redoes those questions with
  ``grouped=False``, which merges every block's exact top-k.

  Returns (dist int32 [B, k], rows int32 [B, k], exact bool [B]); pairs are
  ordered by (distance, row).
  """
  c = groups * group
  nb = db.shape[-1]
  d = 8 * nb
  bsz = q.shape[0]
  worst = d + 1
  if method == "popcount":
    qx = _code_words(q)
  else:
    qx = _code_signs(q, jnp.int8 if matmul_dtype == "int8" else jnp.bfloat16)
  # Local row of every stored position of a block, shaped [groups, group].
  local_of_pos = (jnp.arange(group, dtype=jnp.int32)[None, :] * groups
                  + jnp.arange(groups, dtype=jnp.int32)[:, None])

  def scores(b) -> jax.Array:
    """float32 [B, c], larger = closer: d - 2*hamming (matmul) or -hamming (popcount)."""
    blk = jax.lax.dynamic_index_in_dim(db, b, axis=0, keepdims=False)
    if method == "popcount":
      ham = jax.lax.population_count(qx[:, None, :] ^ _code_words(blk)[None]).astype(jnp.int32)
      return -ham.sum(-1).astype(jnp.float32)
    if matmul_dtype == "int8":
      dot = jnp.dot(qx, _code_signs(blk, jnp.int8).T, preferred_element_type=jnp.int32)
      return dot.astype(jnp.float32)
    return jnp.dot(qx, _code_signs(blk, jnp.bfloat16).T, preferred_element_type=jnp.float32)

  def to_dist(s: jax.Array) -> jax.Array:
    """Score (float32) -> Hamming distance (float32, exact small integers)."""
    return (d - s) * 0.5 if method == "matmul" else -s

  def step(carry, b, n_valid: int | None):
    best_d, best_r, m_d, m_r = carry
    s = scores(b)
    base = b * c
    if grouped:
      s = s.reshape(bsz, groups, group)
      if n_valid is not None:
        s = jnp.where((local_of_pos < n_valid)[None], s, -jnp.inf)
      v, i = jax.lax.top_k(s.reshape(bsz * groups, group), group_k)  # stable: lower i first
      v = v.reshape(bsz, groups, group_k)
      local = (i.reshape(bsz, groups, group_k) * groups
               + jnp.arange(groups, dtype=jnp.int32)[None, :, None])
      dist = to_dist(v)
      if n_valid is not None:
        ok = local < n_valid
        dist = jnp.where(ok, dist, worst)
        rows = jnp.where(ok, base + local, _INT32_MAX)
      else:
        rows = base + local
      dist = dist.astype(jnp.int32)
      # The (distance, row) of each group's last kept pair; every dropped pair is above it.
      last_d, last_r = dist[:, :, -1], rows[:, :, -1]
      bd = last_d.min(axis=1)
      br = jnp.where(last_d == bd[:, None], last_r, _INT32_MAX).min(axis=1)
      new_m = jnp.minimum(m_d, bd)
      m_r = jnp.minimum(jnp.where(m_d == new_m, m_r, _INT32_MAX),
                        jnp.where(bd == new_m, br, _INT32_MAX))
      m_d = new_m
      cand_d = dist.reshape(bsz, groups * group_k)
      cand_r = rows.reshape(bsz, groups * group_k)
    else:
      dist = to_dist(s).astype(jnp.int32)
      local = local_of_pos.reshape(-1)
      # One unique int32 key per pair: ordered by (distance, row) within the block.
      key = dist * c + local[None, :]
      if n_valid is not None:
        key = jnp.where((local < n_valid)[None, :], key, worst * c + local[None, :])
      neg, _ = jax.lax.top_k(-key, min(k, c))
      key = -neg
      cand_d = key // c
      cand_r = jnp.where(cand_d < worst, base + key % c, _INT32_MAX)
    best_d, best_r = _merge_topk(best_d, best_r, cand_d, cand_r, k)
    return best_d, best_r, m_d, m_r

  carry = (jnp.full((bsz, k), worst, jnp.int32), jnp.full((bsz, k), _INT32_MAX, jnp.int32),
           jnp.full((bsz,), worst + 1, jnp.int32), jnp.full((bsz,), _INT32_MAX, jnp.int32))
  if nfull:
    carry, _ = jax.lax.scan(lambda cr, b: (step(cr, b, None), None), carry,
                            jnp.arange(nfull, dtype=jnp.int32))
  if n_tail:
    carry = step(carry, jnp.int32(nfull), n_tail)
  best_d, best_r, m_d, m_r = carry
  if grouped:
    th_d, th_r = best_d[:, -1], best_r[:, -1]
    exact = (m_d > th_d) | ((m_d == th_d) & (m_r >= th_r))
  else:
    exact = jnp.ones((bsz,), bool)
  return best_d, best_r, exact


class DeviceHammingIndex:
  """Exact Hamming top-k over passage codes held on a JAX device.

  The packed codes are put on the device once, at construction (padded to a
  whole number of blocks); ``search`` sends only the questions and gets back
  only the top-k.  It is the one JAX Hamming top-k of the package (the host
  path is faiss, ``bpr_jax.search``).

  Each search scans the database block by block (``lax.scan``) and merges a
  running top-k.  Distances of a question batch to a block come from
  ``method``:

  * ``'popcount'``: XOR + ``lax.population_count`` over uint32 words;
  * ``'matmul'``: the block's bits are unpacked on the device to +-1
    (bfloat16, or int8 with ``matmul_dtype='int8'``) and
    ``hamming = (d - <s_q, s_p>) / 2`` comes from one matmul with float32
    (int32) accumulation, which runs on tensor cores on a GPU.  Exact: every
    partial sum is an integer of magnitude <= d.

  Default: 'matmul' when ``jax.default_backend() == 'gpu'``, else 'popcount'.

  Selection: with grouping on (the default), every block is cut into groups
  of ``group`` rows taken with a stride (row order neighbours land in
  different groups), each group keeps its ``group_k`` nearest rows with a
  small-k ``lax.top_k`` (a dedicated kernel on GPU, no sort of the block), and
  only those enter the merge.  The result is checked: a question for which a
  group could have held more than ``group_k`` of its top k is searched again
  without grouping (every block's exact top-k is merged; slower, always
  exact), so results are always exact.  ``group=0`` turns grouping off.

  Args:
    codes: uint8 [N, d/8] packed codes (``bpr_jax.codes`` layout), d a
      multiple of 32.
    method: 'popcount' or 'matmul' (default: by backend, see above).
    block: rows per scan step (rounded down to a multiple of the group size;
      memory per step is O(batch * block)).
    group: rows per selection group; None picks 2048, less for a small
      database so that a block still has 64 groups; 0 disables grouping.
    group_k: rows kept per group (<= 16 keeps the fast GPU top-k kernel).
    matmul_dtype: 'bfloat16' or 'int8', the +-1 operand type of 'matmul'.
    max_batch: questions per device call; larger batches are split, smaller
      ones padded to a power of two (one compiled function per padded batch
      and k).
    device: the device (default: ``jax.devices()[0]``).

  ``search`` returns (distances int32 [B, k] ascending, rows int64 [B, k]),
  lower rows first among equal distances.  ``fallback_queries`` counts the
  questions searched again.
  """

  METHODS = ("popcount", "matmul")
  MATMUL_DTYPES = ("bfloat16", "int8")

  def __init__(self, codes: np.ndarray, *, method: str | None = None, block: int = 262144,
               group: int | None = None, group_k: int = 16, matmul_dtype: str = "bfloat16",
               max_batch: int = 1024, device: Any = None):
    codes = np.asarray(codes)
    if codes.ndim != 2:
      raise ValueError(f"codes must be 2-D [N, d/8], got shape {codes.shape}")
    if codes.dtype != np.uint8:
      raise ValueError(f"codes must be uint8, got {codes.dtype}")
    n, nb = codes.shape
    if n < 1:
      raise ValueError("the database is empty")
    if nb < 1 or nb % 4:
      raise ValueError(f"code bits must be a positive multiple of 32, got {8 * nb}")
    if n >= _INT32_MAX:
      raise ValueError(f"too many codes ({n}); rows must fit in int32")
    if method is None:
      method = "matmul" if jax.default_backend() == "gpu" else "popcount"
    if method not in self.METHODS:
      raise ValueError(f"method must be one of {self.METHODS}, got {method!r}")
    if matmul_dtype not in self.MATMUL_DTYPES:
      raise ValueError(f"matmul_dtype must be one of {self.MATMUL_DTYPES}, got {matmul_dtype!r}")
    for name, v in (("block", block), ("group_k", group_k), ("max_batch", max_batch)):
      if not isinstance(v, (int, np.integer)) or v < 1:
        raise ValueError(f"{name} must be a positive integer, got {v!r}")
    d = 8 * nb
    if group is None:
      g = min(2048, block, max(2 * group_k, -(-min(n, block) // _MIN_GROUPS)))
    elif not isinstance(group, (int, np.integer)) or group < 0:
      raise ValueError(f"group must be None or an integer >= 0, got {group!r}")
    else:
      g = int(group)
    self.grouped = g > 0
    if self.grouped:
      if g <= group_k:
        raise ValueError(f"group ({g}) must be larger than group_k ({group_k})")
      if g > block:
        raise ValueError(f"group ({g}) must not exceed block ({block})")
      groups = max(1, min(block // g, -(-n // g)))
    else:
      g, groups = min(block, n), 1
    c = groups * g
    if (d + 2) * c >= 2 ** 31:
      raise ValueError(f"block of {c} rows is too large for {d}-bit codes (int32 keys)")
    self.ntotal = n
    self.code_bytes = nb
    self.code_bits = d
    self.method = method
    self.matmul_dtype = matmul_dtype
    self.group = g
    self.groups = groups
    self.group_k = int(group_k)
    self.block = c
    self.max_batch = int(max_batch)
    self.nblocks = -(-n // c)
    self.n_tail = n - (self.nblocks - 1) * c if n % c else 0
    self.nfull = self.nblocks - (1 if self.n_tail else 0)
    self.device = device if device is not None else jax.devices()[0]
    self.fallback_queries = 0
    self.last_fallback = 0
    self._compiled: dict[tuple[int, int, bool], Any] = {}
    # Host copy in the device layout (block b, position j*g + i = local row i*groups + j),
    # built block by block, then one transfer.
    host = np.zeros((self.nblocks, c, nb), np.uint8)
    for b in range(self.nblocks):
      rows = codes[b * c:(b + 1) * c]
      if rows.shape[0] < c:
        rows = np.concatenate([rows, np.zeros((c - rows.shape[0], nb), np.uint8)])
      host[b] = rows.reshape(g, groups, nb).transpose(1, 0, 2).reshape(c, nb)
    self.codes = jax.device_put(host, self.device)
    self.codes.block_until_ready()
    del host

  def __len__(self) -> int:
    return self.ntotal

  def _fn(self, bsz: int, k: int, grouped: bool):
    key = (bsz, k, grouped)
    fn = self._compiled.get(key)
    if fn is None:
      # The exact (grouped=False) path reads the same stored layout.
      jitted = jax.jit(functools.partial(
          _device_hamming_search, k=k, nfull=self.nfull, n_tail=self.n_tail, method=self.method,
          matmul_dtype=self.matmul_dtype, groups=self.groups, group=self.group,
          group_k=self.group_k, grouped=grouped))
      q_spec = jax.ShapeDtypeStruct((bsz, self.code_bytes), jnp.uint8)
      fn = jitted.lower(self.codes, q_spec).compile()
      self._compiled[key] = fn
    return fn

  @property
  def compiled_shapes(self) -> list[tuple[int, int, bool]]:
    """(padded batch, k, grouped) of every compiled search function."""
    return sorted(self._compiled)

  def _run(self, q: np.ndarray, k: int, grouped: bool):
    bsz = q.shape[0]
    bp = next_pow2(bsz)
    qp = np.zeros((bp, self.code_bytes), np.uint8)
    qp[:bsz] = q
    dist, rows, exact = self._fn(bp, k, grouped)(self.codes, jax.device_put(qp, self.device))
    return (np.array(dist)[:bsz], np.array(rows)[:bsz].astype(np.int64), np.array(exact)[:bsz])

  def search(self, q_codes: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact Hamming top-k of packed question codes.

    Args:
      q_codes: uint8 [B, d/8] question codes (``pack_codes``).
      k: neighbours per question, 1 <= k <= N.

    Returns:
      (distances int32 [B, k] ascending, rows int64 [B, k]); among equal
      distances lower rows come first.
    """
    q = np.asarray(q_codes)
    if q.ndim != 2 or q.shape[1] != self.code_bytes:
      raise ValueError(f"question codes must be [B, {self.code_bytes}], got shape {q.shape}")
    if q.dtype != np.uint8:
      raise ValueError(f"question codes must be uint8, got {q.dtype}")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
      raise ValueError(f"k must be an integer, got {k!r}")
    k = int(k)
    if not 1 <= k <= self.ntotal:
      raise ValueError(f"k must be in [1, N={self.ntotal}], got {k}")
    bsz = q.shape[0]
    out_d = np.zeros((bsz, k), np.int32)
    out_r = np.zeros((bsz, k), np.int64)
    self.last_fallback = 0
    for s in range(0, bsz, self.max_batch):
      part = q[s:s + self.max_batch]
      dist, rows, exact = self._run(part, k, self.grouped)
      redo = np.flatnonzero(~exact)
      if redo.size:
        dist[redo], rows[redo], _ = self._run(part[redo], k, False)
        self.last_fallback += int(redo.size)
      out_d[s:s + part.shape[0]] = dist
      out_r[s:s + part.shape[0]] = rows
    self.fallback_queries += self.last_fallback
    return out_d, out_r
