"""bpr_jax.provenance: fingerprints by content, names relative to the folder as given."""
import os

from bpr_jax import provenance


def test_fingerprint_files_accepts_symlinks_to_files_elsewhere(tmp_path):
  """A BEIR folder whose files are links into another folder (as the benchmark's dev split is)."""
  real = tmp_path / "real"
  real.mkdir()
  (real / "queries.jsonl").write_text('{"_id": "q1", "text": "a"}\n')
  split = tmp_path / "split"
  split.mkdir()
  os.symlink(real / "queries.jsonl", split / "queries.jsonl")
  linked = provenance.fingerprint_files([split / "queries.jsonl"], split)
  copy = tmp_path / "copy"
  copy.mkdir()
  (copy / "queries.jsonl").write_text('{"_id": "q1", "text": "a"}\n')
  assert provenance.fingerprint_files([copy / "queries.jsonl"], copy)["sha256"] == linked["sha256"]
  (real / "queries.jsonl").write_text('{"_id": "q1", "text": "b"}\n')
  assert provenance.fingerprint_files([split / "queries.jsonl"], split)["sha256"] != linked["sha256"]


def test_check_output_rule(tmp_path):
  out = tmp_path / "out"
  assert provenance.check_output(out, None, {"a": 1}, what="x") == "create"
  out.mkdir()
  assert provenance.check_output(out, None, {"a": 1}, what="x") == "create"  # an empty folder
  (out / "f").write_text("x")
  assert provenance.check_output(out, {"a": 1}, {"a": 1}, what="x") == "reuse"
  assert provenance.check_output(out, {"a": 1}, {"a": 2}, what="x", overwrite=True) == "overwrite"
  try:
    provenance.check_output(out, {"a": 1}, {"a": 2}, what="x")
  except provenance.ProvenanceError as e:
    assert "a: 1 -> 2" in str(e) and "--overwrite" in str(e) and "\n" not in str(e)
  else:
    raise AssertionError("not refused")


def test_describe_names_the_nested_field_that_changed():
  old = {"files": {"questions": {"path": "/q.txt", "sha256": "a" * 64, "bytes": 3},
                   "passages": {"path": "/p.tsv", "sha256": "b" * 64, "bytes": 9}},
         "settings": {"top_k": 100, "similarity": "cos"}}
  new = {"files": {"questions": {"path": "/q2.txt", "sha256": "c" * 64, "bytes": 3},
                   "passages": {"path": "/p.tsv", "sha256": "b" * 64, "bytes": 9}},
         "settings": {"top_k": 50, "similarity": "cos"}}
  text = provenance.describe(old, new)
  assert text == f"files.questions: /q.txt ({'a' * 12}) -> /q2.txt ({'c' * 12}); settings.top_k: 100 -> 50"
