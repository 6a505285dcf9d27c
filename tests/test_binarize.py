"""`python -m bpr_jax.binarize`: a float teacher and a corpus in, a served binary index out (tiny
teacher, 2 training steps); reruns reuse every step; changed inputs and bad input are refused in one
line before any work."""
import json
import pathlib
import subprocess
import sys

import pytest

from bpr_jax.data.dpr import DprJsonSource
from bpr_jax.data.tiny import make_tiny_dataset
from bpr_jax.exported_model import load_exported
from bpr_jax.index import BinaryIndex
from bpr_jax.search import Retriever
from test_distill import _export_teacher

REPO = pathlib.Path(__file__).resolve().parents[1]
FAST = ["--config.num_train_steps=2", "--config.batch_size=8", "--config.checkpoint_every=2", "--top_k=6",
        "--num_hard_negatives=2", "--batch_size=16"]


def _binarize(*args, timeout=600):
  return subprocess.run([sys.executable, "-m", "bpr_jax.binarize", *map(str, args)], cwd=REPO,
                        capture_output=True, text=True, timeout=timeout, check=False)


@pytest.fixture(scope="module")
def done(tmp_path_factory):
  root = tmp_path_factory.mktemp("binarize")
  paths = make_tiny_dataset(root / "data")
  teacher = _export_teacher(paths["vocab_dir"], root / "teacher")
  dev = DprJsonSource(paths["dev"])
  (root / "q.txt").write_text("\n".join(dev[i].question for i in range(24)) + "\n")
  proc = _binarize(f"--teacher={teacher}", f"--passages={paths['passages']}", f"--questions={root / 'q.txt'}",
                   f"--output={root / 'out'}", *FAST)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return {"root": root, "paths": paths, "teacher": teacher, "proc": proc}


def test_a_teacher_and_a_corpus_give_a_binary_index(done):
  out, paths = done["root"] / "out", done["paths"]
  assert sorted(p.name for p in out.iterdir()) == ["codes", "index", "mined.json", "mined.json.inputs.json",
                                                    "model", "train"]
  mined = json.loads((out / "mined.json").read_text())
  assert len(mined) == 24 and all(r["positive_source"] == "teacher_top1" for r in mined)
  config = json.loads((out / "train" / "config.json").read_text())
  # the teacher's own settings are read (configs/binarize.py sets neither), labels unused
  assert config["model"]["pooling"] == "mean" and config["data"]["passage_max_length"] == 24
  assert config["loss"]["label_weight"] == 0.0 and config["loss"]["teacher"] == str(done["teacher"])
  settings = json.loads((out / "model" / "bpr.json").read_text())
  assert settings["mode"] == "bpr" and settings["pooling"] == "mean"
  index = BinaryIndex.load(out / "index")
  assert index.code_bits == 64 and len(index.ids) == sum(1 for _ in open(paths["passages"])) - 1
  hits = Retriever(load_exported(out / "model"), index).search(["who wrote the song"], k=3)
  assert len(hits[0]) == 3
  assert f"--model={out / 'model'} --index={out / 'index'}" in done["proc"].stdout


def test_a_rerun_reuses_every_step(done):
  root = done["root"]
  before = {p: p.stat().st_mtime_ns for p in (root / "out").rglob("*") if p.is_file()}
  proc = _binarize(f"--teacher={done['teacher']}", f"--passages={done['paths']['passages']}",
                   f"--questions={root / 'q.txt'}", f"--output={root / 'out'}", *FAST)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "already mined from the same inputs" in proc.stdout and "(reuse)" in proc.stdout
  after = {p: p.stat().st_mtime_ns for p in (root / "out").rglob("*") if p.is_file()}
  changed = [str(p) for p in before if after.get(p) != before[p] and "tensorboard" not in str(p)]
  assert not changed, changed


def test_changed_questions_are_refused_in_one_line(done, tmp_path):
  root = done["root"]
  (tmp_path / "q2.txt").write_text("another question\n")
  proc = _binarize(f"--teacher={done['teacher']}", f"--passages={done['paths']['passages']}",
                   f"--questions={tmp_path / 'q2.txt'}", f"--output={root / 'out'}", *FAST)
  assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0, proc.stderr[-3000:]
  assert "questions" in proc.stderr and "--overwrite" in proc.stderr
  assert len(json.loads((root / "out" / "mined.json").read_text())) == 24  # untouched


def test_overwrite_with_other_questions_redoes_every_step(done, tmp_path):
  """--overwrite mines again, and the student is trained again from the teacher on the new data
  (the old checkpoints are not resumed), so nothing downstream is stale."""
  out = done["root"] / "out"  # the last test of this module to use it
  (tmp_path / "q2.txt").write_text("\n".join(f"question number {i} about songs" for i in range(10)) + "\n")
  old_index = json.loads((out / "index" / "meta.json").read_text())
  args = [f"--teacher={done['teacher']}", f"--passages={done['paths']['passages']}", f"--questions={tmp_path / 'q2.txt'}",
          f"--output={out}", *FAST]
  # the training run of the old data is refused on its own as well (mined.json removed by hand)
  (out / "mined.json").unlink()
  (out / "mined.json.inputs.json").unlink()
  proc = _binarize(*args)
  assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0, proc.stderr[-3000:]
  assert "was trained on other data (files.questions:" in proc.stderr
  proc = _binarize(*args, "--overwrite")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "starting again (--overwrite)" in proc.stdout
  assert len(json.loads((out / "mined.json").read_text())) == 10
  config = json.loads((out / "train" / "config.json").read_text())
  assert config["data"]["train_path"] == str(out / "mined.json")
  new_index = json.loads((out / "index" / "meta.json").read_text())
  assert new_index["inputs"]["codes"] != old_index["inputs"]["codes"]  # new model, new codes


@pytest.mark.parametrize("case", ["empty_questions", "not_an_export", "bad_field", "no_corpus", "top_k"])
def test_bad_input_is_refused_before_any_work(done, tmp_path, case):
  paths = done["paths"]
  (tmp_path / "q.txt").write_text("a question\n")
  (tmp_path / "empty.txt").write_text("\n\n")
  args = {"teacher": done["teacher"], "passages": paths["passages"], "questions": tmp_path / "q.txt"}
  extra, words = [], ""
  if case == "empty_questions":
    args["questions"], words = tmp_path / "empty.txt", "no questions"
  elif case == "not_an_export":
    args["teacher"], words = paths["vocab_dir"], "bpr.json"
  elif case == "bad_field":
    extra, words = ["--config.loss.distill_temprature=1"], "distill_temprature"
  elif case == "top_k":
    extra, words = ["--top_k=5", "--num_hard_negatives=30"], "--top_k 5"
  else:
    args["passages"], words = tmp_path / "missing.jsonl", "missing.jsonl"
  proc = _binarize(*(f"--{k}={v}" for k, v in args.items()), f"--output={tmp_path / 'out'}", *extra)
  assert proc.returncode in (1, 2) and "Traceback" not in proc.stderr, proc.stderr[-3000:]
  assert words in proc.stderr.strip().splitlines()[-1]
  assert not (tmp_path / "out").exists()
