"""Nested codes end to end: a tiny run trained with loss.nested_bits=32,64 (hidden 64) exported,
encoded, indexed, searched, evaluated and served at 32 and at 64 bits."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from fastapi.testclient import TestClient

from bpr_jax import encode as enc
from bpr_jax import export_format, train
from bpr_jax.export import export_run
from bpr_jax.exported_model import load_exported
from bpr_jax.index import BinaryIndex
from bpr_jax.index.binary_index import build_from_codes_dir
from bpr_jax.passage_store import PassageStore
from bpr_jax.search import Retriever
from bpr_jax.serve import PaddedQuestions, create_app, question_batch_sizes, warmup
from test_train import shrunk_config

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
PASSAGES = os.path.join(FIXTURES, "psgs_small.tsv")
QAS = os.path.join(FIXTURES, "nq_qas_small.csv")
QUESTIONS = ["who wrote the song blue moon", "where is the eiffel tower", "aaron moses brother"]
ENV = dict(os.environ, JAX_PLATFORMS="cpu")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """A 2-step nested run exported, and its passages encoded at 32 and 64 bits with indexes."""
  root = tmp_path_factory.mktemp("nested")
  config = shrunk_config(num_train_steps=2, eval_every=0, checkpoint_every=2,
                         **{"loss.nested_bits": "32,64"})
  train.train_and_evaluate(config, str(root / "w"))
  export_run(root / "w", root / "e")
  model = load_exported(root / "e")
  out = {"root": root, "model": model}
  for bits in (32, 64):
    enc.encode_corpus(model, PASSAGES, root / f"c{bits}", model_path=root / "e", batch_size=8,
                      code_bits=bits, save_float=True, progress=False)
    build_from_codes_dir(root / f"c{bits}", root / f"i{bits}", "flat")
  return out


def test_bpr_json_records_the_nested_sizes(run):
  settings = json.loads((run["root"] / "e" / "bpr.json").read_text())
  assert settings["nested_bits"] == [32, 64] and settings["code_bits"] == 64
  assert export_format.code_sizes(settings) == [32, 64]


def test_codes_at_32_bits_are_the_first_bytes_of_the_64_bit_codes(run):
  c32 = np.load(run["root"] / "c32" / "codes.npy")
  c64 = np.load(run["root"] / "c64" / "codes.npy")
  assert c32.shape == (12, 4) and c64.shape == (12, 8)
  np.testing.assert_array_equal(c32, c64[:, :4])
  m32 = json.loads((run["root"] / "c32" / "manifest.json").read_text())
  assert m32["code_bits"] == 32 and m32["inputs"]["settings"]["code_bits"] == 32
  assert np.load(run["root"] / "c32" / "embeddings.npy").shape == (12, 64)  # whole vectors
  assert BinaryIndex.load(run["root"] / "i32").code_bits == 32


def _brute_force(q, emb, bits, k, l):
  """Hamming top-l over the first `bits` bits, reranked by <e_q[:bits], sign(e_p[:bits])>."""
  qs = np.where(q[:, :bits] >= 0, 1.0, -1.0)
  ps = np.where(emb[:, :bits] >= 0, 1.0, -1.0)
  ham = (bits - qs @ ps.T) / 2
  out = []
  for i in range(len(q)):
    cand = np.lexsort((np.arange(len(ps)), ham[i]))[:l]
    scores = ps[cand] @ q[i, :bits]
    order = np.lexsort((np.arange(len(cand)), -scores))[:k]
    out.append((cand[order], scores[order]))
  return out


@pytest.mark.parametrize("bits", [32, 64])
def test_retriever_at_each_size_equals_a_brute_force(run, bits):
  r = Retriever.load(run["root"] / "e", run["root"] / f"i{bits}", PASSAGES, l=6,
                     passage_cache_dir=run["root"] / "cache")
  assert r.prefix == (None if bits == 64 else 32)
  hits = r.search(QUESTIONS, k=4)
  q = run["model"].encode_questions(QUESTIONS)
  emb = np.load(run["root"] / f"c{bits}" / "embeddings.npy")
  assert r.encode_questions(QUESTIONS).shape == (3, bits)
  np.testing.assert_array_equal(r.encode_codes(["Aaron"], ["Aaron is a prophet"]).shape, (1, bits // 8))
  for got, (rows, scores) in zip(hits, _brute_force(q, emb, bits, 4, 6)):
    assert [h["row"] for h in got] == rows.tolist()
    np.testing.assert_allclose([h["score"] for h in got], scores, rtol=1e-5, atol=1e-4)
    assert all(h["title"] for h in got)


def test_evaluate_at_32_bits_with_float_baselines(run, tmp_path):
  out = tmp_path / "r.json"
  res = subprocess.run(
      [sys.executable, "-m", "bpr_jax.evaluate", f"--model={run['root'] / 'e'}",
       f"--index={run['root'] / 'i32'}", f"--passages={PASSAGES}", f"--qa={QAS}", "--k=1,5",
       "--l=8", "--baselines=flat_ip,lsh", "--num_single=1", f"--output={out}"],
      capture_output=True, text=True, env=dict(ENV, BPR_CACHE_DIR=str(tmp_path / "cache")),
      check=False, timeout=300)
  assert res.returncode == 0, res.stderr[-3000:]
  rows = {r["name"]: r for r in json.loads(out.read_text())["rows"]}
  assert rows["bpr-flat"]["bytes_per_passage"] == 4 and rows["lsh"]["bytes_per_passage"] == 4
  assert rows["flat_ip"]["bytes_per_passage"] == 4 * 64  # the whole float vectors
  assert {"bpr-flat-no-rerank", "bpr-flat-no-candidates"} <= set(rows)


def test_serve_answers_at_32_bits_after_a_compile_only_warmup(run):
  from test_export import _count_compiles
  r = Retriever.load(run["root"] / "e", run["root"] / "i32", l=6)
  r.model = PaddedQuestions(r.model, question_batch_sizes(4))
  with _count_compiles() as warm:
    shapes = warmup(r, max_batch=4, max_k=8)
  # 2 question shapes (rows 1, 4 x length 12), each compiled without being run, and 3 search
  # shapes (batch 1, 2, 4 x k 8)
  assert shapes == 5 and warm.count("jit(encode)") == 2 and warm.count("jit(_rerank_block)") == 3, warm
  store = PassageStore(PASSAGES, cache_dir=run["root"] / "cache")
  with _count_compiles() as serving:
    with TestClient(create_app(r, store, max_wait_ms=1, max_batch=4)) as client:
      res = client.post("/search", json={"questions": QUESTIONS[:2], "k": 3})
      one = client.post("/search", json={"questions": ["aaron"], "k": 8})
  assert res.status_code == 200 and one.status_code == 200, res.text
  assert serving == [], serving  # every request shape was compiled by the warm-up
  results = res.json()["results"]
  expected = r.search(QUESTIONS[:2], k=3)
  assert [[h["id"] for h in hits] for hits in results] == [[h["id"] for h in hits] for hits in expected]


def test_unrecorded_sizes_are_refused_in_one_line(run, tmp_path):
  res = subprocess.run(
      [sys.executable, "-m", "bpr_jax.encode", f"--model={run['root'] / 'e'}",
       f"--passages={PASSAGES}", f"--output={tmp_path / 'c48'}", "--code_bits=48"],
      capture_output=True, text=True, env=ENV, check=False, timeout=300)
  assert res.returncode == 2 and res.stderr.strip().count("\n") == 0, res.stderr[-2000:]
  assert "--code_bits=48" in res.stderr and "32, 64" in res.stderr and "Traceback" not in res.stderr
  assert not (tmp_path / "c48").exists()
  with pytest.raises(ValueError, match="records code sizes 32, 64"):
    enc.encode_corpus(run["model"], PASSAGES, tmp_path / "c16", code_bits=16, progress=False)
  # an index of 16-bit codes (not a recorded size) is refused by the Retriever
  codes16 = np.load(run["root"] / "c32" / "codes.npy")[:, :2]
  with pytest.raises(ValueError, match="holds 16-bit codes, not a size the model records"):
    Retriever(run["model"], BinaryIndex.from_arrays(codes16))


def test_an_export_without_nested_bits_loads(run, tmp_path):
  import shutil
  old = tmp_path / "old"
  shutil.copytree(run["root"] / "e", old)
  settings = json.loads((old / "bpr.json").read_text())
  del settings["nested_bits"]
  (old / "bpr.json").write_text(json.dumps(settings))
  model = load_exported(old)
  assert model.settings["nested_bits"] == [] and export_format.code_sizes(model.settings) == [64]
  with pytest.raises(ValueError, match="only its whole 64-bit code"):
    enc.encode_corpus(model, PASSAGES, tmp_path / "c32", code_bits=32, progress=False)
  for bad, match in (([32, 16], "increase"), ([12], "multiples of 8"), ([128], "more than")):
    with pytest.raises(ValueError, match=match):
      export_format.check_settings({**settings, "nested_bits": bad})


def test_one_encode_indexes_every_size(run, tmp_path):
  """index --code_bits=32 over the 64-bit encode output holds the codes encode --code_bits=32 gives,
  records the size in its inputs, and searches like the index built from the 32-bit encode."""
  meta = build_from_codes_dir(run["root"] / "c64", tmp_path / "i32", "flat", code_bits=32)
  assert meta["code_bits"] == 32 and meta["inputs"]["settings"]["code_bits"] == 32
  got, want = BinaryIndex.load(tmp_path / "i32"), BinaryIndex.load(run["root"] / "i32")
  np.testing.assert_array_equal(np.asarray(got.codes), np.asarray(want.codes))
  expected = Retriever(run["model"], want).search(QUESTIONS, k=3)
  hits = Retriever(run["model"], got).search(QUESTIONS, k=3)
  assert [[h["id"] for h in r] for r in hits] == [[h["id"] for h in r] for r in expected]
  # the whole size is the plain index (no code_bits setting); an index of another size is refused
  full = build_from_codes_dir(run["root"] / "c64", tmp_path / "i64", "flat", code_bits=64)
  assert "code_bits" not in full["inputs"]["settings"]
  from bpr_jax.provenance import ProvenanceError
  with pytest.raises(ProvenanceError, match="code_bits"):
    build_from_codes_dir(run["root"] / "c64", tmp_path / "i32", "flat")


def test_index_refuses_sizes_the_model_does_not_record_in_one_line(run, tmp_path):
  for bits, words in ((16, "records code sizes 32, 64"), (12, "multiple of 8"), (128, "no wider than the 64-bit")):
    res = subprocess.run(
        [sys.executable, "-m", "bpr_jax.index", f"--codes={run['root'] / 'c64'}", "--kind=flat",
         f"--output={tmp_path / f'i{bits}'}", f"--code_bits={bits}"],
        capture_output=True, text=True, env=ENV, check=False, timeout=300)
    assert res.returncode == 2 and res.stderr.strip().count("\n") == 0, res.stderr[-2000:]
    assert words in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / f"i{bits}").exists()
