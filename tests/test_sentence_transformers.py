"""sentence-transformers door: SentenceTransformer(dir) gives the project's vectors and codes."""
import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from flax import nnx

from bpr_jax import export_format, exported_model, importers
from bpr_jax import sentence_transformers_export as st_export
from bpr_jax.codes import pack_codes
from bpr_jax.models.bert import BertConfig, BertEncoder
from bpr_jax.tokenization import Tokenizer

from sentence_transformers import SentenceTransformer  # a test dependency (setup.py extras "test")

try:
  from sentence_transformers.util.quantization import quantize_embeddings
except ImportError:  # sentence-transformers < 6
  from sentence_transformers.quantization import quantize_embeddings

REPO = pathlib.Path(__file__).resolve().parents[1]
WORDS = ["who", "what", "wrote", "is", "the", "a", "binary", "passage", "retriever",
         "hash", "code", "paper", "title", "text", "about", "retrieval", "fast", "search"]
QUESTIONS = ["who wrote the paper", "what is a binary code", "fast search", "hash",
             "who wrote the paper about a fast binary passage retriever is the title"]  # truncated
TITLES = ["binary passage retriever", "hash code", "fast"]
TEXTS = ["a paper about fast retrieval", "what is the code",
         "the text is about search the text is about search the text is about search"]  # truncated
UNTITLED = ["the text is about search", "binary hash code"]


def _tiny_export(out, pooling="cls", shared=False, seed=0):
  vocab = out.parent / f"vocab-{out.name}"
  vocab.mkdir()
  (vocab / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS) + "\n")
  tokenizer = Tokenizer.from_dir(vocab)
  config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                      num_attention_heads=2, intermediate_size=64, max_position_embeddings=32)
  q = BertEncoder(config, pooling=pooling, rngs=nnx.Rngs(seed))
  p = q if shared else BertEncoder(config, pooling=pooling, rngs=nnx.Rngs(seed + 1))
  settings = {"mode": "bpr", "pooling": pooling, "question_max_length": 8, "passage_max_length": 12,
              "code_bits": 32, "hidden_size": 32, "shared_encoder": shared}
  export_format.save_exported(q, p, tokenizer, settings, out)
  return exported_model.load_exported(out)


def _st_passages(model, titles, texts):
  """The documented way to give passages to sentence-transformers."""
  inputs = [(t, x) if t.strip() else x for t, x in zip(titles, texts)]
  return model.encode(inputs, convert_to_numpy=True, batch_size=4)


def _assert_same_codes(ours, theirs_codes):
  """Codes equal wherever the project's value is not within float noise of 0."""
  ours_bits = np.unpackbits(pack_codes(ours), axis=1)
  theirs_bits = np.unpackbits(theirs_codes, axis=1)
  clear = np.abs(ours) > 1e-5
  np.testing.assert_array_equal(ours_bits[clear], theirs_bits[clear])
  if clear.all():
    np.testing.assert_array_equal(pack_codes(ours), theirs_codes)


@pytest.mark.parametrize("pooling,shared", [("cls", False), ("mean", True)])
def test_sentence_transformers_gives_the_projects_vectors_and_codes(tmp_path, pooling, shared):
  model = _tiny_export(tmp_path / "export", pooling=pooling, shared=shared)
  out = tmp_path / "st"
  proc = subprocess.run([sys.executable, "-m", "bpr_jax.sentence_transformers_export",
                         f"--model={tmp_path / 'export'}", f"--output={out}"],
                        capture_output=True, text=True, timeout=300, cwd=REPO)
  assert proc.returncode == 0, proc.stderr[-2000:]
  for name in ("question", "passage"):
    files = {p.name for p in (out / name).iterdir()}
    assert {"modules.json", "sentence_bert_config.json", "config.json", "model.safetensors",
            "tokenizer.json", "1_Pooling"} <= files
    pool = json.loads((out / name / "1_Pooling" / "config.json").read_text())
    assert pool["pooling_mode_cls_token"] == (pooling == "cls")
    assert pool["pooling_mode_mean_tokens"] == (pooling == "mean")

  st_q = SentenceTransformer(str(out / "question"), device="cpu")
  st_p = SentenceTransformer(str(out / "passage"), device="cpu")
  assert st_q.max_seq_length == 8 and st_p.max_seq_length == 12
  assert st_q.similarity_fn_name == "dot"

  q_ours = model.encode_questions(QUESTIONS)
  q_st = st_q.encode(QUESTIONS, convert_to_numpy=True, batch_size=4)
  np.testing.assert_allclose(q_st, q_ours, atol=1e-5)

  titles, texts = TITLES + [""] * len(UNTITLED), TEXTS + UNTITLED
  p_ours = model.encode_passages(titles, texts)
  p_st = _st_passages(st_p, titles, texts)
  np.testing.assert_allclose(p_st, p_ours, atol=1e-5)
  if not shared:
    assert np.abs(st_q.encode(TEXTS, convert_to_numpy=True) - p_st[:3]).max() > 1e-3

  for ours, theirs in ((q_ours, q_st), (p_ours, p_st)):
    codes = quantize_embeddings(theirs, precision="ubinary")
    assert codes.dtype == np.uint8 and codes.shape == (len(ours), 4)
    _assert_same_codes(ours, codes)


def test_threshold_convention_at_exact_zero():
  """quantize_embeddings packs > 0, the project >= 0: they differ only at exact 0.0."""
  x = np.array([[0.0] * 8, [-1e-30] * 4 + [1e-30] * 4], np.float32)
  assert quantize_embeddings(x, precision="ubinary").tolist() == [[0], [0b00001111]]
  assert pack_codes(x).tolist() == [[0xFF], [0b00001111]]


def test_minilm_export_matches_the_published_sentence_transformers_pipeline(tmp_path, minilm_dir):
  """An off-the-shelf MiniLM export (mean pooling) through the door equals MiniLM in
  sentence-transformers built from the original files: same vectors, same ubinary codes."""
  importers.import_hf_encoder(minilm_dir, tmp_path / "e", pooling="mean", max_length=64)
  st_export.export_sentence_transformers(tmp_path / "e", tmp_path / "st")
  ours = SentenceTransformer(str(tmp_path / "st" / "question"), device="cpu")
  from sentence_transformers import models
  reference = SentenceTransformer(modules=[
      models.Transformer(str(minilm_dir), max_seq_length=64),
      models.Pooling(384, pooling_mode="mean")], device="cpu")
  texts = ["binary codes for passage retrieval", "what is a hash layer", "SciFact claims"]
  a = ours.encode(texts, convert_to_numpy=True)
  b = reference.encode(texts, convert_to_numpy=True)
  np.testing.assert_allclose(a, b, atol=1e-5)
  project = exported_model.load_exported(tmp_path / "e").encode_questions(texts)
  np.testing.assert_allclose(a, project, atol=1e-4)
  _assert_same_codes(project, quantize_embeddings(a, precision="ubinary"))


def test_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="not found"):
    st_export.export_sentence_transformers(tmp_path / "absent", tmp_path / "out")
  with pytest.raises(FileNotFoundError, match="bpr.json"):
    st_export.export_sentence_transformers(tmp_path, tmp_path / "out")
  with pytest.raises(ValueError, match="pooling"):
    st_export.pooling_config("max", 8)
  assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("code_bits", [32, 16])
def test_an_export_with_a_code_head_is_refused(tmp_path, code_bits):
  """Also when the head is as wide as the encoder (32 here): its vectors must not lose the head."""
  vocab = tmp_path / "vocab"
  vocab.mkdir()
  (vocab / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS) + "\n")
  tokenizer = Tokenizer.from_dir(vocab)
  config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=1,
                      num_attention_heads=2, intermediate_size=64, max_position_embeddings=32)
  q = BertEncoder(config, code_bits=code_bits, rngs=nnx.Rngs(0))
  settings = {"mode": "bpr", "pooling": "cls", "question_max_length": 8, "passage_max_length": 12,
              "code_bits": code_bits, "hidden_size": 32, "shared_encoder": True}
  export_format.save_exported(q, q, tokenizer, settings, tmp_path / "model")
  with pytest.raises(ValueError, match=f"{code_bits}-dim code head"):
    st_export.export_sentence_transformers(tmp_path / "model", tmp_path / "out")
  assert not (tmp_path / "out").exists()
