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
