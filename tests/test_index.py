"""Tests for bpr_jax.index (builders, binary_index, the command).

ivf: tests/test_index_ivf.py; the encode output format: tests/test_codes_dir.py;
atomic writes and checksums: tests/test_io.py.
"""
import json
import subprocess
import sys

import faiss
import numpy as np
import pytest

from bpr_jax import io
from bpr_jax.codes import pack_codes
from bpr_jax.index import BinaryIndex, build_index, save_index
from bpr_jax.index.builders import default_hash_bits, index_settings
from bpr_jax.index.codes_dir import CODES_FORMAT
from bpr_jax.index.ids import normalize_ids


def _codes(n=300, d=32, seed=0):
  rng = np.random.default_rng(seed)
  return pack_codes(rng.standard_normal((n, d)).astype(np.float32))


def _write_codes_dir(path, codes, ids, shard=None):
  """A minimal encode output folder (as bpr_jax.encode writes it)."""
  path.mkdir(parents=True, exist_ok=True)
  io.atomic_save_npy(path / "codes.npy", codes)
  io.atomic_save_npy(path / "ids.npy", normalize_ids(ids))
  m = {"format": CODES_FORMAT, "num_passages": len(codes), "code_bits": codes.shape[1] * 8,
       "files": {n: io.file_record(path / n) for n in ("codes.npy", "ids.npy")}}
  if shard is not None:
    m.update(num_shards=shard[1], shard_index=shard[0])
  io.atomic_write_json(path / "manifest.json", m)


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
  assert normalize_ids(["1", "01"]).dtype.kind == "U"  # "01" is not canonical


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
  assert default_hash_bits(21_000_000, 768) == 16
  assert default_hash_bits(10, 32) == 1


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
    io.load_npy(tmp_path / "i" / "codes.npy")
  with pytest.raises(FileNotFoundError, match="meta.json"):
    BinaryIndex.load(tmp_path)


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


def test_index_command_ivf(tmp_path):
  rng = np.random.default_rng(8)
  codes = rng.integers(0, 256, (600, 16), dtype=np.uint8)
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
    settings = index_settings(build_index(codes, kind))
    assert settings["hash_bits"] == 1 and settings["nflip"] <= settings["hash_bits"]
