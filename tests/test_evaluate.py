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
from bpr_jax.export_format import save_exported
from bpr_jax.exported_model import load_exported
from bpr_jax.codes import pack_codes
from bpr_jax.index import BinaryIndex, build_from_codes_dir, build_index, save_index
from bpr_jax.models.bert import BertConfig, BertEncoder
from bpr_jax.search import two_stage_search
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


class VectorModel:
  """A stand-in exported model: fixed question vectors (by text), well separated."""

  def __init__(self, vectors: dict[str, np.ndarray]):
    self.vectors = vectors

  def encode_questions(self, texts, batch_size=64):
    del batch_size
    return np.stack([self.vectors[t] for t in texts]).astype(np.float32)


def _gaussian(n, d, seed):
  return np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)


@pytest.fixture(scope="module")
def separated(setup, tmp_path_factory):
  """The mini BEIR corpus with Gaussian passage and question vectors (64 bits).

  Gaussian vectors keep every pair of rerank scores far apart compared with float
  rounding, so the byte-table rerank, the unpacked matmul and faiss agree on every
  machine (a random 1-layer BERT gives near-identical vectors: ties to the last bit).
  """
  root, _, index = setup
  d = 64
  ids = [str(i) for i in index.ids.tolist()]
  questions = ev.load_beir(root / "beir", "test", ids)
  emb = _gaussian(len(ids), d, 1)
  q = _gaussian(len(questions.texts), d, 2)
  out = tmp_path_factory.mktemp("separated")
  save_index(out / "index", build_index(pack_codes(emb), "flat"), pack_codes(emb), ids)
  model = VectorModel(dict(zip(questions.texts, q)))
  return BinaryIndex.load(out / "index"), model, questions, emb, q


def assert_same_ranking_up_to_ties(got_rows, want_scores, score_of, atol=1e-4):
  """got_rows has, rank by rank, the brute-force scores: the same ranking up to order among
  scores equal within atol (float rounding differs between code paths and CPUs)."""
  got = np.array([[score_of(i, r) for r in rr] for i, rr in enumerate(got_rows)])
  np.testing.assert_allclose(got, want_scores, rtol=0, atol=atol)


def test_beir_rows_match_brute_force(separated):
  index, model, questions, emb, q = separated
  n = index.ntotal
  rows = ev.run_evaluation(model, index, questions, ks=[1, 5, 20], l=n, baselines=ev.BASELINES,
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
  assert by["bpr-flat"]["bytes_per_passage"] == 8 and by["flat_ip"]["bytes_per_passage"] == 256
  assert by["lsh"]["bytes_per_passage"] == 8 and by["pq"]["bytes_per_passage"] == 8
  # Exact IP by hand, scored through pytrec_eval with the scores (ties as trec_eval breaks them).
  ip = q @ emb.T
  top = np.argsort(-ip, axis=1, kind="stable")[:, :20]
  results = {qid: {str(index.ids[r]): float(ip[i, r]) for r in rr}
             for i, (qid, rr) in enumerate(zip(questions.qids, top))}
  want = metrics.beir_evaluate(questions.qrels, results, [10, 20])
  assert by["flat_ip"]["ndcg@10"] == pytest.approx(want["ndcg@10"], abs=1e-9)
  assert by["flat_ip"]["recall@20"] == pytest.approx(want["recall@20"], abs=1e-9)
  # BPR rerank by hand: <e_q, sign(e_p)> with an unpacked matmul.
  signs = np.where(emb >= 0, 1.0, -1.0).astype(np.float32)
  rr_scores = q @ signs.T
  bpr_scores, bpr_rows = two_stage_search(q, index, k=20, l=n)
  want = -np.sort(-rr_scores, axis=1)[:, :20]
  assert_same_ranking_up_to_ties(bpr_rows, want, lambda i, r: rr_scores[i, r])
  np.testing.assert_allclose(bpr_scores, want, rtol=0, atol=1e-4)
  # The bpr rows' metrics from that numpy brute force (no ties among Gaussian float scores),
  # computed by hand (not through pytrec_eval / the evaluation's scorer).
  assert (np.diff(-np.sort(-rr_scores, axis=1)[:, :21], axis=1) < -1e-4).all()  # top 21 apart
  top_bpr = np.argsort(-rr_scores, axis=1, kind="stable")[:, :20]
  by_hand = _beir_metrics_by_hand(questions, [[str(index.ids[r]) for r in rr] for rr in top_bpr])
  for name in ("bpr-flat", "bpr-flat-no-candidates"):
    for key, value in by_hand.items():
      assert by[name][key] == pytest.approx(value, abs=1e-9), (name, key)
  # no-rerank: the Hamming order, where ties are many; its rows must be a Hamming top 20 by numpy
  # (<sign q, sign p> = bits - 2 Hamming), and its metrics those of that list, by hand.
  ham_scores = np.where(q >= 0, 1.0, -1.0) @ signs.T
  nr_scores, nr_rows = two_stage_search(q, index, k=20, l=n, rerank=False)
  np.testing.assert_array_equal(nr_scores, np.take_along_axis(ham_scores, nr_rows, 1))
  np.testing.assert_array_equal(nr_scores, -np.sort(-ham_scores, axis=1)[:, :20])
  nr_hand = _beir_metrics_by_hand(questions, [[str(index.ids[r]) for r in rr] for rr in nr_rows],
                                  scores=nr_scores)
  for key, value in nr_hand.items():
    assert by["bpr-flat-no-rerank"][key] == pytest.approx(value, abs=1e-9), key
  assert by_hand["ndcg@10"] != pytest.approx(nr_hand["ndcg@10"])  # the rerank changes the metrics


def _beir_metrics_by_hand(questions, ranked_ids, scores=None):
  """recall@1/5/20, ndcg@10 and mrr@10 of ranked passage ids per question, as trec_eval computes them
  (binary grades here; with `scores`, equal scores order by document id, descending)."""
  import math
  out = {"recall@1": [], "recall@5": [], "recall@20": [], "ndcg@10": [], "mrr@10": []}
  for i, qid in enumerate(questions.qids):
    ids = list(ranked_ids[i])
    if scores is not None:
      ids = [d for _, d in sorted(zip(scores[i].tolist(), ids), key=lambda t: (-t[0], _neg_str(t[1])))]
    rel = {d for d, g in questions.qrels[qid].items() if g > 0}
    for k in (1, 5, 20):
      out[f"recall@{k}"].append(len(rel & set(ids[:k])) / len(rel))
    dcg = sum(1 / math.log2(r + 2) for r, d in enumerate(ids[:10]) if d in rel)
    idcg = sum(1 / math.log2(r + 2) for r in range(min(len(rel), 10)))
    out["ndcg@10"].append(dcg / idcg)
    first = next((r for r, d in enumerate(ids[:10]) if d in rel), None)
    out["mrr@10"].append(0.0 if first is None else 1 / (first + 1))
  return {key: float(np.mean(v)) for key, v in out.items()}


def _neg_str(s):
  """Sort key that orders strings descending inside an ascending sort."""
  return [-ord(c) for c in s] + [0]


def test_scorer_breaks_ties_as_trec_eval():
  """Two passages with the same score: the metrics do not depend on the system's order."""
  questions = ev.Questions(texts=["q"], qids=["q1"], qrels={"q1": {"b": 1}})
  scorer = ev.Scorer(questions, [1])
  ids = np.array(["a", "b"])
  one = scorer(np.array([[5.0, 5.0]]), np.array([[0, 1]]), ids)
  other = scorer(np.array([[5.0, 5.0]]), np.array([[1, 0]]), ids)
  assert one == other
  assert one["mrr@10"] == 1.0  # trec_eval: equal scores by document id, descending ("b" first)


def test_time_system_times_only_warmed_shapes(monkeypatch):
  """Every timed search call has the shapes of an untimed call made before it (no compiles timed)."""
  log = []
  monkeypatch.setattr(ev.time, "perf_counter", lambda: log.append("clock") or 0.0)

  def search(q, k):
    log.append((q.shape, k))
    return np.zeros((len(q), k), np.float32), np.zeros((len(q), k), np.int64)

  system = ev.System("s", search, 1.0, 1, np.array(["a"]))
  ev.time_system(system, np.zeros((300, 8), np.float32), 10, 5)
  seen, timing = set(), False
  for item in log:
    if item == "clock":
      timing = not timing
    elif timing:
      assert item in seen, (item, log)
    else:
      seen.add(item)


QA_N = 600


@pytest.fixture(scope="module")
def qa_corpus(tmp_path_factory):
  """600 passages with ids 100..699, each with a unique answer word, and Gaussian 64-bit vectors."""
  root = tmp_path_factory.mktemp("qa")
  words = ("alpha beta gamma delta epsilon zeta theta kappa lambda sigma").split()
  ids = [str(100 + i) for i in range(QA_N)]
  rng = np.random.default_rng(3)
  lines = ["id\ttext\ttitle\n"]
  for i, pid in enumerate(ids):
    filler = " ".join(rng.choice(words, size=12))
    lines.append(f"{pid}\t{filler} answerword{i} {filler}\tTitle {i}\n")
  (root / "psgs.tsv").write_text("".join(lines))
  emb = _gaussian(QA_N, 64, 4)
  targets = list(range(0, QA_N, 37))
  texts = [f"where is answerword{t}?" for t in targets]
  model = VectorModel({t: emb[j] + 0.01 * _gaussian(1, 64, 5 + j)[0] for t, j in zip(texts, targets)})
  questions = ev.Questions(texts=texts, answers=[[f"answerword{t}"] for t in targets])
  return root, ids, emb, model, questions


@pytest.mark.parametrize("kind", ["flat", "hash", "multihash", "ivf"])
def test_qa_evaluation_reads_passages_by_id_on_every_index_kind(qa_corpus, tmp_path, kind):
  """The top-1 passage of each question holds its answer; an ivf index renumbers its rows."""
  root, ids, emb, model, questions = qa_corpus
  codes = pack_codes(emb)
  kwargs = {"nlist": 12, "nprobe": 12} if kind == "ivf" else {}
  save_index(tmp_path / "index", build_index(codes, kind, **kwargs), codes, ids)
  index = BinaryIndex.load(tmp_path / "index")
  if kind == "ivf":
    assert index.ids.tolist() != sorted(index.ids.tolist())  # rows renumbered: row != file row
  rows = ev.run_evaluation(model, index, questions, ks=[1, 5], l=100, passages=root / "psgs.tsv",
                           baselines=["flat_ip"], embeddings=emb, embedding_ids=np.array(ids),
                           num_single=1, log=None)
  by = {r["name"]: r for r in rows}
  assert by[f"bpr-{kind}"]["recall@1"] == 1.0
  assert by[f"bpr-{kind}-no-candidates"]["recall@1"] == 1.0
  assert by["flat_ip"]["recall@1"] == 1.0


def test_float_baselines_on_ivf_need_embedding_ids(qa_corpus, tmp_path):
  root, ids, emb, model, questions = qa_corpus
  codes = pack_codes(emb)
  save_index(tmp_path / "index", build_index(codes, "ivf", nlist=12), codes, ids)
  index = BinaryIndex.load(tmp_path / "index")
  with pytest.raises(ValueError, match="embedding_ids"):
    ev.run_evaluation(model, index, questions, ks=[1], passages=root / "psgs.tsv",
                      baselines=["flat_ip"], embeddings=emb, log=None)


def test_qa_mode_and_errors(setup, tmp_path):
  root, model, index = setup
  qa = tmp_path / "qa.csv"
  qa.write_text("what is a cell?\t['cell', 'cells']\nwhat is dna?\t[\"DNA\"]\n")
  questions = ev.load_qa(qa)
  assert questions.answers == [["cell", "cells"], ["DNA"]]
  rows = ev.run_evaluation(model, index, questions, ks=[1, 300], l=300,
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


def test_sized_baselines_at_other_code_sizes(separated):
  """baseline_bits adds lsh / pq at other code sizes, named by size, with those bytes."""
  index, model, questions, emb, _ = separated
  rows = ev.run_evaluation(model, index, questions, ks=[1, 5], l=index.ntotal, baselines=["flat_ip", "lsh", "pq"],
                           embeddings=emb, baseline_bits=[16, 64, 32], num_single=0, log=None)
  by = {r["name"]: r for r in rows}
  assert [r["name"] for r in rows][3:] == ["flat_ip", "lsh", "pq", "lsh-16bit", "pq-16bit",
                                           "lsh-32bit", "pq-32bit"]  # 64 is the index's size
  assert by["lsh-16bit"]["bytes_per_passage"] == 2 and by["lsh-32bit"]["bytes_per_passage"] == 4
  assert by["pq-16bit"]["bytes_per_passage"] == 2 and by["pq-32bit"]["bytes_per_passage"] == 4
  assert by["lsh"]["bytes_per_passage"] == 8
  with pytest.raises(ValueError, match="multiples of 8"):
    ev.run_evaluation(model, index, questions, ks=[1], baselines=["lsh"], embeddings=emb,
                      baseline_bits=[12], log=None)


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
  rows = json.loads(out.read_text())["rows"]
  assert [r["name"] for r in rows] == ["bpr-flat", "bpr-flat-no-rerank", "bpr-flat-no-candidates",
                                       "flat_ip", "lsh"]
  assert "| name | recall@1 | recall@10 | ndcg@10 | mrr@10 |" in res.stdout


def test_questions_are_normalised_as_dpr(setup, minilm_dir):
  """A trailing "?" is dropped (DPR/BPR) wherever questions are tokenised: training batches,
  question encoding for evaluation and for the service all go through Tokenizer.questions."""
  from bpr_jax.data.examples import Example, Passage
  from bpr_jax.data.pipeline import eval_batches
  from bpr_jax.tokenization import normalize_question
  assert normalize_question("what is dna?") == "what is dna"
  assert normalize_question("what is dna") == "what is dna"
  assert normalize_question("?") == "?"
  tok = Tokenizer.from_dir(minilm_dir)
  a, b = tok.questions(["what is dna?"], 16), tok.questions(["what is dna"], 16)
  for key in a:
    np.testing.assert_array_equal(a[key], b[key])
  _, model, _ = setup
  np.testing.assert_array_equal(model.encode_questions(["what is dna?"]),
                                model.encode_questions(["what is dna"]))
  p = Passage(id="1", title="t", text="x")
  ex = [Example(question=q, answers=(), positives=(p,), negatives=(), hard_negatives=(p,))
        for q in ("what is dna?", "what is dna")]
  batch = next(iter(eval_batches(ex, tok, batch_size=2, question_max_length=16, passage_max_length=16)))
  np.testing.assert_array_equal(batch["q_input_ids"][0], batch["q_input_ids"][1])
