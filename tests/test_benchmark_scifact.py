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


def _fake_beir(root):
  (root / "qrels").mkdir(parents=True)
  (root / "corpus.jsonl").write_text('{"_id": "d1", "title": "", "text": "x"}\n')
  (root / "queries.jsonl").write_text('{"_id": "q1", "text": "x"}\n')
  rows = ["query-id\tcorpus-id\tscore"] + [f"q{i}\td{i % 7}\t1" for i in range(40)] + ["q3\td5\t1"]
  (root / "qrels" / "train.tsv").write_text("\n".join(rows) + "\n")
  (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nt1\td1\t1\n")
  return root


def _qids(path):
  return {line.split("\t")[0] for line in path.read_text().splitlines()[1:] if line}


def test_dev_split_is_seeded_disjoint_and_complete(bench, tmp_path):
  src = _fake_beir(tmp_path / "src")
  info = bench.make_dev_split(src, tmp_path / "split", num_dev=10, seed=0)
  train, dev = _qids(tmp_path / "split/qrels/train.tsv"), _qids(tmp_path / "split/qrels/dev.tsv")
  assert len(dev) == 10 and len(train) == 30 and not train & dev
  assert train | dev == _qids(src / "qrels/train.tsv") and sorted(dev) == info["dev_query_ids"]
  # every judgement kept once (q3 has two)
  n = lambda p: len(p.read_text().splitlines()) - 1  # noqa: E731
  assert n(tmp_path / "split/qrels/train.tsv") + n(tmp_path / "split/qrels/dev.tsv") == 41
  assert (tmp_path / "split/qrels/test.tsv").read_text() == (src / "qrels/test.tsv").read_text()
  again = bench.make_dev_split(src, tmp_path / "split2", num_dev=10, seed=0)
  assert again["dev_query_ids"] == info["dev_query_ids"]
  assert bench.make_dev_split(src, tmp_path / "split3", num_dev=10, seed=1)["dev_query_ids"] != info["dev_query_ids"]
  assert bench.make_dev_split(src, tmp_path / "split", num_dev=10, seed=0) == info  # reused
  with pytest.raises(SystemExit, match="another dev split"):
    bench.make_dev_split(src, tmp_path / "split", num_dev=11, seed=0)


def test_select_on_dev_ignores_test_numbers(bench):
  def row(variant, split, ndcg, bpp=48):
    return {"name": "bpr-flat", "split": split, "ndcg@10": ndcg, "bytes_per_passage": bpp,
            **({"variant": variant} if variant else {})}
  rows = [row("", "dev", 0.60), row("", "test", 0.70), row("a", "dev", 0.65), row("a", "test", 0.50),
          row("b", "dev", 0.65), row("b", "test", 0.90), row("c", "dev", 0.10, 96), row("c", "test", 0.2, 96),
          {"name": "dpr-flat", "split": "test", "ndcg@10": 0.7, "bytes_per_passage": 1536}]
  bench.select_on_dev(rows)
  chosen = [(r.get("variant", ""), r["bytes_per_passage"]) for r in rows if r.get("selected_on_dev")]
  assert chosen == [("a", 48), ("c", 96)]  # best dev; tie a/b goes to the first tag; test unused
  assert all("selected_on_dev" not in r for r in rows if r["split"] == "dev" or r["name"] != "bpr-flat")
