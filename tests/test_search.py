"""Tests for bpr_jax.search: two-stage retrieval and ablations (JAX Hamming: test_device_speed.py)."""
import faiss
import numpy as np
import pytest

from bpr_jax.codes import binarize, pack_codes, unpack_codes
from bpr_jax.index import BinaryIndex
from bpr_jax.search import Retriever, two_stage_search

D = 32


def _data(n=500, b=9, seed=0):
  rng = np.random.default_rng(seed)
  p = rng.standard_normal((n, D)).astype(np.float32)
  q = rng.standard_normal((b, D)).astype(np.float32)
  return p, q


def _reference(q, p_codes, k, l):
  """Brute force: Hamming top-l (stable by row), then <e_q, h_p> top-k (stable)."""
  h = unpack_codes(p_codes)
  hq = binarize(q)
  ham = (D - hq @ h.T) / 2
  out_s, out_r = [], []
  for i in range(len(q)):
    cand = np.argsort(ham[i], kind="stable")[:l]
    sc = h[cand] @ q[i]
    order = np.argsort(-sc, kind="stable")[:k]
    out_s.append(sc[order])
    out_r.append(cand[order])
  return np.array(out_s), np.array(out_r), ham


def test_two_stage_matches_brute_force_up_to_ties():
  p, q = _data()
  codes = pack_codes(p)
  index = BinaryIndex.from_arrays(codes)
  scores, rows = two_stage_search(q, index, k=10, l=500)  # l = N: exact rerank of all
  ref_s, ref_r, _ = _reference(q, codes, 10, 500)
  assert scores.dtype == np.float32 and rows.dtype == np.int64 and rows.shape == (9, 10)
  np.testing.assert_allclose(scores, ref_s, rtol=1e-5, atol=1e-5)
  h = unpack_codes(codes)
  np.testing.assert_allclose(np.einsum("bkd,bd->bk", h[rows], q), scores, rtol=1e-5, atol=1e-5)
  # Same as rerank over everything.
  s2, r2 = two_stage_search(q, index, k=10, candidates=False)
  np.testing.assert_allclose(s2, scores, rtol=1e-5, atol=1e-5)


def test_candidates_restrict_rerank():
  p, q = _data()
  codes = pack_codes(p)
  index = BinaryIndex.from_arrays(codes)
  scores, rows = two_stage_search(q, index, k=5, l=20)
  _, _, ham = _reference(q, codes, 5, 20)
  for i in range(len(q)):
    kth = np.sort(ham[i])[19]
    assert (ham[i][rows[i]] <= kth).all()  # every result was a Hamming top-20 candidate
  # Rerank of faiss's own candidate set, by hand.
  _, cand = index.index.search(pack_codes(q), 20)
  h = unpack_codes(codes)
  ref = -np.sort(-np.einsum("bld,bd->bl", h[cand], q), axis=1)[:, :5]
  np.testing.assert_allclose(scores, ref, rtol=1e-5, atol=1e-5)


def test_no_rerank_is_hamming_order():
  p, q = _data()
  codes = pack_codes(p)
  index = BinaryIndex.from_arrays(codes)
  scores, rows = two_stage_search(q, index, k=7, rerank=False)
  _, _, ham = _reference(q, codes, 7, 7)
  np.testing.assert_array_equal(scores, D - 2 * np.take_along_axis(ham, rows, 1))
  np.testing.assert_array_equal(scores, -np.sort(-(D - 2 * ham), axis=1)[:, :7])


@pytest.mark.parametrize("kind", ["hash", "multihash"])
def test_hash_kinds_pad_missing(kind):
  p, q = _data(200)
  index = BinaryIndex.from_arrays(pack_codes(p), kind=kind, hash_bits=16, nflip=0)
  scores, rows = two_stage_search(q, index, k=50, l=100)
  assert rows.shape == (9, 50)
  assert ((rows == -1) == np.isneginf(scores)).all()
  assert (rows == -1).any()  # few codes share 16-bit keys exactly
  # Self-queries always find themselves.
  s, r = two_stage_search(np.sign(p[:4]), index, k=1, l=10)
  assert r[:, 0].tolist() == [0, 1, 2, 3]


def test_k_larger_than_n_and_errors():
  p, q = _data(6)
  index = BinaryIndex.from_arrays(pack_codes(p))
  scores, rows = two_stage_search(q, index, k=10)
  assert (rows[:, :6] >= 0).all() and (rows[:, 6:] == -1).all()
  assert np.isneginf(scores[:, 6:]).all()
  with pytest.raises(ValueError, match="dim 16 != index code bits 32"):
    two_stage_search(q[:, :16], index, k=1)
  with pytest.raises(ValueError, match="NaN"):
    two_stage_search(np.full((1, D), np.nan, np.float32), index, k=1)
  with pytest.raises(ValueError, match="needs rerank"):
    two_stage_search(q, index, k=1, rerank=False, candidates=False)
  s, r = two_stage_search(q[:0], index, k=3)
  assert s.shape == (0, 3) and r.shape == (0, 3)


def test_batch_independent_of_block_padding():
  p, q = _data(300, 200, seed=3)  # 200 questions: one full block of 128 + a padded one
  index = BinaryIndex.from_arrays(pack_codes(p))
  s_all, r_all = two_stage_search(q, index, k=5, l=50)
  s_one, r_one = two_stage_search(q[137:138], index, k=5, l=50)
  np.testing.assert_allclose(s_all[137:138], s_one, rtol=1e-6)
  np.testing.assert_array_equal(r_all[137:138], r_one)


class _FakeModel:
  settings = {"code_bits": D}

  def __init__(self, vecs):
    self.vecs = vecs

  def encode_questions(self, texts, batch_size=64):
    return np.stack([self.vecs[t] for t in texts])


def test_retriever_with_fake_model_and_passages(tmp_path):
  p, _ = _data(4)
  corpus = tmp_path / "corpus.jsonl"
  corpus.write_text("".join(
      f'{{"_id": "d{i}", "title": "t{i}", "text": "x{i}"}}\n' for i in range(4)))
  index = BinaryIndex.from_arrays(pack_codes(p), ids=[f"d{i}" for i in range(4)])
  model = _FakeModel({"a": p[2], "b": p[0]})
  r = Retriever(model, index, passages=corpus)
  hits = r.search(["a", "b"], k=2)
  assert [h[0]["id"] for h in hits] == ["d2", "d0"]
  assert hits[0][0]["title"] == "t2" and hits[0][0]["text"] == "x2" and hits[0][0]["row"] == 2
  assert r.search([], k=3) == []
  with pytest.raises(ValueError, match="empty"):
    r.search(["  "], k=1)
  bad = _FakeModel({})
  bad.settings = {"code_bits": 768}
  with pytest.raises(ValueError, match="768-bit codes but index .* holds 32-bit codes"):
    Retriever(bad, index)


def _clustered_q(n=4000, n_centres=30, b=12, seed=9):
  rng = np.random.default_rng(seed)
  centres = rng.standard_normal((n_centres, D)).astype(np.float32)
  p = centres[rng.integers(0, n_centres, n)] + 0.8 * rng.standard_normal((n, D)).astype(np.float32)
  q = centres[rng.integers(0, n_centres, b)] + 0.8 * rng.standard_normal((b, D)).astype(np.float32)
  return p, q


def _groups_by_score(ids, scores):
  """{score: sorted ids}, the lowest score's group by size only (a tie may straddle the top k)."""
  groups = {}
  for i, sc in zip(ids, scores):
    groups.setdefault(round(float(sc), 3), []).append(i)
  low = min(groups)
  return {sc: (len(g) if sc == low else sorted(g)) for sc, g in groups.items()}


def test_ivf_saved_index_matches_in_memory(tmp_path):
  from bpr_jax.index import save_index  # pylint: disable=import-outside-toplevel
  p, q = _clustered_q()
  codes = pack_codes(p)
  mem = BinaryIndex.from_arrays(codes, kind="ivf", nlist=20, nprobe=4)
  save_index(tmp_path / "i", mem.index, codes, np.arange(len(codes)))
  disk = BinaryIndex.load(tmp_path / "i")
  s1, r1 = two_stage_search(q, mem, k=5, l=50)
  s2, r2 = two_stage_search(q, disk, k=5, l=50)
  np.testing.assert_allclose(s1, s2, rtol=1e-6)
  # Rows differ (renumbered in list order); the passage ids agree, up to order among equal
  # scores (clustered codes can repeat, and equal codes score equal).
  for ids1, ids2, sc in zip([mem.ids_of(r) for r in r1], [disk.ids_of(r) for r in r2], s1):
    assert _groups_by_score(ids1, sc) == _groups_by_score(ids2, sc)
  # Scores are <e_q, h_p> of the passages' own codes.
  h = unpack_codes(codes)
  ids = np.asarray(disk.ids)[r2]
  np.testing.assert_allclose(np.einsum("bkd,bd->bk", h[ids], q), s2, rtol=1e-5, atol=1e-5)
  # Exhaustive rerank reads the lists too and beats or ties stage-1 results.
  s3, r3 = two_stage_search(q, disk, k=5, candidates=False)
  assert (s3[:, 0] >= s2[:, 0] - 1e-5).all()
  # nprobe = nlist with l = N: same as flat's exact rerank.
  flat = BinaryIndex.from_arrays(codes)
  s4, _ = two_stage_search(q, disk, k=5, l=len(codes), nprobe=20)
  s5, _ = two_stage_search(q, flat, k=5, l=len(codes))
  np.testing.assert_allclose(s4, s5, rtol=1e-5, atol=1e-5)
  assert disk.nprobe == 4


def test_set_search_threads(monkeypatch):
  from bpr_jax.search import THREADS_ENV, set_search_threads  # pylint: disable=import-outside-toplevel
  old = faiss.omp_get_max_threads()
  try:
    assert set_search_threads(1) == 1
    monkeypatch.setenv(THREADS_ENV, "2")
    assert set_search_threads() == 2
    monkeypatch.setenv(THREADS_ENV, "")
    assert set_search_threads() == 2  # unset: left as it is
    with pytest.raises(ValueError, match=">= 0"):
      set_search_threads(-1)
    p, _ = _data(4)
    index = BinaryIndex.from_arrays(pack_codes(p), kind="ivf", nlist=2)
    r = Retriever(_FakeModel({"a": p[1]}), index, threads=1, nprobe=2)
    assert r.threads == 1 and index.nprobe == 2
    assert r.search(["a"], k=1)[0][0]["row"] == 1
    with pytest.raises(ValueError, match="nprobe applies to ivf"):
      Retriever(_FakeModel({}), BinaryIndex.from_arrays(pack_codes(p)), nprobe=3)
  finally:
    faiss.omp_set_num_threads(old)
