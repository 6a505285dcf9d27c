"""Tests for bpr_jax.index.codes_dir: the encode output format (write, then read back)."""
import json

import numpy as np
import pytest

from bpr_jax.codes import pack_codes
from bpr_jax.index import codes_dir as cd
from bpr_jax.index import load_codes_dir


def _codes(n, d=32, seed=0):
  rng = np.random.default_rng(seed)
  return pack_codes(rng.standard_normal((n, d)).astype(np.float32))


def _write_shard(out, codes, ids, shard=(0, 1), chunk=4, emb=None):
  """One shard written the way bpr_jax.encode does: chunks, merge, manifest last."""
  nchunks = -(-len(codes) // chunk)
  for i in range(nchunks):
    sl = slice(i * chunk, (i + 1) * chunk)
    cd.write_chunk(cd.chunk_path(out, i), codes[sl], np.asarray(ids[sl], dtype=str),
                   None if emb is None else emb[sl])
  files = cd.merge_chunks(out, nchunks, len(codes), codes.shape[1],
                          0 if emb is None else emb.shape[1], emb is not None)
  return cd.write_manifest(out, {"num_passages": len(codes), "code_bits": codes.shape[1] * 8,
                                 "num_shards": shard[1], "shard_index": shard[0],
                                 "files": files})


def test_shard_dir_and_chunk_path(tmp_path):
  assert cd.shard_dir(tmp_path, 1, 0) == tmp_path
  assert cd.shard_dir(tmp_path, 3, 2) == tmp_path / "shard_00002"
  assert cd.chunk_path(tmp_path, 7) == tmp_path / "chunks" / "chunk_00007.npz"


def test_write_read_one_shard_with_embeddings(tmp_path):
  codes = _codes(10)
  emb = np.random.default_rng(1).standard_normal((10, 32)).astype(np.float32)
  m = _write_shard(tmp_path, codes, [str(i * 3) for i in range(10)], emb=emb)
  assert m["format"] == cd.CODES_FORMAT == "bpr-codes-v1"
  assert set(m["files"]) == {"codes.npy", "ids.npy", "embeddings.npy"}
  assert json.loads((tmp_path / "manifest.json").read_text()) == m
  assert cd.read_manifest(tmp_path) == m
  np.testing.assert_array_equal(np.load(tmp_path / "embeddings.npy"), emb)
  got = load_codes_dir(tmp_path)
  np.testing.assert_array_equal(got.codes, codes)
  assert got.ids.dtype == np.int64 and got.ids.tolist() == [i * 3 for i in range(10)]
  assert got.code_bits == 32 and len(got.manifests) == 1
  assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_chunk_ok_and_write_chunk_checks(tmp_path):
  p = cd.chunk_path(tmp_path, 0)
  assert not cd.chunk_ok(p, 3, False)
  cd.write_chunk(p, _codes(3), np.array(["a", "b", "c"]))
  assert cd.chunk_ok(p, 3, False)
  assert not cd.chunk_ok(p, 4, False)  # wrong row count: redo
  assert not cd.chunk_ok(p, 3, True)  # embeddings expected but absent
  p.write_bytes(p.read_bytes()[:40])  # torn file
  assert not cd.chunk_ok(p, 3, False)
  with pytest.raises(ValueError, match="ids of shape"):
    cd.write_chunk(p, _codes(3), np.array(["a", "b"]))
  with pytest.raises(ValueError, match="uint8"):
    cd.write_chunk(p, np.zeros((3, 4), np.int32), np.array(["a", "b", "c"]))


def test_merge_chunks_checks_row_count(tmp_path):
  cd.write_chunk(cd.chunk_path(tmp_path, 0), _codes(3), np.array(["a", "b", "c"]))
  with pytest.raises(ValueError, match="chunks hold 3 passages, expected 4"):
    cd.merge_chunks(tmp_path, 1, 4, 4, 0, False)
  assert not (tmp_path / "codes.npy").exists()
  assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_read_manifest_none_and_foreign(tmp_path):
  assert cd.read_manifest(tmp_path) is None
  (tmp_path / "manifest.json").write_text('{"format": "other"}')
  with pytest.raises(ValueError, match="not a bpr-codes-v1 manifest"):
    cd.read_manifest(tmp_path)
  (tmp_path / "manifest.json").write_text("{")
  with pytest.raises(ValueError, match="invalid JSON"):
    cd.read_manifest(tmp_path)


def test_load_codes_dir_shards_in_order(tmp_path):
  a, b = _codes(7, seed=1), _codes(5, seed=2)
  _write_shard(tmp_path / "c" / "shard_00001", b, [f"b{i}" for i in range(5)], (1, 2))
  with pytest.raises(ValueError, match="expected shards 0..1"):
    load_codes_dir(tmp_path / "c")
  _write_shard(tmp_path / "c" / "shard_00000", a, [str(i) for i in range(7)], (0, 2))
  got = load_codes_dir(tmp_path / "c")
  np.testing.assert_array_equal(got.codes, np.concatenate([a, b]))
  assert got.ids.tolist() == [str(i) for i in range(7)] + [f"b{i}" for i in range(5)]
  # Mismatched ids length in one shard.
  np.save(tmp_path / "c" / "shard_00000" / "ids.npy", np.arange(6))
  with pytest.raises(ValueError, match="size|checksum"):
    load_codes_dir(tmp_path / "c")


def test_load_codes_dir_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="does not exist"):
    load_codes_dir(tmp_path / "nope")
  with pytest.raises(FileNotFoundError, match="no manifest.json and no shard_"):
    load_codes_dir(tmp_path)
  (tmp_path / "shard_00000").mkdir()
  with pytest.raises(ValueError, match="encode did not finish"):
    load_codes_dir(tmp_path)
