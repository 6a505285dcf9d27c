"""mine_negatives follows the one overwrite rule: its output's inputs are recorded beside it
(`OUTPUT.inputs.json`), a rerun on the same inputs reuses it, one on other inputs is refused
in one line unless --overwrite."""
import json
import shutil
import subprocess
import sys

from bpr_jax import mine_negatives


def _beir(root, extra_doc=False):
  root.mkdir(parents=True, exist_ok=True)
  docs = [{"_id": f"d{i}", "title": f"title {i}", "text": f"alpha beta gamma word{i} " * 3}
          for i in range(12)]
  if extra_doc:
    docs.append({"_id": "d99", "title": "new", "text": "alpha word1 word2 word3"})
  (root / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs), encoding="utf-8")
  queries = [{"_id": f"q{i}", "text": f"word{i} alpha"} for i in range(4)]
  (root / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries), encoding="utf-8")
  (root / "qrels").mkdir(exist_ok=True)
  (root / "qrels" / "train.tsv").write_text(
      "query-id\tcorpus-id\tscore\n" + "".join(f"q{i}\td{i}\t1\n" for i in range(4)), encoding="utf-8")
  return root


def _mine(beir, out, *extra):
  return subprocess.run([sys.executable, "-m", "bpr_jax.mine_negatives", f"--beir_dir={beir}",
                         "--split=train", "--num_hard_negatives=3", f"--output={out}", *extra],
                        capture_output=True, text=True, timeout=300, check=False)


def test_rerun_reuses_changed_corpus_is_refused_and_overwrite_replaces(tmp_path):
  beir = _beir(tmp_path / "beir")
  out = tmp_path / "hn.json"
  first = _mine(beir, out)
  assert first.returncode == 0, first.stderr
  record = json.loads((tmp_path / "hn.json.inputs.json").read_text())
  assert set(record["files"]) == {"corpus.jsonl", "queries.jsonl", "qrels/train.tsv"}
  assert record["settings"]["num_hard_negatives"] == 3
  mtime = out.stat().st_mtime_ns

  again = _mine(beir, out)
  assert again.returncode == 0 and "reused" in again.stdout
  assert out.stat().st_mtime_ns == mtime

  shutil.rmtree(beir)
  _beir(beir, extra_doc=True)  # the corpus changed in place
  refused = _mine(beir, out)
  assert refused.returncode == 2
  lines = refused.stderr.strip().splitlines()
  assert lines[-1].startswith("error:") and "corpus.jsonl" in lines[-1] and "--overwrite" in lines[-1]
  assert "Traceback" not in refused.stderr
  assert out.stat().st_mtime_ns == mtime

  other = _mine(beir, out, "--num_hard_negatives=2")
  assert other.returncode == 2 and "settings" in other.stderr

  replaced = _mine(beir, out, "--overwrite")
  assert replaced.returncode == 0, replaced.stderr
  assert json.loads((tmp_path / "hn.json.inputs.json").read_text()) != record


def test_an_output_without_a_record_is_not_replaced_silently(tmp_path):
  beir = _beir(tmp_path / "beir")
  out = tmp_path / "hn.json"
  out.write_text("[]\n", encoding="utf-8")  # someone else's file
  refused = _mine(beir, out)
  assert refused.returncode == 2 and "no provenance record" in refused.stderr
  assert out.read_text() == "[]\n"


def test_missing_input_is_one_line_before_any_work(tmp_path):
  out = tmp_path / "hn.json"
  proc = _mine(tmp_path / "nope", out)
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines()[-1].startswith("error: --beir_dir=")
  assert not out.exists() and not (tmp_path / "hn.json.inputs.json").exists()


def test_inputs_record_names_the_teacher_and_settings(tmp_path):
  beir = _beir(tmp_path / "beir")
  a = mine_negatives.mining_inputs(beir_dir=str(beir), settings={"top_k": 5})
  b = mine_negatives.mining_inputs(beir_dir=str(beir), settings={"top_k": 6})
  from bpr_jax import provenance
  assert provenance.changed(a, b) == ["settings"]
  assert a["files"]["corpus.jsonl"]["bytes"] > 0
  assert mine_negatives.inputs_path("x/hn.json") == "x/hn.json.inputs.json"
