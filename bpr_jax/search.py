"""BPR two-stage retrieval over a binary passage index, and ``Retriever``, its Python API.

``Retriever`` (also ``from bpr_jax import Retriever``) is what a notebook, ``bpr_jax.serve`` and
``bpr_jax.evaluate`` use::

  r = Retriever.load(model=EXPORT, index=INDEX, passages=PASSAGES)
  r.search(["who wrote hamlet?"], k=10)  # [[{"id", "title", "text", "score", "row"}, ...]]
  r.encode_questions(texts), r.encode_passages(titles, texts), r.encode_codes(titles, texts)

Stage 1 (candidate generation): the question's sign code is matched against
the passage codes by Hamming distance with the faiss binary index, keeping the
top ``l`` (default 1000).  Stage 2 (reranking): those ``l`` passages are
rescored by ``<e_q, h_p>``, the inner product between the continuous question
embedding and the passage code read as a +-1 vector, and the top ``k`` are
returned.

Stage 2 uses a byte lookup table: for every question and every code byte
position m, ``T[m, v] = sum_j e_q[8m + j] * (+1 if bit j of v else -1)`` over
the 256 byte values v, so a candidate's score is the sum of 96 table entries
(at d = 768) picked by its code bytes.  This runs jitted in JAX on blocks of
questions and is ~3x faster than unpacking the codes to floats.

For an ``ivf`` index the reranking codes are read from the inverted lists of
the memory-mapped index file (``bpr_jax.index.ivf.IVFListCodes``); ``nprobe``
(lists probed) can be set per call.

Threads: stage 1 runs with faiss's OpenMP threads.  ``Retriever(threads=)``
or ``$BPR_SEARCH_THREADS`` sets them (``set_search_threads``); on a machine
whose cores are busy with other work one thread was up to 50x faster for
single questions than two (OpenMP spin-waiting), see
benchmarks/results/search_speed.md.

Ablations: ``rerank=False`` returns the Hamming order with score
``<h_q, h_p> = d - 2 * hamming``; ``candidates=False`` reranks every passage.

Nested codes: a model trained on prefixes of its code records their sizes (``bpr.json``
``nested_bits``, ``export_format.code_sizes``); an index of N-bit codes (``encode --code_bits=N``)
is searched with the first N dims of the question vector (``prefix_bits``), so the two stages
are Hamming over the first N bits and ``<e_q[:N], h_p[:N]>``.  An index whose code size the
model does not record is refused.

``Retriever`` refuses a model, index and passage file that do not belong together
(``check_pieces``: the index's ``meta.json`` records the model and passages its codes were made
from) unless ``allow_mismatch``.

Exact Hamming top-k on an accelerator (codes resident on the device) is
``bpr_jax.device_search.DeviceHammingIndex``, the one JAX implementation.
"""
from __future__ import annotations

import functools
import os
import pathlib
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from bpr_jax.codes import pack_codes, unpack_codes
from bpr_jax.index import BinaryIndex
from bpr_jax.shapes import next_pow2

# Questions per jitted rerank call; batches are padded up to a power of two
# (at most this) so only a handful of shapes are ever compiled.
RERANK_BLOCK = 128
# Passages per block in the exhaustive (no candidate generation) path.
EXHAUSTIVE_BLOCK = 32768


def _byte_signs() -> np.ndarray:
  """[256, 8] float32: +-1 signs of the 8 bits of each byte value, MSB first."""
  bits = np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1, bitorder="big")
  return bits.astype(np.float32) * 2.0 - 1.0


_BYTE_SIGNS = _byte_signs()


@functools.partial(jax.jit, static_argnames=("k",))
def _rerank_block(q_emb: jax.Array, cand_codes: jax.Array, valid: jax.Array, k: int):
  """Scores candidates by <e_q, h_p> and keeps the top k.

  Args:
    q_emb: float32 [b, d] question embeddings.
    cand_codes: uint8 [b, l, d/8] candidate codes.
    valid: bool [b, l], False for padding (scored -inf).
    k: number kept (<= l).

  Returns:
    (scores [b, k] float32, positions [b, k] int32 into the l candidates);
    ties keep the earlier (better Hamming) candidate first.
  """
  b, d = q_emb.shape
  nb = d // 8
  table = jnp.einsum("bmj,vj->bmv", q_emb.reshape(b, nb, 8), jnp.asarray(_BYTE_SIGNS),
                     precision=jax.lax.Precision.HIGHEST)  # [b, nb, 256]
  picked = jnp.take_along_axis(table[:, None], cand_codes[..., None].astype(jnp.int32),
                               axis=-1)[..., 0]  # [b, l, nb]
  scores = jnp.where(valid, picked.sum(-1), -jnp.inf)
  return jax.lax.top_k(scores, k)


def rerank_candidates(q_emb: np.ndarray, codes: np.ndarray, cand_rows: np.ndarray,
           k: int) -> tuple[np.ndarray, np.ndarray]:
  """Stage 2: reranks candidate rows by <e_q, h_p>.

  Args:
    q_emb: float32 [B, d] question embeddings.
    codes: uint8 [N, d/8] passage codes (array or memmap).
    cand_rows: int64 [B, l] candidate rows; -1 marks a missing candidate.
    k: results kept per question (<= l).

  Returns:
    (scores [B, k] float32, rows [B, k] int64), best first; -inf / -1 where a
    question has fewer than k valid candidates.
  """
  bsz, l = cand_rows.shape
  out_scores = np.full((bsz, k), -np.inf, dtype=np.float32)
  out_rows = np.full((bsz, k), -1, dtype=np.int64)
  if bsz == 0 or l == 0 or k == 0:
    return out_scores, out_rows
  block = next_pow2(min(bsz, RERANK_BLOCK))  # RERANK_BLOCK is a power of two
  nbytes = codes.shape[1]
  # k is a static argument of the jitted block: bucket it (power of two, at most l) so that
  # requests with many different k compile a handful of shapes, not one each.
  k_out = k
  k = min(l, next_pow2(k))
  for s in range(0, bsz, block):
    rows = cand_rows[s:s + block]
    n = rows.shape[0]
    valid = rows >= 0
    cand = np.zeros((block, l, nbytes), dtype=np.uint8)
    cand[:n] = codes[np.where(valid, rows, 0)]
    q = np.zeros((block, q_emb.shape[1]), dtype=np.float32)
    q[:n] = q_emb[s:s + n]
    v = np.zeros((block, l), dtype=bool)
    v[:n] = valid
    sc, pos = _rerank_block(q, cand, v, k)
    sc = np.asarray(sc)[:n, :k_out]
    pos = np.asarray(pos)[:n, :k_out]
    picked = np.take_along_axis(rows, pos.astype(np.int64), axis=1)
    ok = np.isfinite(sc)
    out_scores[s:s + n] = np.where(ok, sc, -np.inf)
    out_rows[s:s + n] = np.where(ok, picked, -1)
  return out_scores, out_rows


def exhaustive_rerank(q_emb: np.ndarray, codes: np.ndarray,
                      k: int) -> tuple[np.ndarray, np.ndarray]:
  """Scores every passage by <e_q, h_p> (no candidate generation); top k."""
  bsz = q_emb.shape[0]
  n = codes.shape[0]
  k_eff = min(k, n)
  best_s = np.full((bsz, 0), -np.inf, dtype=np.float32)
  best_r = np.zeros((bsz, 0), dtype=np.int64)
  for s in range(0, n, EXHAUSTIVE_BLOCK):
    block = unpack_codes(np.asarray(codes[s:s + EXHAUSTIVE_BLOCK]))
    sc = q_emb @ block.T  # [B, c]
    rows = np.broadcast_to(np.arange(s, s + block.shape[0], dtype=np.int64), sc.shape)
    cat_s = np.concatenate([best_s, sc], axis=1)
    cat_r = np.concatenate([best_r, rows], axis=1)
    if cat_s.shape[1] > k_eff:
      part = np.argpartition(-cat_s, k_eff - 1, axis=1)[:, :k_eff]
      cat_s = np.take_along_axis(cat_s, part, axis=1)
      cat_r = np.take_along_axis(cat_r, part, axis=1)
    best_s, best_r = cat_s, cat_r
  # Best first; equal scores by row.
  order = np.lexsort((best_r, -best_s), axis=1) if bsz else np.zeros((0, k_eff), np.int64)
  best_s = np.take_along_axis(best_s, order, axis=1)
  best_r = np.take_along_axis(best_r, order, axis=1)
  return _pad(best_s.astype(np.float32), best_r, k)


def _pad(scores: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
  """Pads [B, k'] results to [B, k] with -inf / -1."""
  extra = k - scores.shape[1]
  if extra <= 0:
    return scores[:, :k], rows[:, :k]
  bsz = scores.shape[0]
  return (np.concatenate([scores, np.full((bsz, extra), -np.inf, np.float32)], axis=1),
          np.concatenate([rows, np.full((bsz, extra), -1, np.int64)], axis=1))


def hamming_candidates(q_emb: np.ndarray, index: BinaryIndex,
                       l: int) -> tuple[np.ndarray, np.ndarray]:
  """Stage 1: Hamming top-l with the faiss index.

  Returns (distances [B, l] int32, rows [B, l] int64); hash indexes return
  row -1 (distance large) when fewer than l candidates fall in the probed
  buckets.
  """
  q_codes = pack_codes(q_emb)
  dist, rows = index.index.search(q_codes, l)
  return dist, rows.astype(np.int64, copy=False)


def two_stage_search(q_emb: np.ndarray, index: BinaryIndex, *, k: int, l: int = 1000,
                     rerank: bool = True, candidates: bool = True,
                     nprobe: int | None = None) -> tuple[np.ndarray, np.ndarray]:
  """BPR retrieval for a batch of questions.

  Args:
    q_emb: float32 [B, d] continuous question embeddings, d = index code bits.
    index: the binary passage index.
    k: results per question.
    l: stage-1 candidates per question (clipped to the index size).
    rerank: stage 2 on; False returns the Hamming order with score
      ``d - 2 * hamming`` (the +-1 code inner product).
    candidates: stage 1 on; False reranks every passage by <e_q, h_p>.
    nprobe: ivf lists probed for this call (default: the index's setting).

  Returns:
    (scores [B, k] float32, rows [B, k] int64), best first, padded with
    -inf / -1 when fewer than k passages are found.
  """
  q_emb = np.asarray(q_emb)
  if q_emb.ndim != 2:
    raise ValueError(f"question embeddings must be [B, d], got shape {q_emb.shape}")
  if q_emb.shape[1] != index.code_bits:
    raise ValueError(
        f"question embedding dim {q_emb.shape[1]} != index code bits {index.code_bits}; "
        "the model and the index do not match")
  if k < 1 or l < 1:
    raise ValueError(f"k and l must be >= 1, got k={k}, l={l}")
  q_emb = np.ascontiguousarray(q_emb, dtype=np.float32)
  if not np.isfinite(q_emb).all():
    raise ValueError("question embeddings contain NaN or inf")
  bsz = q_emb.shape[0]
  n = index.ntotal
  if bsz == 0 or n == 0:
    return (np.full((bsz, k), -np.inf, np.float32), np.full((bsz, k), -1, np.int64))
  if not candidates:
    if not rerank:
      raise ValueError("candidates=False needs rerank=True (nothing would score the passages)")
    return exhaustive_rerank(q_emb, index.codes, k)
  l_eff = min(max(l, 1), n)
  if nprobe is not None and index.kind == "ivf":
    old = index.nprobe
    index.nprobe = nprobe
    try:
      dist, rows = hamming_candidates(q_emb, index, l_eff)
    finally:
      index.nprobe = old
  else:
    dist, rows = hamming_candidates(q_emb, index, l_eff)
  if not rerank:
    kk = min(k, l_eff)
    rows = rows[:, :kk]
    scores = np.where(rows >= 0, index.code_bits - 2 * dist[:, :kk].astype(np.float32), -np.inf)
    return _pad(scores.astype(np.float32), rows, k)
  sc, rr = rerank_candidates(q_emb, index.codes, rows, min(k, l_eff))
  return _pad(sc, rr, k)


# ---------------------------------------------------------------------------
# Retriever: questions in, passage ids out.


THREADS_ENV = "BPR_SEARCH_THREADS"


def set_search_threads(threads: int | None = None) -> int:
  """Sets faiss's OpenMP threads for stage 1; returns the number set.

  ``threads`` None reads ``$BPR_SEARCH_THREADS``; unset or 0 leaves faiss's
  default (all cores).  On a machine whose cores are busy with other work, 1
  thread is often faster than 2 (OpenMP spin-waiting; see
  benchmarks/results/search_speed.md).
  """
  import faiss  # pylint: disable=import-outside-toplevel

  if threads is None:
    raw = os.environ.get(THREADS_ENV, "").strip()
    threads = int(raw) if raw else 0
  threads = int(threads)
  if threads < 0:
    raise ValueError(f"threads must be >= 0, got {threads}")
  if threads > 0:
    faiss.omp_set_num_threads(threads)
  return int(faiss.omp_get_max_threads())


def check_pieces(index: BinaryIndex | dict[str, Any], *, model: dict[str, Any] | None = None,
                 passages: dict[str, Any] | None = None, allow_mismatch: bool = False,
                 index_path: str | os.PathLike | None = None) -> list[str]:
  """Checks that an index, a model and a passage source belong together.

  ``index`` is a ``BinaryIndex`` or its ``meta.json`` dict (then ``index_path`` names it).
  ``model`` and ``passages`` are fingerprints (``provenance.model_fingerprint``,
  ``provenance.fingerprint_passages``); each given one is compared with what the index's
  ``meta.json`` records its codes were made from.  An index without a record (built before
  provenance, or in memory) passes.  Returns the fields that differ; raises
  ``provenance.ProvenanceError`` naming them (and ``--allow_mismatch``) unless ``allow_mismatch``.
  """
  from bpr_jax import provenance  # pylint: disable=import-outside-toplevel

  meta = index if isinstance(index, dict) else index.meta
  if index_path is None and not isinstance(index, dict):
    index_path = index.path
  recorded = (meta or {}).get(provenance.INPUTS)
  current = {k: v for k, v in (("model", model), ("passages", passages)) if v is not None}
  if not recorded or not current:
    return []
  names = [f"index {index_path if index_path is not None else '(in memory)'}"]
  names += [f"{k} {v.get('path', '?')}" for k, v in current.items()]
  pieces = ", ".join(names[:-1]) + " and " + names[-1]
  return provenance.check_belongs(pieces, {k: recorded[k] for k in current if k in recorded},
                                  current, allow=allow_mismatch)


def _check_questions(questions: Any) -> list[str]:
  """``questions`` as a list of non-empty strings, or a one-line ValueError."""
  if isinstance(questions, (str, bytes)):
    raise ValueError("questions must be a list of strings, got a single string; "
                     "pass [question] to search for one")
  if isinstance(questions, np.ndarray):
    questions = questions.tolist()
  try:
    questions = list(questions)
  except TypeError:
    raise ValueError(
        f"questions must be a list of strings, got {type(questions).__name__}") from None
  for i, q in enumerate(questions):
    if not isinstance(q, str):
      raise ValueError(f"question {i} is a {type(q).__name__}, not a string")
    if not q.strip():
      raise ValueError(f"question {i} is empty")
  return questions


def _check_k(k: Any) -> int:
  if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
    raise ValueError(f"k must be a whole number >= 1, got {k!r}")
  if k < 1:
    raise ValueError(f"k must be >= 1, got {k}")
  return int(k)


def _code_dim(settings: dict[str, Any]) -> int | None:
  """The width of an exported model's embeddings (its code bits), from its settings."""
  dim = settings.get("code_bits") or settings.get("hidden_size")
  return int(dim) if dim is not None else None


def prefix_bits(settings: dict[str, Any] | None, index_bits: int, *, model: Any = "the model",
                index: Any = "the index") -> int | None:
  """How many leading dims of the model's question vectors go with an index of ``index_bits``-bit
  codes: None when the model's code is that wide (the whole vector), ``index_bits`` when the
  index holds a shorter code the model records (``export_format.code_sizes``: nested codes).
  Any other size is a one-line ValueError naming both and the recorded sizes.  Settings without
  a code width (a stand-in model) give None."""
  dim = _code_dim(settings or {})
  if dim is None or dim == index_bits:
    return None
  from bpr_jax.export_format import code_sizes  # pylint: disable=import-outside-toplevel
  sizes = code_sizes(settings)
  if index_bits in sizes:
    return int(index_bits)
  raise ValueError(f"model {model} gives {dim}-bit codes but index {index} holds {index_bits}-bit "
                   f"codes, not a size the model records ({', '.join(map(str, sizes))}); they were "
                   "not built together")


class Retriever:
  """Questions in, passages out: an exported BPR model over a binary passage index.

  Usage::

    from bpr_jax import Retriever

    r = Retriever.load(model="runs/nq/export", index="runs/nq/index",
                       passages="data/psgs_w100.tsv")
    hits = r.search(["who wrote hamlet?"], k=10)
    hits[0][0]  # {"id": "...", "title": "...", "text": "...", "score": 87.3, "row": 1234}
    q = r.encode_questions(["who wrote hamlet?"])         # float32 [1, d]
    codes = r.encode_codes(["Hamlet"], ["Hamlet is ..."])  # uint8 [1, d/8], as encode writes

  ``search`` is BPR's two-stage search (``two_stage_search``: Hamming top-``l`` candidates, then
  ``<e_q, h_p>`` reranking); ``score`` is that inner product.  ``load`` checks that the model,
  index and passage file belong together (the index's ``meta.json`` records the model and
  passages its codes were made from) before the model loads; a mismatch is a
  ``provenance.ProvenanceError`` unless ``allow_mismatch``.

  The constructor takes pieces already in memory (tests, services):

  Args:
    model: an ``bpr_jax.exported_model.ExportedModel`` (anything with ``encode_questions``).
    index: the binary passage index.
    passages: optional passage file (DPR TSV / BEIR JSONL); when given, hits also carry
      ``title`` and ``text``, read through ``bpr_jax.passage_store.PassageStore`` (an on-disk
      offset index, so the corpus is never held in memory).
    l: stage-1 candidates per question.
    rerank, candidates: the ablation switches of ``two_stage_search``.
    nprobe: ivf lists probed (default: the index's setting).
    threads: faiss threads (``set_search_threads``; None reads ``$BPR_SEARCH_THREADS``, 0 or
      unset keeps faiss's default).
    model_dir: the exported model's folder (default the model's ``path`` attribute, if any):
      checked against the model the index's codes were made from.
    allow_mismatch: use a model, index and passage file that do not belong together
      (``check_pieces``); by default that is a ``ProvenanceError``.
    passage_cache_dir: where ``PassageStore`` keeps the passage file's offset index (default:
      ``PassageStore``'s own).
    passage_store: an open ``PassageStore`` to read hits' texts from, instead of ``passages``.
    mismatched: the result of a ``check_pieces`` already made by the caller (``load``); None
    checks here.
  """

  def __init__(self, model: Any, index: BinaryIndex, *, passages: str | os.PathLike | None = None,
               l: int = 1000, rerank: bool = True, candidates: bool = True,
               nprobe: int | None = None, threads: int | None = None,
               model_dir: str | os.PathLike | None = None, allow_mismatch: bool = False,
               passage_cache_dir: str | os.PathLike | None = None,
               passage_store: Any = None, mismatched: Sequence[str] | None = None):
    from bpr_jax import provenance  # pylint: disable=import-outside-toplevel

    self.model = model
    self.exported = model  # the export itself; a service may wrap ``model`` for padding
    self.index = index
    self.l = int(l)
    if self.l < 1:
      raise ValueError(f"l must be >= 1, got {l}")
    # The first `prefix` dims of the model's vectors go with a nested-code index (None: all).
    self.prefix = prefix_bits(getattr(model, "settings", None), index.code_bits,
                              model=getattr(model, "path", None) or "(in memory)",
                              index=index.path or "(in memory)")
    if passages is not None and passage_store is not None:
      raise ValueError("give passages or passage_store, not both")
    if mismatched is None:
      model_dir = model_dir if model_dir is not None else getattr(model, "path", None)
      mismatched = check_pieces(
          index,
          model=provenance.model_fingerprint(model_dir) if model_dir is not None else None,
          passages=provenance.fingerprint_passages(passages) if passages is not None else None,
          allow_mismatch=allow_mismatch)
    self.mismatched = sorted(mismatched)
    if nprobe is not None:
      index.nprobe = nprobe
    self.threads = set_search_threads(threads)
    self.rerank = rerank
    self.candidates = candidates
    self.passage_store = passage_store
    if passages is not None:
      from bpr_jax.passage_store import PassageStore  # pylint: disable=import-outside-toplevel
      self.passage_store = PassageStore(passages, cache_dir=passage_cache_dir)
    if self.passage_store is not None and len(self.passage_store) != index.ntotal:
      raise ValueError(
          f"passage file {getattr(self.passage_store, 'path', passages)} has "
          f"{len(self.passage_store)} passages but the index has {index.ntotal}")

  @classmethod
  def load(cls, model: str | os.PathLike, index: str | os.PathLike,
           passages: str | os.PathLike | None = None, *, l: int = 1000,
           allow_mismatch: bool = False, passage_cache_dir: str | os.PathLike | None = None,
           dtype: Any = jnp.float32, **kwargs) -> "Retriever":
    """Loads an exported model (``bpr_jax.export``), an index folder (``bpr_jax.index``) and,
    optionally, the passage file the index was encoded from.

    Everything that can be checked is checked before the model loads: the model folder's
    settings, that the pieces belong together (``check_pieces``; ``allow_mismatch`` lets a
    mismatch through, recorded in ``.mismatched``), that the index's code bits are the model's
    code or one of its recorded nested sizes (``prefix_bits``), and that the passage file has as many passages as the index.  ``dtype`` is the
    encoders' compute dtype (``exported_model.load_exported``); other keyword arguments go to the
    constructor (``rerank``, ``candidates``, ``nprobe``, ``threads``).
    """
    from bpr_jax import export_format, exported_model, provenance  # pylint: disable=import-outside-toplevel

    model_dir = pathlib.Path(model)
    if not model_dir.is_dir():
      raise FileNotFoundError(f"model {model}: no such folder (give an exported model, "
                              "bpr_jax.export)")
    settings = export_format.read_settings(model_dir)
    index_obj = BinaryIndex.load(index)
    if passages is not None and not str(passages).startswith("tfds:"):
      if not pathlib.Path(passages).is_file():
        raise FileNotFoundError(f"passages {passages}: no such file")
    mismatched = check_pieces(
        index_obj, model=provenance.model_fingerprint(model_dir),
        passages=provenance.fingerprint_passages(passages) if passages is not None else None,
        allow_mismatch=allow_mismatch, index_path=index)
    prefix_bits(settings, index_obj.code_bits, model=model, index=index)
    store = None
    if passages is not None:
      from bpr_jax.passage_store import PassageStore  # pylint: disable=import-outside-toplevel
      store = PassageStore(passages, cache_dir=passage_cache_dir)
      if len(store) != index_obj.ntotal:
        raise ValueError(f"passage file {passages} has {len(store)} passages but index {index} "
                         f"has {index_obj.ntotal}; give the passage file the index was built from")
    return cls(exported_model.load_exported(model_dir, dtype=dtype), index_obj, passage_store=store,
               l=l, mismatched=mismatched, **kwargs)

  @classmethod
  def from_paths(cls, model_dir: str | os.PathLike, index_dir: str | os.PathLike,
                 passages: str | os.PathLike | None = None, *, allow_mismatch: bool = False,
                 **kwargs) -> "Retriever":
    """``load`` under its older name (the same checks, in the same order)."""
    return cls.load(model_dir, index_dir, passages, allow_mismatch=allow_mismatch, **kwargs)

  def encode_questions(self, questions: Sequence[str], batch_size: int = 64) -> np.ndarray:
    """Question embeddings float32 [B, d] (``e_q``), checked against the index; d is the index's
    code bits (the first d dims of the model's vectors for a nested-code index)."""
    questions = _check_questions(questions)
    # The default batch size is not passed: a wrapped or stand-in model need not take it.
    raw = (self.model.encode_questions(questions) if batch_size == 64
           else self.model.encode_questions(questions, batch_size=batch_size))
    emb = np.asarray(raw, dtype=np.float32)
    if emb.ndim != 2 or emb.shape[0] != len(questions):
      raise ValueError(f"model returned embeddings of shape {emb.shape} for {len(questions)} questions")
    return emb if self.prefix is None else np.ascontiguousarray(emb[:, :self.prefix])

  def encode(self, questions: Sequence[str]) -> np.ndarray:
    """``encode_questions`` under its older name."""
    return self.encode_questions(questions)

  def encode_passages(self, titles: Sequence[str], texts: Sequence[str],
                      batch_size: int = 64) -> np.ndarray:
    """Passage embeddings float32 [N, d] (``e_p``, before the sign) from the export's passage
    encoder; d is the index's code bits (the first d dims for a nested-code index)."""
    titles, texts = list(titles), list(texts)
    if len(titles) != len(texts):
      raise ValueError(f"{len(titles)} titles but {len(texts)} texts")
    for name, values in (("title", titles), ("text", texts)):
      for i, v in enumerate(values):
        if not isinstance(v, str):
          raise ValueError(f"passage {i}: {name} is a {type(v).__name__}, not a string")
    if not texts:
      return np.zeros((0, self.index.code_bits), np.float32)
    emb = np.asarray(self.exported.encode_passages(titles, texts, batch_size=batch_size),
                     dtype=np.float32)
    return emb if self.prefix is None else np.ascontiguousarray(emb[:, :self.prefix])

  def encode_codes(self, titles: Sequence[str], texts: Sequence[str],
                   batch_size: int = 64) -> np.ndarray:
    """Packed passage codes uint8 [N, d/8] (``bpr_jax.codes`` layout, as ``bpr_jax.encode``
    writes them): the signs of ``encode_passages``."""
    emb = self.encode_passages(titles, texts, batch_size=batch_size)
    bad = np.flatnonzero(~np.isfinite(emb).all(axis=1))
    if bad.size:
      raise ValueError(f"passage {int(bad[0])}: the model gave a NaN or inf embedding")
    return pack_codes(emb)

  def search(self, questions: Sequence[str], k: int = 10) -> list[list[dict[str, Any]]]:
    """Top-k passages per question, best first: ``[[{"id", "title", "text", "score", "row"},
    ...], ...]``.

    ``title`` and ``text`` are there when the retriever has passages; ``score`` is
    ``<e_q, h_p>``; ``row`` is the passage's row in the index.  Fewer than k hits when the index
    (or, for a hash index, the probed buckets) holds fewer.  ``questions`` is a list of strings
    (a single string is refused: pass ``[question]``); ``k`` >= 1.
    """
    questions = _check_questions(questions)
    k = _check_k(k)
    if not questions:
      return []
    emb = self.encode_questions(questions)
    scores, rows = two_stage_search(emb, self.index, k=k, l=self.l, rerank=self.rerank,
                                    candidates=self.candidates)
    results: list[list[dict[str, Any]]] = []
    for srow, rrow in zip(scores.tolist(), rows.tolist()):
      results.append([{"id": str(self.index.ids[r]), "score": float(s), "row": int(r)}
                      for s, r in zip(srow, rrow) if r >= 0])
    if self.passage_store is not None:
      flat = [h for hits in results for h in hits]
      texts = self.passage_store.get([h["id"] for h in flat], rows=[h["row"] for h in flat],
                                     default=("", ""))
      it = iter(texts)
      for hits in results:
        for j, h in enumerate(hits):
          title, text = next(it)
          hits[j] = {"id": h["id"], "title": title, "text": text, "score": h["score"],
                     "row": h["row"]}
    return results
