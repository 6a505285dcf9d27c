"""Tests for bpr_jax.index: building, saving, loading and the command."""
import json
import subprocess
import sys

import faiss
import numpy as np
import pytest

from bpr_jax import index as bindex
from bpr_jax.codes import pack_codes
from bpr_jax.index import BinaryIndex, build_index, load_codes_dir, save_index


def _codes(n=300, d=32, seed=0):
  rng = np.random.default_rng(seed)
  return pack_codes(rng.standard_normal((n, d)).astype(np.float32))


def _write_codes_dir(path, codes, ids, shard=None):
  """A minimal encode output folder (as bpr_jax.encode writes it)."""
  path.mkdir(parents=True, exist_ok=True)
  bindex.atomic_save_npy(path / "codes.npy", codes)
  bindex.atomic_save_npy(path / "ids.npy", bindex.normalize_ids(ids))
  m = {"format": bindex.CODES_FORMAT, "num_passages": len(codes), "code_bits": codes.shape[1] * 8,
       "files": {n: bindex.file_record(path / n) for n in ("codes.npy", "ids.npy")}}
  if shard is not None:
    m.update(num_shards=shard[1], shard_index=shard[0])
  bindex.atomic_write_json(path / "manifest.json", m)


@pytest.mark.parametrize("kind", ["flat", "hash", "multihash"])
def test_build_save_load_roundtrip(tmp_path, kind):
  codes = _codes()
  ids = [f"doc{i}" for i in range(len(codes))]
  idx = build_index(codes, kind, hash_bits=8)
  meta = save_index(tmp_path / "idx", idx, codes, ids, {"model": "m"})
  assert meta["kind"] == kind and meta["code_bits"] == 32 and meta["model"] == "m"
  loaded = BinaryIndex.load(tmp_path / "idx")
  assert loaded.kind == kind and loaded.code_bits == 32 and loaded.ntotal == 300
  np.testing.assert_array_equal(np.asarray(loaded.codes), codes)
  assert loaded.ids_of(np.array([0, 299, -1])) == ["doc0", "doc299", ""]
  # Self-search finds itself at distance 0.
  dist, rows = loaded.index.search(codes[:5], 3)
  assert (dist[:, 0] == 0).all()
  assert not list((tmp_path / "idx").glob("*.tmp"))


def test_integer_ids_stored_as_int64(tmp_path):
  codes = _codes(10)
  save_index(tmp_path / "i", build_index(codes, "flat"), codes, [str(i * 7) for i in range(10)])
  loaded = BinaryIndex.load(tmp_path / "i")
  assert loaded.ids.dtype == np.int64
  assert loaded.ids_of([3]) == ["21"]
  assert bindex.normalize_ids(["1", "01"]).dtype.kind == "U"  # "01" is not canonical


def test_flat_memory_is_codes_plus_ids(tmp_path):
  codes = _codes(1000, 64)
  save_index(tmp_path / "i", build_index(codes, "flat"), codes, np.arange(1000))
  loaded = BinaryIndex.load(tmp_path / "i")
  per = loaded.memory_bytes() / 1000
  assert 8 + 8 <= per <= (8 + 8) * 1.05


def test_hash_bits_limits():
  codes = _codes(50, 128)
  with pytest.raises(ValueError, match="uint64"):
    build_index(codes, "hash", hash_bits=65)
  with pytest.raises(ValueError, match="nhash"):
    build_index(codes, "multihash", hash_bits=64, nhash=3)
  with pytest.raises(ValueError, match="unknown index kind"):
    build_index(codes, "lsh")
  idx = build_index(codes, "multihash", hash_bits=16, nhash=8, nflip=0)
  assert isinstance(idx, faiss.IndexBinaryMultiHash) and idx.nhash == 8 and idx.nflip == 0
  assert bindex.default_hash_bits(21_000_000, 768) == 16
  assert bindex.default_hash_bits(10, 32) == 1


def test_length_mismatch_and_corruption(tmp_path):
  codes = _codes(20)
  with pytest.raises(ValueError, match="ids has 19"):
    save_index(tmp_path / "x", build_index(codes, "flat"), codes, list(range(19)))
  save_index(tmp_path / "i", build_index(codes, "hash", hash_bits=4), codes, list(range(20)))
  # Same size, different bytes -> checksum error.
  raw = bytearray((tmp_path / "i" / "codes.npy").read_bytes())
  raw[-1] ^= 0xFF
  (tmp_path / "i" / "codes.npy").write_bytes(bytes(raw))
  with pytest.raises(ValueError, match="checksum"):
    BinaryIndex.load(tmp_path / "i")
  BinaryIndex.load(tmp_path / "i", verify=False)  # size still fine
  # Truncated file -> size error, and a truncated .npy without manifest -> clear error.
  (tmp_path / "i" / "codes.npy").write_bytes(bytes(raw[:-10]))
  with pytest.raises(ValueError, match="truncated"):
    BinaryIndex.load(tmp_path / "i")
  with pytest.raises(ValueError, match="truncated or invalid"):
    bindex.load_npy(tmp_path / "i" / "codes.npy")
  with pytest.raises(FileNotFoundError, match="meta.json"):
    BinaryIndex.load(tmp_path)


def test_load_codes_dir_shards_in_order(tmp_path):
  a, b = _codes(7, seed=1), _codes(5, seed=2)
  _write_codes_dir(tmp_path / "c" / "shard_00001", b, [f"b{i}" for i in range(5)], (1, 2))
  with pytest.raises(ValueError, match="expected shards 0..1"):
    load_codes_dir(tmp_path / "c")
  _write_codes_dir(tmp_path / "c" / "shard_00000", a, [str(i) for i in range(7)], (0, 2))
  got = load_codes_dir(tmp_path / "c")
  np.testing.assert_array_equal(got.codes, np.concatenate([a, b]))
  assert got.ids.tolist() == [str(i) for i in range(7)] + [f"b{i}" for i in range(5)]
  # Mismatched ids length in one shard.
  bindex.atomic_save_npy(tmp_path / "c" / "shard_00000" / "ids.npy", np.arange(6))
  with pytest.raises(ValueError, match="size|checksum"):
    load_codes_dir(tmp_path / "c")


def test_index_command(tmp_path):
  codes = _codes(40)
  _write_codes_dir(tmp_path / "c", codes, list(range(40)))
  res = subprocess.run([sys.executable, "-m", "bpr_jax.index", f"--codes={tmp_path / 'c'}",
                        "--kind=multihash", "--hash_bits=8", f"--output={tmp_path / 'i'}"],
                       capture_output=True, text=True, check=False)
  assert res.returncode == 0, res.stderr
  meta = json.loads((tmp_path / "i" / "meta.json").read_text())
  assert meta["kind"] == "multihash" and meta["num_passages"] == 40 and meta["hash_bits"] == 8
  res = subprocess.run([sys.executable, "-m", "bpr_jax.index", f"--codes={tmp_path / 'nope'}",
                        f"--output={tmp_path / 'j'}"], capture_output=True, text=True, check=False)
  assert res.returncode != 0 and "error: codes folder" in res.stderr


# ---------------------------------------------------------------------------
# ivf


def _clustered(n=6000, nb=16, n_centres=40, seed=0):
  """Codes = random centres with ~25% of bits flipped (d = 8 * nb)."""
  rng = np.random.default_rng(seed)
  centres = rng.integers(0, 256, (n_centres, nb), dtype=np.uint8)
  which = rng.integers(0, n_centres, n)
  noise = rng.integers(0, 256, (n, nb), dtype=np.uint8) & rng.integers(0, 256, (n, nb),
                                                                        dtype=np.uint8)
  return centres[which] ^ noise, centres


def test_binary_kmeans_recovers_centres():
  codes, centres = _clustered(4000, n_centres=8, seed=1)
  rng = np.random.default_rng(0)
  cent = bindex.binary_kmeans(codes, 8, 10, rng)
  ham = np.unpackbits(cent[:, None] ^ centres[None], axis=-1).sum(-1)
  # Every true centre is matched by a learnt one within a few bits (of 128).
  assert ham.min(0).max() <= 8


def test_split_lists_sums_to_nlist():
  k = bindex._split_lists(10, np.array([100, 1, 5, 50]))
  assert k.sum() == 10 and (k >= 1).all() and (k <= [100, 1, 5, 50]).all()


def test_ivf_two_level_centroids_and_assign():
  codes, _ = _clustered(20000, seed=2)
  cents = bindex.train_ivf_centroids(codes, 400, train_size=8000)  # > 256: two levels
  assert cents.fine.shape == (400, 16) and len(cents.coarse) == 20
  assert cents.group_start[0] == 0 and cents.group_start[-1] == 400
  a = cents.assign(codes[:3000], chunk=1000)
  assert a.min() >= 0 and a.max() < 400
  # The two-level list is (nearly always) as close as the exact nearest centroid.
  exact = bindex._nearest(cents.fine, codes[:3000])
  ham = lambda rows: np.unpackbits(codes[:3000] ^ cents.fine[rows], axis=1).sum(1)  # noqa: E731
  assert np.mean(ham(a) - ham(exact)) < 2.0


def test_ivf_build_defaults_and_errors():
  codes, _ = _clustered(2000, seed=3)
  idx = build_index(codes, "ivf")
  assert isinstance(idx, faiss.IndexBinaryIVF)
  assert idx.nlist == bindex.default_nlist(2000) == 179 and idx.nprobe == 32
  assert idx.ntotal == 2000 and bindex.ivf_list_sizes(idx).sum() == 2000
  assert bindex.default_nlist(21_000_000) == 18330 and bindex.default_nlist(1) == 1
  idx = build_index(codes, "ivf", nlist=7, nprobe=100)
  assert idx.nlist == 7 and idx.nprobe == 7
  with pytest.raises(ValueError, match="nlist"):
    build_index(codes, "ivf", nlist=5000)
  with pytest.raises(ValueError, match="nprobe"):
    build_index(codes, "ivf", nlist=8, nprobe=0)


def test_ivf_save_load_rerank_codes_from_lists(tmp_path):
  codes, _ = _clustered(3000, seed=4)
  ids = np.arange(3000) * 10 + 7
  idx = build_index(codes, "ivf", nlist=50, nprobe=5)
  meta = save_index(tmp_path / "i", idx, codes, ids)
  assert meta["kind"] == "ivf" and meta["nlist"] == 50 and meta["nprobe"] == 5
  assert not (tmp_path / "i" / "codes.npy").exists()  # codes live in the lists only
  assert set(meta["files"]) == {"index.faiss", "ids.npy"}
  for mmap in (True, False):
    loaded = BinaryIndex.load(tmp_path / "i", mmap=mmap)
    assert loaded.kind == "ivf" and loaded.nprobe == 5 and loaded.ntotal == 3000
    assert isinstance(loaded.codes, bindex.IVFListCodes) and loaded.codes.shape == (3000, 16)
    # Row r of the loaded index holds the code of passage ids[r].
    orig = (np.asarray(loaded.ids) - 7) // 10
    np.testing.assert_array_equal(np.asarray(loaded.codes), codes[orig])
    rows = np.array([[5, 2999], [0, 1234]])
    np.testing.assert_array_equal(loaded.codes[rows], codes[orig[rows]])
    np.testing.assert_array_equal(loaded.codes[10:20], codes[orig[10:20]])
    np.testing.assert_array_equal(loaded.codes[-1], codes[orig[-1]])
    # faiss returns the renumbered rows: self-search finds the passage itself.
    dist, got = loaded.index.search(codes[orig[:20]], 1)
    assert (dist[:, 0] == 0).all()
    assert (orig[got[:, 0]] == orig[:20]).all() or (dist[:, 0] == 0).all()
  # In RAM: codes + 8-byte row id per passage + centroids; ids.npy on top.
  per = (tmp_path / "i" / "index.faiss").stat().st_size / 3000
  assert 16 + 8 <= per <= (16 + 8) * 1.05
  assert loaded.memory_bytes() == (tmp_path / "i" / "index.faiss").stat().st_size + 8 * 3000
  with pytest.raises(ValueError, match="nprobe"):
    loaded.nprobe = 51
  with pytest.raises(IndexError):
    loaded.codes[np.array([3000])]


def test_ivf_renumbering_is_checked(tmp_path):
  codes, _ = _clustered(500, seed=5)
  idx = build_index(codes, "ivf", nlist=4)
  bad = tmp_path / "bad"
  save_index(bad, idx, codes, np.arange(500))
  faiss.write_index_binary(idx, str(bad / "index.faiss"))  # original (not renumbered) rows
  with pytest.raises(ValueError, match="inverted-list order"):
    BinaryIndex.load(bad, verify=False)


def test_ivf_recall_vs_flat_and_nprobe():
  from bpr_jax.search import two_stage_search  # pylint: disable=import-outside-toplevel
  codes, centres = _clustered(20000, nb=32, n_centres=200, seed=6)
  rng = np.random.default_rng(7)
  qc = rng.integers(0, 200, 40)
  q = (np.unpackbits(centres[qc], axis=1).astype(np.float32) * 2 - 1
       + 1.2 * rng.standard_normal((40, 256)).astype(np.float32))
  flat = BinaryIndex.from_arrays(codes)
  ivf = BinaryIndex.from_arrays(codes, kind="ivf", nlist=100)
  _, ref = two_stage_search(q, flat, k=10, l=100)
  overlap = {}
  for nprobe in (1, 32, 100):
    _, got = two_stage_search(q, ivf, k=10, l=100, nprobe=nprobe)
    overlap[nprobe] = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(got.tolist(),
                                                                          ref.tolist())])
  assert ivf.nprobe == 32  # the per-call nprobe was restored
  # Measured 0.58 / 0.90 / 1.0: more lists probed, closer to exact Hamming top-l.
  assert overlap[1] < overlap[32] <= overlap[100]
  assert overlap[32] >= 0.8 and overlap[100] >= 0.98


def test_index_command_ivf(tmp_path):
  codes, _ = _clustered(600, seed=8)
  _write_codes_dir(tmp_path / "c", codes, [f"p{i}" for i in range(600)])
  res = subprocess.run([sys.executable, "-m", "bpr_jax.index", f"--codes={tmp_path / 'c'}",
                        "--kind=ivf", "--nlist=12", "--nprobe=3", f"--output={tmp_path / 'i'}"],
                       capture_output=True, text=True, check=False)
  assert res.returncode == 0, res.stderr
  loaded = BinaryIndex.load(tmp_path / "i")
  assert loaded.kind == "ivf" and loaded.nprobe == 3 and loaded.index.nlist == 12
  assert sorted(loaded.ids.tolist()) == sorted(f"p{i}" for i in range(600))


def test_hash_defaults_fit_a_tiny_corpus():
  """Under 512 passages the default key is 1 bit; the default nflip must not exceed it."""
  rng = np.random.default_rng(0)
  codes = rng.integers(0, 256, size=(300, 8), dtype=np.uint8)
  for kind in ("hash", "multihash"):
    settings = bindex.index_settings(build_index(codes, kind))
    assert settings["hash_bits"] == 1 and settings["nflip"] <= settings["hash_bits"]
