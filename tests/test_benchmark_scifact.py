"""benchmarks/scifact.py report helpers: target checks and variant discovery (no training)."""
import importlib.util
import json
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


def _load(name: str):
  """benchmarks/NAME.py as a module (the benchmarks are scripts, not an installed package)."""
  spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO / "benchmarks" / f"{name}.py")
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


@pytest.fixture(scope="module")
def bench():
  return _load("scifact")


@pytest.fixture(scope="module")
def report():
  return _load("scifact_report")


def _row(name, ndcg, bpp=48.0, split="test", **extra):
  return {"name": name, "ndcg@10": ndcg, "recall@100": 0.9, "bytes_per_passage": bpp, "split": split, **extra}


def test_target_checks_margins_and_boundaries(report):
  rows = [_row("bpr-flat", 0.650, selected_on_dev=True), _row("dpr-flat", 0.660, 1536.0),
          _row("dpr-sign", 0.650), _row("dpr-lsh", 0.600), _row("dpr-pq", 0.650),
          _row("minilm-float", 0.6509, 1536.0, doc_format="pair"),
          _row("bpr-flat", 0.700, split="dev")]
  got = {t["other"]: t for t in report.target_checks(rows)}
  assert got["dpr-flat"]["met"] and got["dpr-flat"]["margin_points"] == -1.0   # within 1: inclusive
  assert not got["dpr-sign"]["met"]                                            # above: strict
  assert got["dpr-lsh"]["met"] and got["dpr-lsh"]["margin_points"] == 5.0     # at least 5
  assert got["dpr-pq"]["met"]                                                  # at or above
  assert not got["minilm-float (pair)"]["met"]
  rows[1]["ndcg@10"] = 0.6601
  assert not {t["other"]: t for t in report.target_checks(rows)}["dpr-flat"]["met"]
  # a BPR row not chosen on dev is not checked
  assert report.target_checks([_row("bpr-flat", 0.7), _row("dpr-flat", 0.6, 1536.0)]) == []


def test_target_checks_per_code_size_use_the_selected_variant_and_equal_bytes(report):
  rows = [_row("bpr-flat", 0.69), _row("bpr-flat", 0.71, variant="h", selected_on_dev=True),
          _row("bpr-flat", 0.60, 16.0, variant="h128", selected_on_dev=True),
          _row("bpr-flat", 0.72, 96.0, variant="h768"),  # not selected: no checks at 96 B
          _row("dpr-pq", 0.70), _row("dpr-pq-128bit", 0.61, 16.0), _row("dpr-pq-768bit", 0.70, 96.0),
          _row("dpr-lsh-128bit", 0.50, 16.0)]
  gaps = {"ft-bpr-h": {"scores": {"sign": {"ndcg@10": 0.71}}, "tanh_final_minus_sign_points": 0.4},
          "ft-bpr-h128": {"scores": {"sign": {"ndcg@10": 0.60}}, "tanh_final_minus_sign_points": 1.5}}
  got = report.target_checks(rows, gaps)
  by = {(t["bytes_per_passage"], t["other"]): t for t in got}
  assert {b for b, _ in by} == {16.0, 48.0}
  assert by[(48.0, "dpr-pq")]["met"] and by[(48.0, "dpr-pq")]["bpr_variant"] == "h"
  assert not by[(16.0, "dpr-pq-128bit")]["met"] and by[(16.0, "dpr-pq-128bit")]["margin_points"] == -1.0
  assert by[(16.0, "dpr-lsh-128bit")]["met"]
  assert by[(48.0, "tanh at final beta")]["met"] and not by[(16.0, "tanh at final beta")]["met"]
  table = {m["code_bits"]: m for m in report.memory_table(rows)}
  assert table[768]["bpr"] is None and table[768]["dpr-pq"]["name"] == "dpr-pq-768bit"
  assert table[384]["bpr"]["variant"] == "h" and table[128]["dpr-lsh"]["ndcg@10"] == 0.50
  assert "relaxation=ste" not in "\n".join(report.target_lines(got, "## T"))  # tanh runs: no note


def test_gap_rows_of_ste_runs_also_say_what_the_codes_lose_against_float(report):
  rows = [_row("bpr-flat", 0.71, variant="h", selected_on_dev=True), _row("dpr-pq", 0.70)]
  gaps = {"ft-bpr-h": {"scores": {"sign": {"ndcg@10": 0.71}}, "tanh_final_minus_sign_points": 2.6,
                       "relaxation": "ste", "float_minus_sign_points": 2.7}}
  got = report.target_checks(rows, gaps)
  gap = next(t for t in got if t["other"] == "tanh at final beta")
  assert not gap["met"] and gap["relaxation"] == "ste"  # the target row stays as it is
  text = "\n".join(report.target_lines(got, "## T"))
  assert "| NO |" in text and "loss.relaxation=ste" in text and "48 B +2.70 points" in text


def test_variant_dirs(report, bench, tmp_path):
  for name in ("ft-bpr", "ft-dpr", "ft-bpr-gamma10", "ft-dpr-lr5e-5", "ft-bpr-gamma10"):
    (tmp_path / name).mkdir(exist_ok=True)
  (tmp_path / "ft-other-x").mkdir()
  assert report.variant_tags(tmp_path) == ["gamma10", "lr5e-5"]
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


def test_select_on_dev_takes_only_runs_of_the_dpr_budget(bench):
  def row(variant, split, ndcg, steps):
    return {"name": "bpr-flat", "split": split, "ndcg@10": ndcg, "bytes_per_passage": 48, "train_steps": steps,
            **({"variant": variant} if variant else {})}
  rows = [row("", "dev", 0.60, 200), row("", "test", 0.70, 200), row("long", "dev", 0.80, 400),
          row("long", "test", 0.90, 400)]
  bench.select_on_dev(rows, train_steps=200)
  assert [r.get("variant", "") for r in rows if r.get("selected_on_dev")] == [""]
  bench.select_on_dev(rows, train_steps=400)
  assert [r.get("variant", "") for r in rows if r.get("selected_on_dev")] == ["long"]


def test_memory_plot_is_a_png(tmp_path):
  mod = _load("scifact_plot")
  cell = lambda v: {"name": "x", "ndcg@10": v, "recall@100": 0.9}  # noqa: E731
  result = {"memory_table": [{"code_bits": 128, "bytes_per_passage": 16.0, "bpr": cell(0.6), "dpr-pq": cell(0.55),
                              "dpr-lsh": cell(0.4), "dpr-sign": None},
                             {"code_bits": 384, "bytes_per_passage": 48.0, "bpr": None, "dpr-pq": cell(0.7),
                              "dpr-lsh": cell(0.58), "dpr-sign": cell(0.65)}],
            "rows": [_row("dpr-flat", 0.73, 1536.0, train_steps=200),
                     _row("minilm-float", 0.65, 1536.0, doc_format="pair")]}
  out = mod.plot(result, tmp_path / "m.png")
  assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and not list(tmp_path.glob("*.tmp"))
  result["other_budgets"] = {"400": {"dpr_variant": "400", "memory_table": [dict(m, bpr=cell(0.75)) for m in
                                                                           result["memory_table"]]}}
  result["rows"].append(_row("dpr-flat", 0.74, 1536.0, train_steps=400, variant="400"))
  assert mod.plot(result, tmp_path / "m400.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  # the teacher and nested curves: each at its size the run best on dev, drawn with its test value
  run = lambda variant, split, size, v, **kw: dict(_row("bpr-flat", v, size), split=split, variant=variant, **kw)  # noqa: E731
  result["rows"] += [run("nested", "dev", 16.0, 0.6, nested_bits=[128, 384]), run("nested", "test", 16.0, 0.5, nested_bits=[128, 384]),
                     run("nested", "dev", 48.0, 0.7, nested_bits=[128, 384]), run("nested", "test", 48.0, 0.65, nested_bits=[128, 384]),
                     run("free-a", "dev", 48.0, 0.60, teacher="t", labels=False), run("free-a", "test", 48.0, 0.9, teacher="t", labels=False),
                     run("free-b", "dev", 48.0, 0.62, teacher="t", labels=False), run("free-b", "test", 48.0, 0.58, teacher="t", labels=False),
                     run("label48", "test", 48.0, 0.7, teacher="d", labels=True),  # no dev row: not drawn
                     _row("minilm-sign-two-stage", 0.61, 48.0, doc_format="pair")]
  assert mod.teacher_series(result["rows"]) == {"nested": [(16.0, 0.5), (48.0, 0.65)], "free": [(48.0, 0.58)]}
  assert mod.plot(result, tmp_path / "mt.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  with pytest.raises(SystemExit, match="no memory_table"):
    (tmp_path / "r.json").write_text('{"rows": []}')
    mod.main([f"--result={tmp_path / 'r.json'}"])


def test_a_preempted_training_run_is_not_exported(bench, tmp_path):
  """train exits 0 when SIGTERM stops it (checkpoint saved): the benchmark must stop, not export it."""
  (tmp_path / "config.json").write_text(json.dumps({"num_train_steps": 200}))
  (tmp_path / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss": 1.0}) + "\n" for s in (10, 20)))
  with pytest.raises(SystemExit, match="stopped at step 20 of 200"):
    bench.check_trained(tmp_path)
  (tmp_path / "metrics.jsonl").write_text("")
  with pytest.raises(SystemExit, match="step 0 of 200"):
    bench.check_trained(tmp_path)
  (tmp_path / "metrics.jsonl").write_text(json.dumps({"step": 200}) + "\n")
  bench.check_trained(tmp_path)  # finished: no error


def test_another_budget_gets_its_own_selection_dpr_and_targets(report, bench):
  def run(variant, steps, bpr_dev, bpr_test, bpp=48.0):
    v = {"variant": variant} if variant else {}
    return [_row("bpr-flat", bpr_dev, bpp, "dev", train_steps=steps, **v),
            _row("bpr-flat", bpr_test, bpp, train_steps=steps, **v)]
  finetuned = (run("", 200, 0.70, 0.68) + run("long", 400, 0.75, 0.72) + run("long96", 400, 0.74, 0.73, 96.0)
               + [_row("dpr-flat", 0.70, 1536.0, train_steps=200), _row("dpr-pq", 0.69, train_steps=200),
                  _row("dpr-flat", 0.725, 1536.0, train_steps=400, variant="400"),
                  _row("dpr-pq", 0.71, train_steps=400, variant="400"),
                  _row("dpr-pq-768bit", 0.74, 96.0, train_steps=400, variant="400")])
  untrained = [_row("minilm-float", 0.65, 1536.0, doc_format="pair")]
  bench.select_on_dev(finetuned, train_steps=200)
  other = report.other_budget_tables(finetuned, untrained, {}, 200)
  assert list(other) == [400] and other[400]["dpr_variant"] == "400"
  assert sorted(other[400]["selected"]) == [(48.0, "long"), (96.0, "long96")]
  by = {(t["bytes_per_passage"], t["other"]): t for t in other[400]["targets"]}
  assert by[(48.0, "dpr-flat")]["other_ndcg@10"] == 0.725 and by[(48.0, "dpr-flat")]["met"]  # -0.5 points
  assert by[(48.0, "dpr-pq")]["other_ndcg@10"] == 0.71 and by[(96.0, "dpr-pq-768bit")]["margin_points"] == -1.0
  # the main table's selection and DPR are untouched
  assert [r.get("variant", "") for r in finetuned if r.get("selected_on_dev")] == [""]
  main = {t["other"]: t for t in report.target_checks(untrained + finetuned)}
  assert main["dpr-flat"]["other_ndcg@10"] == 0.70 and main["dpr-pq"]["other_ndcg@10"] == 0.69
