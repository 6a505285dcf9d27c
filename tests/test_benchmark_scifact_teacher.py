"""benchmarks/scifact_teacher.py: rows of teacher runs gain teacher/labels/code_bits/nested_bits and
replace their tag's earlier rows in scifact.json; older rows keep their values and gain the fields."""
import json

from benchmarks import scifact_teacher


def _run(work, tag, overrides, ndcg):
  d = work / f"ft-bpr-{tag}"
  (d / "train").mkdir(parents=True)
  (d / "times.json").write_text(json.dumps({"train": 10.0, "encode": 2.0}))
  (d / "train" / "config.json").write_text(json.dumps(
      {"batch_size": 16, "seed": 42, "data": {"question_max_length": 64, "passage_max_length": 256}}))
  (d / "train" / "metrics.jsonl").write_text(json.dumps({"step": 200}) + "\n")
  (d / "overrides.json").write_text(json.dumps(overrides))
  row = {"name": "bpr-flat", "ndcg@10": ndcg, "recall@100": 0.9, "bytes_per_passage": 48.0}
  for suffix in ("", "-dev"):
    (d / f"eval-flat{suffix}.json").write_text(json.dumps({"inputs": {}, "rows": [row]}))


def test_collect_adds_fields_and_replaces_the_tags_rows(tmp_path):
  work, results = tmp_path / "w", tmp_path / "r"
  results.mkdir()
  old = [{"name": "bpr-flat", "split": "test", "variant": "free48", "ndcg@10": 0.1, "mode": "bpr",
          "bytes_per_passage": 48.0, "overrides": []},
         {"name": "dpr-flat", "split": "test", "mode": "dpr", "ndcg@10": 0.7, "bytes_per_passage": 1536.0,
          "overrides": []},
         {"name": "minilm-float", "split": "test", "ndcg@10": 0.65, "bytes_per_passage": 1536.0}]
  (results / "scifact.json").write_text(json.dumps({"rows": old}))
  _run(work, "free48", ["data.source=dpr_json", "loss.teacher=/w/teacher-minilm", "loss.label_weight=0.0"], 0.66)
  _run(work, "label48", ["loss.teacher=/w/ft-dpr/model", "loss.distill_weight=1.0",
                         "loss.nested_bits=128,384"], 0.72)
  new = scifact_teacher.collect(work, ["free48", "label48"], results)
  assert len(new) == 4
  rows = json.loads((results / "scifact.json").read_text())["rows"]
  free = [r for r in rows if r.get("variant") == "free48"]
  assert {r["split"] for r in free} == {"dev", "test"} and all(r["ndcg@10"] == 0.66 for r in free)
  assert all(r["teacher"] == "w/teacher-minilm" and r["labels"] is False and r["code_bits"] == 384 for r in free)
  label = [r for r in rows if r.get("variant") == "label48"]
  assert all(r["labels"] is True and r["teacher"] == "ft-dpr/model" and r["nested_bits"] == [128, 384]
             for r in label)
  dpr = next(r for r in rows if r["name"] == "dpr-flat")
  assert dpr["ndcg@10"] == 0.7 and dpr["teacher"] is None and dpr["labels"] is True and dpr["code_bits"] is None
  minilm = next(r for r in rows if r["name"] == "minilm-float")
  assert minilm["labels"] is False
  assert "| free48 |" in (results / "scifact_teacher.md").read_text()


def test_commands_name_every_run(tmp_path, capsys):
  scifact_teacher.print_commands(tmp_path)
  out = capsys.readouterr().out
  assert "--tag=free48" in out and "--tag=label48" in out and "mine_negatives --teacher=" in out


def test_targets_use_the_runs_chosen_on_dev():
  def r(name, v, size=48.0, split="test", variant="", **kw):
    return {"name": name, "ndcg@10": v, "bytes_per_passage": size, "split": split, "variant": variant, **kw}
  free = dict(teacher="t", labels=False, nested_bits=[])
  rows = [r("minilm-float", 0.65, 1536.0, doc_format="pair"), r("dpr-flat", 0.73, 1536.0),
          r("dpr-flat", 0.74, 1536.0, "dev"), r("dpr-pq", 0.70), r("dpr-pq-128bit", 0.56, 16.0),
          r("bpr-flat", 0.71, variant="ste"), r("bpr-flat", 0.66, 16.0, variant="ste-head128"),
          # two label-free runs: b is better on dev, worse on test; b is chosen
          r("bpr-flat", 0.60, split="dev", variant="a", **free), r("bpr-flat", 0.70, variant="a", **free),
          r("bpr-flat", 0.62, split="dev", variant="b", **free), r("bpr-flat", 0.6436, variant="b", **free),
          r("bpr-flat", 0.735, split="dev", variant="l", teacher="d", labels=True, nested_bits=[]),
          r("bpr-flat", 0.721, variant="l", teacher="d", labels=True, nested_bits=[]),
          *(r("bpr-flat", v, size, split, "n", teacher=None, labels=True, nested_bits=[128, 384, 768])
            for size, v in ((16.0, 0.56), (48.0, 0.705)) for split in ("dev", "test"))]
  got = {t["target"]: t for t in scifact_teacher.check_targets(rows)}
  free48 = got["label-free 48 B >= 99% of the teacher's float"]
  assert (free48["run"], free48["test"], free48["bar"], free48["met"]) == ("b", 0.6436, 0.6435, True)
  assert got["label-free 16 B >= 95% of the teacher's float"]["met"] is None  # not run
  label = got["with labels 48 B within 1 point of DPR float (test and dev)"]
  assert (label["bar"], label["dev_bar"], label["met"]) == (0.72, 0.73, True)
  assert got["nested 48 B within 1 point of the separate recipe (ste)"]["met"] is True
  assert got["nested 48 B above DPR + PQ"]["met"] is True
  assert got["nested 16 B above DPR + PQ"]["met"] is False  # equal is not above
  assert got["nested 96 B above DPR + PQ"]["met"] is None
  assert "| **no** |" in "\n".join(scifact_teacher.targets_table(list(got.values())))
