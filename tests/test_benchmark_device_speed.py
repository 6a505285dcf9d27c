"""benchmarks/device_speed.py: its helpers, a small CPU smoke run, and the numpy reference check.

(Moved from tests/test_device_speed.py, which keeps the tests of bpr_jax.device_search.)"""
import json

import numpy as np
import pytest

from benchmarks import device_speed as bench


def _reference(db, q, k):
  """Exact top-k by (distance, row): ties lower row first."""
  ham = np.unpackbits(q[:, None] ^ db[None], axis=-1).sum(-1)
  rows = np.lexsort((np.broadcast_to(np.arange(db.shape[0]), ham.shape), ham), axis=1)[:, :k]
  return np.take_along_axis(ham, rows, 1).astype(np.int32), rows.astype(np.int64)


def test_bench_helpers():
  assert bench.parse_count("21M") == 21_000_000
  assert bench.parse_count("20k") == 20_000
  assert bench.parse_count("2.5M") == 2_500_000
  assert bench.parse_count("5000") == 5000
  for bad in ("x", "0", "1.5"):
    with pytest.raises(Exception):
      bench.parse_count(bad)
  codes, q = bench.make_codes(3000, 6, centres=8, seed=0)
  assert codes.shape == (3000, 96) and q.shape == (6, 96) and codes.dtype == np.uint8
  rd, rr = _reference(codes, q, 40)
  nd, nr = bench.numpy_topk(codes, q, 40, chunk=700)
  np.testing.assert_array_equal(nd, rd)
  np.testing.assert_array_equal(nr, rr)
  # Structured: a question's nearest codes come from its own cluster (~168 bits, others ~384).
  assert rd[:, 0].max() < 250


def test_bench_smoke(tmp_path):
  out = tmp_path / "device_speed.json"
  result = bench.main([
      "--n=5000", "--l=100", "--batch=16", "--repeats=2", "--encoder=tiny",
      "--encode_batch=16", "--encode_batches=2", "--encode_warmup=1", "--length=64",
      f"--output={out}"])
  saved = json.loads(out.read_text())
  assert saved["benchmark"] == "device_speed" and saved == json.loads(json.dumps(result))
  for key in ("device_kind", "backend", "accelerator", "jax_version", "flax_version",
              "python_version", "versions", "args", "hamming", "encode", "notes"):
    assert key in saved, key
  assert saved["accelerator"] is False and saved["backend"] == "cpu"
  assert any("not the GPU targets" in n for n in saved["notes"])
  rows = saved["hamming"]["rows"]
  assert [r["method"] for r in rows] == ["popcount", "matmul"]
  for r in rows:
    for key in ("ms_per_batch_median", "ms_per_query", "build_s", "warmup_s", "meets_target",
                "fallback_queries_timed"):
      assert key in r, key
    assert r["n"] == 5000 and r["batch"] == 16 and r["l"] == 100
    assert r["check"]["checked"] and r["check"]["reference"] == "faiss" and r["check"]["passed"]
  enc = saved["encode"]["rows"][0]
  assert enc["encoder"] == "tiny" and enc["passages_per_s"] > 0 and enc["hours_for_21M"] > 0
  assert enc["length"] == 64 and enc["padded_batch"] % saved["local_device_count"] == 0


def test_bench_numpy_reference(tmp_path):
  out = tmp_path / "ham.json"
  result = bench.main(["--cases=hamming", "--methods=matmul", "--n=3000", "--l=30",
                       "--batch=8", "--repeats=1", "--reference=numpy", "--check_queries=3",
                       f"--output={out}"])
  chk = result["hamming"]["rows"][0]["check"]
  assert chk["reference"] == "numpy" and chk["queries"] == 3
  assert chk["rows_equal"] and chk["passed"]
  assert "encode" not in json.loads(out.read_text())
