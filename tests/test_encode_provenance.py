"""encode's provenance: what an output was made from decides reuse, refusal or --overwrite; bad
collections are refused before anything is written (tiny random BERT on 8 fake CPU devices)."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from flax import nnx

from bpr_jax import encode as enc
from bpr_jax.data.examples import DataError
from bpr_jax.export_format import save_exported
from bpr_jax.exported_model import load_exported
from bpr_jax.models.bert import BertConfig, BertEncoder
from bpr_jax.provenance import ProvenanceError
from bpr_jax.tokenization import Tokenizer

N = 12


def _export(out_dir, tokenizer_dir, seed):
  """A 1-layer random BERT (mean pooling, so codes follow the text; 32-bit codes) whose weights
  depend on ``seed``."""
  config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                      intermediate_size=64, max_position_embeddings=64)
  q = BertEncoder(config, pooling="mean", rngs=nnx.Rngs(seed))
  p = BertEncoder(config, pooling="mean", rngs=nnx.Rngs(seed + 1))
  settings = {"mode": "bpr", "pooling": "mean", "question_max_length": 16, "passage_max_length": 32,
              "code_bits": 32, "hidden_size": 32, "shared_encoder": False}
  save_exported(q, p, Tokenizer.from_dir(tokenizer_dir), settings, out_dir)
  return out_dir


def _write_corpus(path, records):
  with open(path, "w", encoding="utf-8") as f:
    for r in records:
      f.write(json.dumps(r) + "\n")
  return path


@pytest.fixture(scope="module")
def setup(tmp_path_factory, minilm_dir, scifact_dir):
  root = tmp_path_factory.mktemp("prov")
  with open(scifact_dir / "corpus.jsonl", encoding="utf-8") as f:
    records = [json.loads(line) for _, line in zip(range(N), f)]
  return {"root": root, "records": records, "minilm": minilm_dir,
          "model_a": _export(root / "model_a", minilm_dir, 0),
          "model_b": _export(root / "model_b", minilm_dir, 7)}


def _encode(model_dir, corpus, out, **kw):
  kw.setdefault("progress", False)
  return enc.encode_corpus(load_exported(model_dir), corpus, out, model_path=model_dir,
                           batch_size=8, chunk_size=5, **kw)


def test_edited_passage_file_is_refused_then_overwritten(setup, tmp_path):
  corpus = _write_corpus(tmp_path / "corpus.jsonl", setup["records"])
  out = tmp_path / "codes"
  first = _encode(setup["model_a"], corpus, out)
  old_codes = np.load(out / "codes.npy")
  assert first["inputs"]["passages"]["sha256"]
  edited = [dict(r, text="completely different words about something else " * (i % 3 + 1))
            for i, r in enumerate(setup["records"])]
  _write_corpus(corpus, edited)  # in place: same path, other content
  with pytest.raises(ProvenanceError, match=r"passages: .*--overwrite"):
    _encode(setup["model_a"], corpus, out)
  np.testing.assert_array_equal(np.load(out / "codes.npy"), old_codes)  # refused: untouched
  m = _encode(setup["model_a"], corpus, out, overwrite=True)
  assert m["inputs"]["passages"]["sha256"] != first["inputs"]["passages"]["sha256"]
  new_codes = np.load(out / "codes.npy")
  assert new_codes.shape == old_codes.shape and not np.array_equal(new_codes, old_codes)
  assert json.loads((out / "manifest.json").read_text())["files"] == m["files"]
  assert sorted(p.name for p in out.iterdir()) == ["codes.npy", "ids.npy", "manifest.json"]


def test_replaced_model_weights_are_refused(setup, tmp_path):
  corpus = _write_corpus(tmp_path / "corpus.jsonl", setup["records"])
  model = tmp_path / "model"
  shutil.copytree(setup["model_a"], model)
  out = tmp_path / "codes"
  _encode(model, corpus, out)
  shutil.rmtree(model)
  shutil.copytree(setup["model_b"], model)  # same path, other weights
  with pytest.raises(ProvenanceError, match=r"model: "):
    _encode(model, corpus, out)


def test_same_inputs_are_reused_even_moved(setup, tmp_path, capsys):
  corpus = _write_corpus(tmp_path / "corpus.jsonl", setup["records"])
  out = tmp_path / "codes"
  first = _encode(setup["model_a"], corpus, out)
  stamp = (out / "codes.npy").stat().st_mtime_ns
  moved = tmp_path / "elsewhere" / "corpus.jsonl"  # a copied file is the same input
  moved.parent.mkdir()
  shutil.copy(corpus, moved)
  capsys.readouterr()
  again = _encode(setup["model_a"], moved, out, progress=True)
  assert again["files"] == first["files"]
  assert (out / "codes.npy").stat().st_mtime_ns == stamp
  lines = capsys.readouterr().out.strip().splitlines()
  assert lines == [f"{out}: already encoded ({N} passages)"]


def test_failed_run_chunks_of_other_passages_do_not_block(setup, tmp_path, capsys):
  corpus = _write_corpus(tmp_path / "corpus.jsonl", setup["records"])
  out = tmp_path / "codes"
  assert _encode(setup["model_a"], corpus, out, stop_after_chunks=1) is None
  assert (out / "chunks" / "run.json").exists() and not (out / "manifest.json").exists()
  others = [dict(r, _id=f"x{i}") for i, r in enumerate(setup["records"][:7])]
  _write_corpus(corpus, others)
  capsys.readouterr()
  m = _encode(setup["model_a"], corpus, out)
  assert m["num_passages"] == 7
  assert list(np.load(out / "ids.npy")) == [f"x{i}" for i in range(7)]
  err = capsys.readouterr().err
  assert "discarding the chunks of an unfinished earlier run" in err and "passages" in err
  assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("name,text,where,fault", [
    ("empty.tsv", "", ":1:", "empty file"),
    ("header.tsv", "id\ttext\ttitle\n", ":1:", "only a header"),
    ("empty.jsonl", "\n", ":1:", "no passages"),
    ("dups.tsv", "1\ta\tt\n2\tb\tt\n\n3\tc\tt\n2\td\tt\n", ":5:",
     "duplicate passage id '2' (first on line 2)"),
])
def test_bad_collections_are_refused_before_writing(setup, tmp_path, name, text, where, fault):
  corpus = tmp_path / name
  corpus.write_text(text, encoding="utf-8")
  out = tmp_path / "out"
  with pytest.raises(DataError) as info:
    _encode(setup["model_a"], corpus, out)
  message = str(info.value)
  assert f"{corpus}{where}" in message and fault in message and "\n" not in message
  assert not out.exists()


def test_encode_command_one_line_errors(setup, tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  cmd = [sys.executable, "-m", "bpr_jax.encode", f"--output={tmp_path / 'out'}"]
  res = subprocess.run(cmd + [f"--model={setup['model_a']}", f"--passages={tmp_path / 'missing.tsv'}"],
                       capture_output=True, text=True, env=env, check=False)
  assert res.returncode == 2, res.stderr[-2000:]
  assert res.stderr.strip().splitlines() == [f"error: passage file not found: {tmp_path / 'missing.tsv'}"]
  assert "Traceback" not in res.stderr
  # The collection is checked before the model is loaded (the model folder is not an export).
  dups = tmp_path / "dups.tsv"
  dups.write_text("7\ta\tt\n7\tb\tt\n", encoding="utf-8")
  res = subprocess.run(cmd + [f"--model={tmp_path}", f"--passages={dups}"],
                       capture_output=True, text=True, env=env, check=False)
  assert res.returncode == 2, res.stderr[-2000:]
  assert res.stderr.strip().splitlines() == [
      f"error: {dups}:2: duplicate passage id '7' (first on line 1)"]
  assert not (tmp_path / "out").exists()
