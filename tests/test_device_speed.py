"""DeviceHammingIndex (bpr_jax.device_search), the package's one JAX Hamming top-k."""
import faiss
import numpy as np
import pytest

import jax.numpy as jnp

from bpr_jax import device_search
from bpr_jax.codes import pack_codes
from bpr_jax.device_search import DeviceHammingIndex


def _reference(db, q, k):
  """Exact top-k by (distance, row): ties lower row first."""
  ham = np.unpackbits(q[:, None] ^ db[None], axis=-1).sum(-1)
  rows = np.lexsort((np.broadcast_to(np.arange(db.shape[0]), ham.shape), ham), axis=1)[:, :k]
  return np.take_along_axis(ham, rows, 1).astype(np.int32), rows.astype(np.int64)


def _faiss(db, q, k):
  flat = faiss.IndexBinaryFlat(8 * db.shape[1])
  flat.add(db)
  return flat.search(q, k)


@pytest.fixture(scope="module")
def random_768():
  rng = np.random.default_rng(0)
  db = rng.integers(0, 256, (3000, 96), dtype=np.uint8)  # 3000 = 5 blocks of 512 + a tail of 440
  q = rng.integers(0, 256, (5, 96), dtype=np.uint8)
  return db, q


@pytest.fixture(scope="module")
def tied_64():
  """64-bit codes with many duplicates: every distance is tied many times."""
  rng = np.random.default_rng(1)
  base = rng.integers(0, 256, (150, 8), dtype=np.uint8)
  db = base[rng.integers(0, 150, 2500)]
  q = rng.integers(0, 256, (5, 8), dtype=np.uint8)
  return db, q


@pytest.mark.parametrize("method", ["popcount", "matmul"])
def test_matches_faiss(random_768, tied_64, method):
  for db, q in (random_768, tied_64):
    k = 50
    index = DeviceHammingIndex(db, method=method, block=512, group=64)
    assert index.nblocks == -(-db.shape[0] // 512) and index.n_tail > 0
    dist, rows = index.search(q, k)
    assert dist.dtype == np.int32 and rows.dtype == np.int64 and dist.shape == (5, k)
    fd, fi = _faiss(db, q, k)
    np.testing.assert_array_equal(dist, fd)
    rd, rr = _reference(db, q, k)
    np.testing.assert_array_equal(dist, rd)
    np.testing.assert_array_equal(rows, rr)  # ties: lower row first
    for i in range(q.shape[0]):  # rows agree with faiss wherever the distance is unique
      uniq = [j for j in range(k) if (fd[i] == fd[i, j]).sum() == 1 and fd[i, j] < fd[i, -1]]
      np.testing.assert_array_equal(rows[i, uniq], fi[i, uniq])


def test_gaussian_codes_small_blocks_match_faiss():
  """Codes packed from embeddings, many small blocks, grouped and ungrouped selection."""
  rng = np.random.default_rng(4)
  db = pack_codes(rng.standard_normal((1000, 64)))
  qc = pack_codes(rng.standard_normal((7, 64)))
  fd, fi = _faiss(db, qc, 20)
  ham = np.unpackbits(qc[:, None] ^ db[None], axis=-1).sum(-1)
  for group in (None, 0):
    index = DeviceHammingIndex(db, block=128, group=group)
    jd, ji = index.search(qc, 20)
    np.testing.assert_array_equal(jd, fd)
    np.testing.assert_array_equal(np.take_along_axis(ham, ji, 1), jd)
    for i in range(7):  # ids agree except among ties at the 20th distance
      cut = jd[i, -1]
      assert set(ji[i][jd[i] < cut]) == set(fi[i][fd[i] < cut])
    with pytest.raises(ValueError, match="k must be"):
      index.search(qc, 1001)


def test_code_words_hamming_matches_bytes():
  """The device's uint32 words are the bytes' little-endian view; popcount over them is Hamming."""
  rng = np.random.default_rng(2)
  a = pack_codes(rng.standard_normal((4, 384)))
  b = pack_codes(rng.standard_normal((6, 384)))
  ham8 = np.unpackbits(a[:, None] ^ b[None], axis=-1).sum(-1)
  a32 = np.asarray(device_search._code_words(jnp.asarray(a)))  # pylint: disable=protected-access
  b32 = np.asarray(device_search._code_words(jnp.asarray(b)))  # pylint: disable=protected-access
  assert a32.dtype == np.uint32 and a32.shape == (4, 12)
  np.testing.assert_array_equal(a32, a.view("<u4"))
  ham32 = np.array([[sum(bin(int(x)).count("1") for x in (p ^ q)) for q in b32] for p in a32])
  np.testing.assert_array_equal(ham8, ham32)


def test_default_layout_int8_and_ungrouped(random_768):
  db, q = random_768
  rd, rr = _reference(db, q, 77)
  for kw in (dict(), dict(method="matmul", matmul_dtype="int8"), dict(group=0, block=700)):
    index = DeviceHammingIndex(db, **kw)
    dist, rows = index.search(q, 77)
    np.testing.assert_array_equal(dist, rd)
    np.testing.assert_array_equal(rows, rr)
  assert DeviceHammingIndex(db).method == "popcount"  # CPU backend default


def test_fallback_keeps_results_exact(tied_64):
  db, q = tied_64
  index = DeviceHammingIndex(db, method="matmul", block=256, group=32, group_k=2)
  dist, rows = index.search(q, 120)
  assert index.last_fallback > 0 and index.fallback_queries == index.last_fallback
  rd, rr = _reference(db, q, 120)
  np.testing.assert_array_equal(dist, rd)
  np.testing.assert_array_equal(rows, rr)
  # The grouped pass alone flags every question whose result it cannot vouch for.
  d1, r1, exact = index._run(q, 120, True)  # pylint: disable=protected-access
  good = (d1 == rd).all(1) & (r1 == rr).all(1)
  assert good[exact].all()


def test_batches_split_padded_and_cached(random_768):
  db, q = random_768
  index = DeviceHammingIndex(db, block=1024, group=64, max_batch=4)
  rd, rr = _reference(db, q, 10)
  dist, rows = index.search(q, 10)  # 5 questions: calls of 4 and 1
  np.testing.assert_array_equal(dist, rd)
  np.testing.assert_array_equal(rows, rr)
  shapes = index.compiled_shapes
  index.search(q[:3], 10)  # padded to 4: compiled already
  assert index.compiled_shapes == shapes == [(1, 10, True), (4, 10, True)]
  d0, r0 = index.search(q[:0], 10)
  assert d0.shape == (0, 10) and r0.shape == (0, 10)
  d1, r1 = index.search(q[:1], 3000)  # k = N
  assert sorted(r1[0].tolist()) == list(range(3000))


def test_bad_inputs(random_768):
  db, q = random_768
  with pytest.raises(ValueError, match="uint8"):
    DeviceHammingIndex(db.astype(np.int32))
  with pytest.raises(ValueError, match="2-D"):
    DeviceHammingIndex(db[0])
  with pytest.raises(ValueError, match="multiple of 32"):
    DeviceHammingIndex(db[:, :3])
  with pytest.raises(ValueError, match="empty"):
    DeviceHammingIndex(db[:0])
  with pytest.raises(ValueError, match="method"):
    DeviceHammingIndex(db, method="gpu")
  with pytest.raises(ValueError, match="matmul_dtype"):
    DeviceHammingIndex(db, matmul_dtype="float8")
  with pytest.raises(ValueError, match="group"):
    DeviceHammingIndex(db, group=16, group_k=16)
  with pytest.raises(ValueError, match="block"):
    DeviceHammingIndex(db, block=0)
  index = DeviceHammingIndex(db[:100], block=64, group=32)
  with pytest.raises(ValueError, match="k must be in"):
    index.search(q, 101)
  with pytest.raises(ValueError, match="k must be in"):
    index.search(q, 0)
  with pytest.raises(ValueError, match="k must be an integer"):
    index.search(q, 2.5)
  with pytest.raises(ValueError, match=r"\[B, 96\]"):
    index.search(q[:, :48], 5)
  with pytest.raises(ValueError, match=r"\[B, 96\]"):
    index.search(q[0], 5)
  with pytest.raises(ValueError, match="uint8"):
    index.search(q.astype(np.int64), 5)
