"""benchmarks/scifact.py report helpers: target checks and variant discovery (no training)."""
import importlib.util
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
  spec = importlib.util.spec_from_file_location("bench_scifact", REPO / "benchmarks" / "scifact.py")
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


def _rows(bpr, **others):
  rows = [{"name": "bpr-flat", "ndcg@10": bpr}]
  for key, v in others.items():
    name, _, fmt = key.replace("_", "-").partition(":")
    rows.append({"name": name, "ndcg@10": v, **({"doc_format": fmt} if fmt else {})})
  return rows


def test_target_checks_margins_and_boundaries(bench):
  rows = _rows(0.650, **{"dpr-flat": 0.660, "dpr-sign": 0.650, "dpr-lsh": 0.600, "dpr-pq": 0.650,
                          "minilm-float:pair": 0.6509, "minilm-float:single": 0.6451})
  got = {t["other"]: t for t in bench.target_checks(rows)}
  assert got["dpr-flat"]["met"] and got["dpr-flat"]["margin_points"] == -1.0   # within 1: inclusive
  assert not got["dpr-sign"]["met"]                                            # above: strict
  assert got["dpr-lsh"]["met"] and got["dpr-lsh"]["margin_points"] == 5.0     # at least 5
  assert got["dpr-pq"]["met"]                                                  # at or above
  assert not got["minilm-float (pair)"]["met"] and got["minilm-float (single)"]["met"]
  rows[1]["ndcg@10"] = 0.6601
  assert not {t["other"]: t for t in bench.target_checks(rows)}["dpr-flat"]["met"]
  assert bench.target_checks([{"name": "dpr-flat", "ndcg@10": 0.6}]) == []


def test_variant_dirs(bench, tmp_path):
  for name in ("ft-bpr", "ft-dpr", "ft-bpr-gamma10", "ft-dpr-lr5e-5", "ft-bpr-gamma10"):
    (tmp_path / name).mkdir(exist_ok=True)
  (tmp_path / "ft-other-x").mkdir()
  assert bench.variant_tags(tmp_path) == ["gamma10", "lr5e-5"]
  assert bench.run_dir(tmp_path, "bpr") == tmp_path / "ft-bpr"
  assert bench.run_dir(tmp_path, "bpr", "gamma10") == tmp_path / "ft-bpr-gamma10"
  assert bench.finetuned_rows(tmp_path, "gamma10") == []
