"""Tests for the TFDS builders in bpr_jax.data.tfds (array_record, no TensorFlow)."""
import gzip
import pathlib
import pickle
import shutil

import pytest
import tensorflow_datasets as tfds

from bpr_jax.data.dpr import DprJsonSource
from bpr_jax.data.examples import DataError, ExampleSource
from bpr_jax.data.passages import iter_passages
from bpr_jax.data.tfds import TfdsSource

FIXTURES = pathlib.Path(__file__).parent / "fixtures"


def _manual(tmp_path, files):
  manual = tmp_path / "manual"
  manual.mkdir()
  for fixture, name in files.items():
    data = (FIXTURES / fixture).read_bytes()
    (manual / name).write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
  return tfds.download.DownloadConfig(manual_dir=str(manual))


def _build(name, tmp_path, config):
  builder = tfds.builder(name, data_dir=str(tmp_path / "data"))
  assert builder.info.file_format.value == "array_record"
  builder.download_and_prepare(download_config=config)
  return builder


def test_dpr_retriever_nq(tmp_path):
  config = _manual(tmp_path, {"dpr_small.json": "biencoder-nq-train.json",
                              "dpr_invalid.json": "biencoder-nq-dev.json"})
  builder = _build("dpr_retriever/nq", tmp_path, config)
  assert builder.info.splits["train"].num_examples == 4 and builder.info.splits["dev"].num_examples == 2
  assert list(builder.data_dir_root.iterdir())  # written under the tmp data dir
  train = TfdsSource("dpr_retriever/nq", "train", data_dir=tmp_path / "data")
  assert isinstance(train, ExampleSource) and train.name == "tfds:dpr_retriever/nq/train"
  assert list(train) == list(DprJsonSource(FIXTURES / "dpr_small.json"))  # same order and content
  dev = TfdsSource("dpr_retriever/nq", "dev", data_dir=tmp_path / "data")
  assert [e.question for e in dev] == ["who wrote the song blue moon", "what color is the sky"]
  raw = tfds.data_source("dpr_retriever/nq", split="dev", data_dir=str(tmp_path / "data"))
  assert [raw[i]["index"] for i in range(2)] == [0, 4]  # record numbers in the JSON file
  assert pickle.loads(pickle.dumps(train))[3] == train[3]
  from_source = TfdsSource(builder.as_data_source()["train"], "train")
  assert from_source[-1] == train[3]


def test_dpr_retriever_tqa_from_gzip(tmp_path):
  config = _manual(tmp_path, {"dpr_small.json": "biencoder-trivia-train.json.gz"})
  (pathlib.Path(config.manual_dir) / "biencoder-trivia-dev.json").write_bytes(
      (FIXTURES / "dpr_small.json").read_bytes())
  _build("dpr_retriever/tqa", tmp_path, config)
  src = TfdsSource("dpr_retriever/tqa", "train", data_dir=tmp_path / "data")
  assert len(src) == 4 and src[0].hard_negatives[1].id == "1004"


def test_dpr_retriever_malformed_fails(tmp_path):
  config = _manual(tmp_path, {"dpr_small.json": "biencoder-nq-train.json"})
  (pathlib.Path(config.manual_dir) / "biencoder-nq-dev.json").write_text('[{"question": "a", ')
  with pytest.raises(DataError, match=r"biencoder-nq-dev\.json:record 0: malformed JSON"):
    _build("dpr_retriever/nq", tmp_path, config)


def test_dpr_qas(tmp_path):
  config = _manual(tmp_path, {"nq_qas_small.csv": "nq-test.qa.csv"})
  builder = _build("dpr_qas/nq", tmp_path, config)
  assert set(builder.info.splits) == {"test"}  # offline: only the splits present
  source = tfds.data_source("dpr_qas/nq", split="test", data_dir=str(tmp_path / "data"))
  rows = [source[i] for i in range(len(source))]
  assert len(rows) == 5 and rows[0]["question"] == b"who wrote the song blue moon"
  assert [a.decode() for a in rows[0]["answers"]] == ["Richard Rodgers", "Lorenz Hart"]
  assert [r["line"] for r in rows] == [1, 2, 3, 4, 5]


def test_dpr_qas_tqa_gzip(tmp_path):
  config = _manual(tmp_path, {"nq_qas_small.csv": "trivia-dev.qa.csv.gz"})
  _build("dpr_qas/tqa", tmp_path, config)
  source = tfds.data_source("dpr_qas/tqa", split="dev", data_dir=str(tmp_path / "data"))
  assert len(source) == 5 and source[4]["answers"] == [b"Leonardo da Vinci"]


def test_dpr_wiki(tmp_path):
  config = _manual(tmp_path, {"psgs_small.tsv": "psgs_w100.tsv"})
  builder = _build("dpr_wiki/psgs_w100", tmp_path, config)
  source = builder.as_data_source()["train"]
  expected = list(iter_passages(FIXTURES / "psgs_small.tsv"))
  assert len(source) == len(expected) == 12
  for i, p in enumerate(expected):
    row = source[i]
    assert row["index"] == i and row["passage_id"].decode() == p.id
    assert row["title"].decode() == p.title and row["text"].decode() == p.text


def test_encode_reads_passages_from_the_tfds_wiki_builder(tmp_path, monkeypatch):
  """`--passages=tfds:dpr_wiki/psgs_w100`: the encoding job's reader streams the built dataset."""
  from bpr_jax.data.passages import count_passages
  config = _manual(tmp_path, {"psgs_small.tsv": "psgs_w100.tsv"})
  _build("dpr_wiki/psgs_w100", tmp_path, config)
  monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "data"))
  expected = list(iter_passages(FIXTURES / "psgs_small.tsv"))
  assert count_passages("tfds:dpr_wiki/psgs_w100") == len(expected)
  assert list(iter_passages("tfds:dpr_wiki/psgs_w100")) == expected
  assert list(iter_passages("tfds:dpr_wiki/psgs_w100", start=2)) == expected[2:]
  with pytest.raises(DataError, match="tfds:no_such_dataset"):
    count_passages("tfds:no_such_dataset")


def test_dpr_wiki_bad_line(tmp_path):
  config = _manual(tmp_path, {"psgs_small.tsv": "psgs_w100.tsv.gz"})
  path = pathlib.Path(config.manual_dir) / "psgs_w100.tsv.gz"
  path.write_bytes(gzip.compress(b"id\ttext\ttitle\n1\tok\tT\n2\tmissing title\n"))
  with pytest.raises(DataError, match=r"psgs_w100\.tsv\.gz:3: expected 3 tab-separated"):
    _build("dpr_wiki/psgs_w100", tmp_path, config)
  shutil.rmtree(tmp_path / "data", ignore_errors=True)
