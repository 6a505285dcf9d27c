"""Tests for bpr_jax.baselines: the research baselines evaluate runs beside BPR (float, HNSW,
LSH, PQ over float embeddings; sign codes of a float model)."""
import numpy as np
import pytest

from bpr_jax import baselines
from bpr_jax.codes import pack_codes, unpack_codes

QA_N = 600


def _gaussian(n, d, seed):
  return np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)


@pytest.fixture(scope="module")
def corpus():
  """600 passage ids (100..699) and their Gaussian 64-d embeddings (as tests/test_evaluate.py's
  qa_corpus)."""
  return [str(100 + i) for i in range(QA_N)], _gaussian(QA_N, 64, 4)


def test_pq_on_a_small_corpus_says_so_once(corpus, capfd):
  ids, emb = corpus
  lines = []
  baselines.float_systems(emb, 64, ["pq"], np.array(ids), log=lines.append)
  err = capfd.readouterr()
  assert "please provide at least" not in err.err + err.out
  assert len(lines) == 1 and "pq: trained on 600 passages" in lines[0]


def test_flat_ip_is_exact_and_pads_past_the_index(corpus):
  ids, emb = corpus
  q = _gaussian(5, 64, 7)
  (flat,) = baselines.float_systems(emb[:8], 64, ["flat_ip"], np.array(ids[:8]), log=None)
  assert flat.name == "flat_ip" and flat.bytes_per_passage == 256
  scores, rows = flat.search(q, 10)
  assert scores.shape == rows.shape == (5, 10)
  assert (rows[:, 8:] == -1).all() and np.isneginf(scores[:, 8:]).all()
  ip = q @ emb[:8].T
  np.testing.assert_array_equal(rows[:, :8], np.argsort(-ip, axis=1, kind="stable"))
  np.testing.assert_allclose(scores[:, :8], -np.sort(-ip, axis=1), rtol=1e-5, atol=1e-5)


def test_float_systems_refuse_bad_input(corpus):
  ids, emb = corpus
  with pytest.raises(ValueError, match="unknown baseline 'ann'"):
    baselines.float_systems(emb, 64, ["ann"], np.array(ids), log=None)
  with pytest.raises(ValueError, match="600 passage embeddings but 3 ids"):
    baselines.float_systems(emb, 64, ["flat_ip"], np.array(ids[:3]), log=None)


def test_sign_systems_are_bpr_search_over_sign_codes(corpus):
  """Sign codes of float embeddings through BPR's own two-stage search: the rerank-all row
  scores <e_q, sign(e_p)> exactly."""
  ids, emb = corpus
  q = _gaussian(4, 64, 8)
  systems = baselines.sign_systems(emb, ids, l=QA_N)
  assert [s.name for s in systems] == ["sign-two-stage", "sign", "sign-rerank-all"]
  assert all(s.bytes_per_passage == 8 for s in systems)
  scores, rows = systems[2].search(q, 5)
  want = q @ unpack_codes(pack_codes(emb)).T
  np.testing.assert_allclose(scores, -np.sort(-want, axis=1)[:, :5], rtol=0, atol=1e-4)
  s2, r2 = systems[0].search(q, 5)  # l = N: two-stage equals the exhaustive rerank
  np.testing.assert_allclose(s2, scores, rtol=0, atol=1e-4)
  assert str(systems[0].ids[r2[0, 0]]) == ids[r2[0, 0]]  # row -> id as given
  with pytest.raises(ValueError, match="NaN"):
    baselines.sign_systems(np.full((2, 64), np.nan, np.float32), ["a", "b"])
