"""Pyserini door: the folder is read back exactly as Pyserini's BinaryDenseSearcher and
BprQueryEncoder read it (faiss read_index_binary, the docid file, DPRQuestionEncoder)."""
import json
import pathlib
import subprocess
import sys

import faiss
import numpy as np
import pytest
import torch
import transformers
from flax import nnx

from bpr_jax import export_format, exported_model
from bpr_jax import pyserini
from bpr_jax.codes import pack_codes
from bpr_jax.index import BinaryIndex, build_index, save_index
from bpr_jax.models.bert import BertConfig, BertEncoder
from bpr_jax.tokenization import Tokenizer

REPO = pathlib.Path(__file__).resolve().parents[1]
WORDS = ["who", "what", "wrote", "is", "the", "a", "binary", "passage", "retriever",
         "hash", "code", "paper", "title", "text", "about", "retrieval", "fast", "search"]
QUESTIONS = ["who wrote the paper", "what is a binary code", "fast search", "hash retrieval"]
N = 48


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  """(exported model dir, loaded model, titles, texts, float passage vectors)."""
  root = tmp_path_factory.mktemp("pyserini")
  (root / "vocab").mkdir()
  (root / "vocab" / "vocab.txt").write_text(
      "\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS) + "\n")
  tokenizer = Tokenizer.from_dir(root / "vocab")
  config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=64, num_hidden_layers=2,
                      num_attention_heads=2, intermediate_size=64, max_position_embeddings=32)
  settings = {"mode": "bpr", "pooling": "cls", "question_max_length": 12, "passage_max_length": 16,
              "code_bits": 64, "hidden_size": 64, "shared_encoder": False}
  export_format.save_exported(BertEncoder(config, rngs=nnx.Rngs(0)), BertEncoder(config, rngs=nnx.Rngs(1)),
                              tokenizer, settings, root / "model")
  model = exported_model.load_exported(root / "model")
  rng = np.random.default_rng(0)
  titles = [" ".join(rng.choice(WORDS, 2)) if i % 3 else "" for i in range(N)]
  texts = [" ".join(rng.choice(WORDS, 6)) for i in range(N)]
  vectors = model.encode_passages(titles, texts)
  return root / "model", model, vectors


def _save(tmp_path, vectors, ids, kind):
  codes = pack_codes(vectors)
  extra = {"nlist": 4, "nprobe": 4} if kind == "ivf" else {}
  save_index(tmp_path / f"index-{kind}", build_index(codes, kind, **extra), codes, ids)
  return tmp_path / f"index-{kind}"


class PyseriniReader:
  """What Pyserini does with the folder (pyserini.search.faiss BinaryDenseSearcher with
  BprQueryEncoder), line for line, without Pyserini's Java dependencies."""

  def __init__(self, folder):
    self.index = faiss.read_index_binary(str(folder / "index"))  # BinaryDenseSearcher.load_index
    self.docids = [line.rstrip() for line in open(folder / "docid")]  # FaissSearcher.load_docids
    encoder_dir = str(folder / "query_encoder")
    self.model = transformers.DPRQuestionEncoder.from_pretrained(encoder_dir).eval()
    self.tokenizer = transformers.DPRQuestionEncoderTokenizer.from_pretrained(
        encoder_dir, clean_up_tokenization_spaces=True)

  def encode(self, query):  # BprQueryEncoder.encode
    input_ids = self.tokenizer(query, return_tensors="pt")
    with torch.no_grad():
      embeddings = self.model(input_ids["input_ids"]).pooler_output.detach().cpu()
    sparse = embeddings.new_ones(embeddings.size()).masked_fill_(embeddings < 0, -1.0)
    return {"dense": embeddings.numpy().flatten(), "sparse": sparse.numpy().flatten()}

  def search(self, query, k, binary_k, rerank):  # BinaryDenseSearcher.search / binary_dense_search
    ret = self.encode(query)
    dense, sparse = ret["dense"][None], ret["sparse"][None]
    assert dense.shape[1] == self.index.d
    q_code = np.packbits(np.where(sparse > 0, 1, 0)).reshape(1, -1)
    if not rerank:
      distances, indexes = self.index.search(q_code, k)
    else:
      raw = self.index.index
      _, indexes = raw.search(q_code, binary_k)
      p = np.vstack([np.unpackbits(raw.reconstruct(int(i))) for i in indexes.reshape(-1)])
      p = p.reshape(1, binary_k, dense.shape[1]).astype(np.float32) * 2 - 1
      distances = np.einsum("ijk,ik->ij", p, dense)
      order = np.argsort(-distances, axis=1)
      indexes = indexes[np.arange(1)[:, None], order]
      indexes = np.array([self.index.id_map.at(int(i)) for i in indexes.reshape(-1)]).reshape(1, -1)[:, :k]
      distances = distances[np.arange(1)[:, None], order][:, :k]
    return [(str(i), float(s)) for s, i in zip(distances.flat, indexes.flat) if i != -1]


@pytest.mark.parametrize("kind,id_style", [("flat", "numeric"), ("ivf", "numeric"), ("hash", "text")])
def test_pyserini_reads_the_folder_and_finds_the_projects_passages(tmp_path, setup, kind, id_style):
  model_dir, model, vectors = setup
  ids = [str(1000 + 7 * i) for i in range(N)] if id_style == "numeric" else [f"doc-{i:02d}" for i in range(N)]
  index_dir = _save(tmp_path, vectors, ids, kind)
  out = tmp_path / "pyserini"
  proc = subprocess.run([sys.executable, "-m", "bpr_jax.pyserini", f"--index={index_dir}",
                         f"--model={model_dir}", f"--output={out}"],
                        capture_output=True, text=True, timeout=300, cwd=REPO)
  assert proc.returncode == 0, proc.stderr[-2000:]
  info = json.loads((out / pyserini.INFO_FILE).read_text())
  assert info["num_passages"] == N and info["code_bits"] == 64 and info["source_index_kind"] == kind
  assert info["faiss_ids"] == ("docid" if id_style == "numeric" else "row")

  reader = PyseriniReader(out)
  assert isinstance(reader.index, faiss.IndexBinaryIDMap) and reader.index.ntotal == N
  assert sorted(reader.docids) == sorted(ids)
  # Row r of the index holds the code of passage docids[r], under the faiss id Pyserini returns.
  code_of = dict(zip(ids, pack_codes(vectors)))
  faiss_ids = faiss.vector_to_array(reader.index.id_map)
  for row, docid in enumerate(reader.docids):
    np.testing.assert_array_equal(reader.index.index.reconstruct(row), code_of[docid])
    assert str(faiss_ids[row]) == (docid if id_style == "numeric" else str(row))
  to_docid = (lambda hit: hit) if id_style == "numeric" else (lambda hit: reader.docids[int(hit)])

  q_vecs = model.encode_questions(QUESTIONS)
  passage_signs = {d: np.unpackbits(c).astype(np.float32) * 2 - 1 for d, c in code_of.items()}
  for question, q_vec in zip(QUESTIONS, q_vecs):
    enc = reader.encode(question)
    np.testing.assert_allclose(enc["dense"], q_vec, atol=1e-5)
    np.testing.assert_array_equal(np.packbits(enc["sparse"] > 0), pack_codes(q_vec[None])[0])
    # Stage 1 only: Hamming distances of the returned passages, and the k smallest overall.
    q_code = pack_codes(q_vec[None])[0]
    hamming = {d: int(np.unpackbits(q_code ^ c).sum()) for d, c in code_of.items()}
    hits = reader.search(question, k=10, binary_k=N, rerank=False)
    assert [s for _, s in hits] == sorted(hamming.values())[:10]
    assert all(hamming[to_docid(h)] == s for h, s in hits)
    # With BPR's rerank over all passages: scores <sign(p), e_q>, the top 10 of the project's.
    hits = reader.search(question, k=10, binary_k=N, rerank=True)
    want = {d: float(passage_signs[d] @ q_vec) for d in ids}
    np.testing.assert_allclose([s for _, s in hits], sorted(want.values(), reverse=True)[:10], atol=1e-4)
    for h, s in hits:
      assert abs(want[to_docid(h)] - s) < 1e-4


def test_faiss_ids():
  assert pyserini.faiss_ids(np.array([3, 10, 7]))[1] == "docid"
  ids, mode = pyserini.faiss_ids(np.array(["12", "5", "0"]))
  assert mode == "docid" and ids.tolist() == [12, 5, 0]
  for bad in (["012", "5"], ["a", "5"], ["5", "5"], ["-1", "2"], [str(2 ** 63), "1"]):
    ids, mode = pyserini.faiss_ids(np.array(bad))
    assert mode == "row" and ids.tolist() == list(range(len(bad))), bad


def test_errors(tmp_path, setup):
  model_dir, model, vectors = setup
  index = BinaryIndex.from_arrays(pack_codes(vectors[:, :32]), [str(i) for i in range(N)])
  with pytest.raises(ValueError, match="32-bit codes but the question encoder gives 64-d"):
    pyserini.write_pyserini(index, model, tmp_path / "out")
  mean = exported_model.ExportedModel(model.question_encoder, model.passage_encoder, model.tokenizer,
                                      {**model.settings, "pooling": "mean"})
  with pytest.raises(ValueError, match="pooling"):
    pyserini.write_pyserini(BinaryIndex.from_arrays(pack_codes(vectors)), mean, tmp_path / "out")
  spaced = BinaryIndex.from_arrays(pack_codes(vectors), [f"id {i} " for i in range(N)])
  with pytest.raises(ValueError, match="docid"):
    pyserini.write_pyserini(spaced, model, tmp_path / "out")
  assert not (tmp_path / "out").exists()
  proc = subprocess.run([sys.executable, "-m", "bpr_jax.pyserini", f"--index={tmp_path / 'none'}",
                         f"--model={model_dir}", f"--output={tmp_path / 'out'}"],
                        capture_output=True, text=True, timeout=300, cwd=REPO)
  assert proc.returncode != 0 and "meta.json" in proc.stderr
