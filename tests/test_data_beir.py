"""Tests for bpr_jax.data.beir on SciFact and on small broken copies."""
import json
import shutil

import pytest

from bpr_jax.data.beir import BeirSource, load_corpus, load_qrels, load_queries
from bpr_jax.data.dpr import write_dpr_json
from bpr_jax.data.examples import DataError, ExampleSource


def test_scifact_loads(scifact_dir):
  corpus = load_corpus(scifact_dir)
  queries = load_queries(scifact_dir)
  assert len(corpus) == 5183 and len(queries) == 1109
  doc = corpus["4983"]
  assert doc.title.startswith("Microstructural development") and doc.text.startswith("Alterations")
  train = load_qrels(scifact_dir, "train")
  test = load_qrels(scifact_dir, "test")
  assert sum(len(d) for d in train.values()) == 919 and len(test) == 300
  assert train["0"] == {"31715818": 1}


def test_scifact_source(scifact_dir):
  src = BeirSource(scifact_dir, "train")
  assert isinstance(src, ExampleSource)
  assert len(src) == 809 and src.name == "beir:scifact/train"
  ex = src[0]
  assert ex.qid == "0" and ex.question == "0-dimensional biomaterials lack inductive properties."
  assert [p.id for p in ex.positives] == ["31715818"] and ex.hard_negatives == () and ex.answers == ()
  assert sum(len(src[i].positives) for i in range(len(src))) == 919


def _small_beir(tmp_path, scifact_dir):
  d = tmp_path / "beir"
  (d / "qrels").mkdir(parents=True)
  shutil.copy(scifact_dir / "corpus.jsonl", d / "corpus.jsonl")
  shutil.copy(scifact_dir / "queries.jsonl", d / "queries.jsonl")
  lines = (scifact_dir / "qrels" / "train.tsv").read_text().splitlines()[:11]
  (d / "qrels" / "train.tsv").write_text("\n".join(lines) + "\n")
  return d


def test_hard_negatives_json(tmp_path, scifact_dir):
  d = _small_beir(tmp_path, scifact_dir)
  src = BeirSource(d, "train")
  ex = src[1]
  corpus = load_corpus(d)
  other = [p for pid, p in list(corpus.items())[:3] if pid not in {q.id for q in ex.positives}]
  ctx = lambda p: {"title": p.title, "text": p.text, "passage_id": p.id}  # noqa: E731
  mined = tmp_path / "mined.json"
  write_dpr_json(mined, [
      {"qid": ex.qid, "question": ex.question, "answers": [], "positive_ctxs": [ctx(ex.positives[0])],
       "negative_ctxs": [], "hard_negative_ctxs": [ctx(p) for p in other] + [ctx(ex.positives[0])]},
      {"question": src[2].question, "answers": [], "positive_ctxs": [ctx(src[2].positives[0])],
       "negative_ctxs": [], "hard_negative_ctxs": [ctx(other[0])]},
  ])
  with_hard = BeirSource(d, "train", hard_negatives_json=mined)
  assert [p.id for p in with_hard[1].hard_negatives] == [p.id for p in other]  # positive dropped
  assert [p.id for p in with_hard[2].hard_negatives] == [other[0].id]  # matched by question text
  assert with_hard[0].hard_negatives == ()


def test_unknown_ids_and_duplicates(tmp_path, scifact_dir):
  d = _small_beir(tmp_path, scifact_dir)
  qrels = d / "qrels" / "train.tsv"
  qrels.write_text(qrels.read_text() + "0\tnot-a-doc\t1\n")
  with pytest.raises(DataError) as err:
    load_qrels(d, "train")
  assert str(err.value) == f"{qrels}:12: corpus id 'not-a-doc' not in corpus.jsonl"
  stats = {}
  assert len(load_qrels(d, "train", skip_missing=True, stats=stats)) == 10 and stats == {"num_skipped": 1}
  src = BeirSource(d, "train", skip_missing=True)
  assert len(src) == 10 and src.num_skipped == 1
  qrels.write_text("query-id\tcorpus-id\tscore\nnope\t4983\t1\n")
  with pytest.raises(DataError, match=r"train\.tsv:2: query id 'nope' not in queries\.jsonl"):
    load_qrels(d, "train")
  corpus = d / "corpus.jsonl"
  with corpus.open("a") as f:
    f.write(json.dumps({"_id": "4983", "title": "", "text": "dup"}) + "\n")
  with pytest.raises(DataError, match=r"corpus\.jsonl:5184: duplicate document id '4983' \(first on line 1\)"):
    load_corpus(d)
  with pytest.raises(DataError, match=r"qrels/test\.tsv:0: file not found"):
    load_qrels(d, "test")
