"""The export command's provenance and overwrite rule, its one-line errors and its pooling default.

A tiny training run with checkpoints at steps 2 and 4 (about 30 s on 2 CPU cores) is exported
by the command (`python -m bpr_jax.export`) and by the library (`export.export_run`).
"""
import json
import os
import pathlib
import shutil
import subprocess
import sys

import pytest
from flax import nnx

from bpr_jax import export, export_format, exported_model, importers, provenance
from bpr_jax.models import hf
from bpr_jax.models.bert import BertConfig, BertEncoder
from bpr_jax.tokenization import Tokenizer
from conftest import save_bert_dir

REPO = pathlib.Path(__file__).resolve().parents[1]
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = ["binary", "passage", "retriever", "hash", "code", "search"]


def run_export(*args, timeout=300):
  return subprocess.run([sys.executable, "-m", "bpr_jax.export", *map(str, args)], cwd=REPO,
                        capture_output=True, text=True, timeout=timeout, env=os.environ.copy())


def assert_one_line_error(proc, *fragments):
  lines = proc.stderr.strip().splitlines()
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-3000:]
  assert "Traceback" not in proc.stderr
  for fragment in fragments:
    assert fragment in lines[0], lines[0]
  return lines[0]


def source_of(out):
  return json.loads((pathlib.Path(out) / export_format.SETTINGS_FILE).read_text())["inputs"]["source"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """A tiny training workdir with finished checkpoints at steps 2 and 4."""
  from bpr_jax import checkpoints, train
  from configs import tiny
  c = tiny.get_config()
  c.num_train_steps, c.batch_size, c.log_every, c.eval_every = 4, 8, 2, 0
  c.checkpoint_every, c.async_checkpoints, c.keep_checkpoints = 2, False, 10
  c.data.question_max_length, c.data.passage_max_length = 12, 24
  c.model.bert.update(dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                           intermediate_size=32))
  workdir = tmp_path_factory.mktemp("run")
  train.train_and_evaluate(c, str(workdir))
  assert checkpoints.available_steps(str(workdir)) == [2, 4]
  return workdir


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
  """(a tiny random BERT, a HF dir holding it with a tokenizer)."""
  root = tmp_path_factory.mktemp("tiny_bert")
  (root / "vocab").mkdir()
  (root / "vocab" / "vocab.txt").write_text("\n".join(SPECIALS + WORDS) + "\n")
  tokenizer = Tokenizer.from_dir(root / "vocab")
  config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=16, num_hidden_layers=1,
                      num_attention_heads=2, intermediate_size=32, max_position_embeddings=32)
  model = BertEncoder(config, rngs=nnx.Rngs(0))
  return model, save_bert_dir(model, root / "bert", tokenizer=tokenizer)


def test_rerun_of_the_same_export_reuses_it(run, tmp_path):
  out = tmp_path / "e"
  assert export.export_run(run, out, step=2) == ("create", 2)
  source = source_of(out)
  assert source["kind"] == "checkpoint" and source["step"] == 2
  assert source["workdir"] == str(pathlib.Path(run).resolve())
  assert source["checkpoint"]["path"].endswith("checkpoints/2") and source["checkpoint"]["files"] > 0
  before = (out / export_format.SETTINGS_FILE).stat().st_mtime_ns
  proc = run_export(f"--workdir={run}", "--step=2", f"--output={out}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert f"{out}: already exported from checkpoint {pathlib.Path(run).resolve()} step 2 (reused)" in proc.stdout
  assert (out / export_format.SETTINGS_FILE).stat().st_mtime_ns == before
  assert sorted(p.name for p in tmp_path.iterdir()) == ["e"]


def test_export_of_another_step_is_refused_unless_overwrite(run, tmp_path):
  out = tmp_path / "e"
  export.export_run(run, out, step=2)
  before = (out / export_format.SETTINGS_FILE).read_text()
  line = assert_one_line_error(run_export(f"--workdir={run}", "--step=4", f"--output={out}"),
                               "source", "step 2", "step 4", "--overwrite")
  assert "source changed: checkpoint, step" in line
  assert (out / export_format.SETTINGS_FILE).read_text() == before
  proc = run_export(f"--workdir={run}", f"--output={out}", "--overwrite")  # latest: step 4
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert source_of(out)["step"] == 4
  assert exported_model.load_exported(out).settings["inputs"]["source"]["step"] == 4
  assert sorted(p.name for p in tmp_path.iterdir()) == ["e"]  # replaced atomically, no debris


def test_bad_step_lists_the_steps_there_are(run, tmp_path):
  line = assert_one_line_error(run_export(f"--workdir={run}", "--step=7", f"--output={tmp_path / 'e'}"),
                               "no checkpoint step 7", "steps there: 2, 4")
  assert str(pathlib.Path(run).resolve() / "checkpoints") in line
  assert not (tmp_path / "e").exists()


def test_missing_workdir_or_checkpoints_is_one_line(run, tmp_path):
  assert_one_line_error(run_export(f"--workdir={tmp_path / 'missing'}", f"--output={tmp_path / 'e'}"),
                        "training workdir not found", str(tmp_path / "missing"))
  empty = tmp_path / "empty"
  empty.mkdir()
  shutil.copy(pathlib.Path(run) / "config.json", empty / "config.json")
  assert_one_line_error(run_export(f"--workdir={empty}", f"--output={tmp_path / 'e'}"),
                        "no finished checkpoint", str(empty / "checkpoints"))
  assert not (tmp_path / "e").exists()


def test_hf_model_without_pooling_uses_the_models_own(minilm_dir, tmp_path):
  # minilm_dir fails (never skips) when the shared data is missing: set BPR_SHARED_DIR.
  assert hf.read_pooling(minilm_dir) == "mean"
  out = tmp_path / "minilm"
  proc = run_export(f"--hf_model={minilm_dir}", "--max_length=16", f"--output={out}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  settings = json.loads((out / export_format.SETTINGS_FILE).read_text())
  assert settings["pooling"] == "mean" and settings["inputs"]["source"]["pooling"] == "mean"
  source = settings["inputs"]["source"]
  assert source["kind"] == "hf" and source["max_length"] == 16 and source["mode"] == "bpr"
  assert source["model"]["path"] == str(pathlib.Path(minilm_dir).resolve())


def _pooling_config(mode):
  keys = {"cls": "pooling_mode_cls_token", "mean": "pooling_mode_mean_tokens",
          "max": "pooling_mode_max_tokens"}
  return json.dumps({"word_embedding_dimension": 16, **{k: m == mode for m, k in keys.items()}})


def test_read_pooling_of_each_sentence_transformers_layout(tmp_path):
  layouts = {
      "modules": ("2_Pool/config.json", "cls"),
      "st_folder": ("1_Pooling/config.json", "mean"),
      "old": ("sentence_transformers/pooling_config.json", "cls"),
  }
  for name, (file, mode) in layouts.items():
    path = tmp_path / name / file
    path.parent.mkdir(parents=True)
    path.write_text(_pooling_config(mode))
  (tmp_path / "modules" / "modules.json").write_text(json.dumps([
      {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
      {"idx": 1, "name": "1", "path": "2_Pool", "type": "sentence_transformers.models.Pooling"}]))
  assert hf.read_pooling(tmp_path / "modules") == "cls"
  assert hf.read_pooling(tmp_path / "st_folder") == "mean"
  assert hf.read_pooling(tmp_path / "old") == "cls"
  (tmp_path / "none").mkdir()
  assert hf.read_pooling(tmp_path / "none") is None
  (tmp_path / "max" / "1_Pooling").mkdir(parents=True)
  (tmp_path / "max" / "1_Pooling" / "config.json").write_text(_pooling_config("max"))
  with pytest.raises(ValueError, match="1_Pooling/config.json: pooling 'max' is not supported"):
    hf.read_pooling(tmp_path / "max")
  # the export's default and notes
  assert importers.hf_pooling(tmp_path / "st_folder") == ("mean", None)
  pooling, note = importers.hf_pooling(tmp_path / "none")
  assert pooling == "cls" and "no sentence-transformers pooling config" in note
  pooling, note = importers.hf_pooling(tmp_path / "st_folder", "cls")
  assert pooling == "cls" and "pools 'mean'" in note and "as asked" in note
  assert importers.hf_pooling(tmp_path / "max", "mean")[0] == "mean"
  with pytest.raises(ValueError, match="max"):
    importers.hf_pooling(tmp_path / "max")


def test_model_fingerprint_is_the_same_across_sources(tiny_bert, tmp_path):
  model, bert_dir = tiny_bert
  copy = tmp_path / "copy"
  shutil.copytree(bert_dir, copy)
  assert importers.import_hf_encoder(bert_dir, tmp_path / "a", max_length=16) == "create"
  assert importers.import_hf_encoder(copy, tmp_path / "b", max_length=16) == "create"
  assert source_of(tmp_path / "a")["model"]["path"] != source_of(tmp_path / "b")["model"]["path"]
  fingerprint = provenance.model_fingerprint(tmp_path / "a")
  assert provenance.model_fingerprint(tmp_path / "b")["sha256"] == fingerprint["sha256"]
  # the same weights and settings recorded as coming from a training run
  settings = export_format.read_settings(tmp_path / "a")
  del settings["inputs"]
  export_format.save_exported(model, model, Tokenizer.from_dir(bert_dir), settings, tmp_path / "c",
                              inputs={"source": {"kind": "checkpoint", "workdir": "/elsewhere", "step": 1}})
  assert source_of(tmp_path / "c")["kind"] == "checkpoint"
  assert provenance.model_fingerprint(tmp_path / "c")["sha256"] == fingerprint["sha256"]
  # another setting is another model
  importers.import_hf_encoder(bert_dir, tmp_path / "d", max_length=8)
  assert provenance.model_fingerprint(tmp_path / "d")["sha256"] != fingerprint["sha256"]


def test_library_imports_follow_the_overwrite_rule(tiny_bert, tmp_path):
  model, bert_dir = tiny_bert
  out = tmp_path / "e"
  assert importers.import_hf_encoder(bert_dir, out, pooling="mean", max_length=16) == "create"
  assert importers.import_hf_encoder(bert_dir, out, pooling="mean", max_length=16) == "reuse"
  with pytest.raises(provenance.ProvenanceError, match="source changed: pooling"):
    importers.import_hf_encoder(bert_dir, out, pooling="cls", max_length=16)
  assert importers.import_hf_encoder(bert_dir, out, pooling="cls", max_length=16, overwrite=True) == "overwrite"
  assert export_format.read_settings(out)["pooling"] == "cls"
  # DPR import: kind "dpr", reused when run again
  tokenizer = Tokenizer.from_dir(bert_dir)
  hf.save_dpr(model, tmp_path / "q", kind="question", tokenizer=tokenizer)
  hf.save_dpr(model, tmp_path / "c", kind="ctx")
  pair = (tmp_path / "q", tmp_path / "c")
  assert importers.import_dpr(pair, tmp_path / "dpr", max_length=16) == "create"
  source = source_of(tmp_path / "dpr")
  assert source["kind"] == "dpr" and source["pooling"] == "cls" and source["tokenizer"]["files"] > 0
  assert importers.import_dpr(pair, tmp_path / "dpr", max_length=16) == "reuse"
  with pytest.raises(provenance.ProvenanceError, match="Hugging Face model"):
    importers.import_dpr(pair, out, max_length=16)
  # a folder that is not an export is never replaced, even with overwrite
  other = tmp_path / "other"
  other.mkdir()
  (other / "notes.txt").write_text("keep")
  with pytest.raises(FileExistsError, match="not an exported model"):
    importers.import_hf_encoder(bert_dir, other, max_length=16, overwrite=True)
  assert (other / "notes.txt").read_text() == "keep"
