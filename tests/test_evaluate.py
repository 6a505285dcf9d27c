"""Tests for bpr_jax.evaluate on a mini SciFact with a tiny random BERT."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from flax import nnx

from bpr_jax import encode as enc
from bpr_jax import evaluate as ev
from bpr_jax import metrics
from bpr_jax.data.examples import DataError
from bpr_jax.export import load_exported, save_exported
from bpr_jax.index import BinaryIndex, build_from_codes_dir
from bpr_jax.models.bert import BertConfig, BertEncoder
from bpr_jax.tokenization import Tokenizer

N_QUERIES = 12
N_DOCS = 300


def _tiny_model(out_dir, tokenizer_dir, hidden=32):
  config = BertConfig(vocab_size=30522, hidden_size=hidden, num_hidden_layers=1,
                      num_attention_heads=2, intermediate_size=64, max_position_embeddings=64)
  settings = {"mode": "bpr", "pooling": "cls", "question_max_length": 16, "passage_max_length": 32,
              "code_bits": hidden, "hidden_size": hidden, "shared_encoder": False}
  save_exported(BertEncoder(config, rngs=nnx.Rngs(0)), BertEncoder(config, rngs=nnx.Rngs(1)),
                Tokenizer.from_dir(tokenizer_dir), settings, out_dir)
  return out_dir


@pytest.fixture(scope="module")
def setup(tmp_path_factory, minilm_dir, scifact_dir):
  """Mini BEIR dir (first queries' relevant docs + filler), encoded and indexed."""
  root = tmp_path_factory.mktemp("eval")
  qrels_lines = (scifact_dir / "qrels" / "test.tsv").read_text().splitlines()[1:]
  qids, keep = [], set()
  for line in qrels_lines:
    q, d, _ = line.split("\t")
    if q not in qids:
      if len(qids) == N_QUERIES:
        break
      qids.append(q)
    keep.add(d)
  beir = root / "beir"
  (beir / "qrels").mkdir(parents=True)
  corpus = []
  with open(scifact_dir / "corpus.jsonl", encoding="utf-8") as f:
    for line in f:
      doc_id = json.loads(line)["_id"]
      if doc_id in keep or len(corpus) < N_DOCS - len(keep):
        corpus.append(line)
  (beir / "corpus.jsonl").write_text("".join(corpus))
  (beir / "queries.jsonl").write_text("".join(
      line + "\n" for line in (scifact_dir / "queries.jsonl").read_text().splitlines()
      if json.loads(line)["_id"] in qids))
  (beir / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(
      line + "\n" for line in qrels_lines if line.split("\t")[0] in qids))
  model_dir = _tiny_model(root / "model", minilm_dir)
  model = load_exported(model_dir)
  enc.encode_corpus(model, beir / "corpus.jsonl", root / "codes", batch_size=64, chunk_size=1000,
                    save_float=True, progress=False)
  build_from_codes_dir(root / "codes", root / "index", "flat")
  return root, model, BinaryIndex.load(root / "index")


def test_beir_rows_match_brute_force(setup):
  root, model, index = setup
  questions = ev.load_beir(root / "beir", "test", [str(i) for i in index.ids.tolist()])
  assert len(questions.texts) == N_QUERIES
  emb = np.load(root / "codes" / "embeddings.npy")
  rows = ev.run_evaluation(model, index, questions, ks=[1, 5, 20], l=N_DOCS, baselines=ev.BASELINES,
                           embeddings=emb, num_single=2, log=None)
  names = [r["name"] for r in rows]
  assert names == ["bpr-flat", "bpr-flat-no-rerank", "bpr-flat-no-candidates", "flat_ip", "hnsw",
                   "lsh", "pq"]
  by = {r["name"]: r for r in rows}
  for r in rows:
    assert {"recall@1", "recall@5", "recall@20", "ndcg@10", "mrr@10", "bytes_per_passage",
            "index_bytes", "ms_per_query", "ms_per_query_single"} <= set(r)
    assert 0 <= r["recall@1"] <= r["recall@5"] <= r["recall@20"] <= 1
  # l = N: two-stage equals reranking everything.
  for key in ("recall@20", "ndcg@10", "mrr@10"):
    assert by["bpr-flat"][key] == pytest.approx(by["bpr-flat-no-candidates"][key])
  assert by["bpr-flat"]["bytes_per_passage"] == 4 and by["flat_ip"]["bytes_per_passage"] == 128
  assert by["lsh"]["bytes_per_passage"] == 4 and by["pq"]["bytes_per_passage"] == 4
  # Exact IP by hand.
  q = model.encode_questions(questions.texts)
  top = np.argsort(-(q @ emb.T), axis=1, kind="stable")[:, :20]
  run = {qid: [str(index.ids[r]) for r in rr] for qid, rr in zip(questions.qids, top)}
  assert by["flat_ip"]["ndcg@10"] == pytest.approx(metrics.ndcg_at_k(questions.qrels, run, 10))
  assert by["flat_ip"]["recall@20"] == pytest.approx(metrics.recall_at_k(questions.qrels, run, 20))


def test_qa_mode_and_errors(setup, tmp_path):
  root, model, index = setup
  qa = tmp_path / "qa.csv"
  qa.write_text("what is a cell?\t['cell', 'cells']\nwhat is dna?\t[\"DNA\"]\n")
  questions = ev.load_qa(qa)
  assert questions.answers == [["cell", "cells"], ["DNA"]]
  rows = ev.run_evaluation(model, index, questions, ks=[1, 300], l=50,
                           passages=root / "beir" / "corpus.jsonl", num_single=1, log=None)
  assert [r["name"] for r in rows] == ["bpr-flat", "bpr-flat-no-rerank", "bpr-flat-no-candidates"]
  assert rows[2]["recall@300"] == 1.0  # all passages retrieved; both answers occur somewhere
  assert "ndcg@10" not in rows[0]
  bad = tmp_path / "bad.csv"
  bad.write_text("ok?\t['a']\n  \t['b']\n")
  with pytest.raises(DataError, match="empty question"):
    ev.load_qa(bad)
  with pytest.raises(ValueError, match="needs --passages"):
    ev.run_evaluation(model, index, questions, ks=[1], log=None)
  with pytest.raises(ValueError, match="need passage embeddings"):
    ev.run_evaluation(model, index, ev.load_beir(root / "beir", "test", index.ids.astype(str)),
                      ks=[1], baselines=["pq"], log=None)


def test_markdown_table():
  md = ev.markdown_table([{"name": "a", "recall@1": 0.5}, {"name": "b", "ms": 2.0, "recall@1": 1.0}])
  assert md.splitlines() == ["| name | recall@1 | ms |", "|---|---|---|",
                             "| a | 0.5000 |  |", "| b | 1.0000 | 2.0000 |"]


def test_evaluate_command(setup, tmp_path):
  root, _, _ = setup
  out = tmp_path / "r.json"
  res = subprocess.run(
      [sys.executable, "-m", "bpr_jax.evaluate", f"--model={root / 'model'}",
       f"--index={root / 'index'}", f"--beir_dir={root / 'beir'}", "--split=test", "--k=1,10",
       f"--output={out}", "--baselines=flat_ip,lsh", "--num_single=1"],
      capture_output=True, text=True, env=dict(os.environ, JAX_PLATFORMS="cpu"), check=False)
  assert res.returncode == 0, res.stderr[-2000:]
  rows = json.loads(out.read_text())
  assert [r["name"] for r in rows] == ["bpr-flat", "bpr-flat-no-rerank", "bpr-flat-no-candidates",
                                       "flat_ip", "lsh"]
  assert "| name | recall@1 | recall@10 | ndcg@10 | mrr@10 |" in res.stdout
