"""Tests for bpr_jax.encode with a tiny random BERT on 8 fake CPU devices."""
import itertools
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from flax import nnx

from bpr_jax import encode as enc
from bpr_jax.codes import pack_codes
from bpr_jax.data.passages import iter_passages
from bpr_jax.export_format import save_exported
from bpr_jax.exported_model import load_exported
from bpr_jax.index import BinaryIndex, build_from_codes_dir, load_codes_dir
from bpr_jax.models.bert import BertConfig, BertEncoder
from bpr_jax.tokenization import Tokenizer

N_PASSAGES = 37


def make_tiny_model(out_dir, tokenizer_dir, hidden=32):
  """A 1-layer random BERT exported with save_exported (code_bits = hidden)."""
  config = BertConfig(vocab_size=30522, hidden_size=hidden, num_hidden_layers=1,
                      num_attention_heads=2, intermediate_size=64, max_position_embeddings=64)
  q = BertEncoder(config, pooling="cls", rngs=nnx.Rngs(0))
  p = BertEncoder(config, pooling="cls", rngs=nnx.Rngs(1))
  settings = {"mode": "bpr", "pooling": "cls", "question_max_length": 16, "passage_max_length": 32,
              "code_bits": hidden, "hidden_size": hidden, "shared_encoder": False}
  save_exported(q, p, Tokenizer.from_dir(tokenizer_dir), settings, out_dir)
  return out_dir


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, minilm_dir, scifact_dir):
  root = tmp_path_factory.mktemp("enc")
  model_dir = make_tiny_model(root / "model", minilm_dir)
  corpus = root / "corpus.jsonl"
  with open(scifact_dir / "corpus.jsonl", encoding="utf-8") as src, open(corpus, "w") as dst:
    for _, line in zip(range(N_PASSAGES), src):
      dst.write(line)
  return load_exported(model_dir), model_dir, corpus


def test_shard_range_covers_everything():
  ranges = [enc.shard_range(10, 3, s) for s in range(3)]
  assert ranges == [(0, 3), (3, 6), (6, 10)]
  with pytest.raises(ValueError):
    enc.shard_range(10, 3, 3)


def test_encode_matches_model_and_resumes(tiny, tmp_path):
  model, model_dir, corpus = tiny
  out = tmp_path / "codes"
  # "Kill" after 2 of 4 chunks.
  assert enc.encode_corpus(model, corpus, out, model_path=model_dir, batch_size=4, chunk_size=10,
                           save_float=True, progress=False, stop_after_chunks=2) is None
  assert not (out / "manifest.json").exists()
  done = sorted((out / "chunks").glob("chunk_*.npz"))
  assert [p.name for p in done] == ["chunk_00000.npz", "chunk_00001.npz"]
  mtimes = [p.stat().st_mtime_ns for p in done]
  m = enc.encode_corpus(model, corpus, out, model_path=model_dir, batch_size=4, chunk_size=10,
                        save_float=True, progress=False, keep_chunks=True)
  assert [p.stat().st_mtime_ns for p in done] == mtimes  # finished chunks not redone
  assert m["num_passages"] == N_PASSAGES and m["code_bits"] == 32 and m["has_embeddings"]
  assert set(m["files"]) == {"codes.npy", "ids.npy", "embeddings.npy"}
  assert json.loads((out / "manifest.json").read_text())["files"] == m["files"]
  emb = np.load(out / "embeddings.npy")
  codes = np.load(out / "codes.npy")
  ids = np.load(out / "ids.npy")
  ps = list(itertools.islice(iter_passages(corpus), N_PASSAGES))
  assert [str(i) for i in ids] == [p.id for p in ps]
  ref = model.encode_passages([p.title for p in ps], [p.text for p in ps], batch_size=8)
  np.testing.assert_allclose(emb, ref, rtol=1e-4, atol=1e-4)
  np.testing.assert_array_equal(codes, pack_codes(emb))
  # Rerun is a no-op; a run of other inputs (here save_float) in the same folder is refused.
  assert enc.encode_corpus(model, corpus, out, model_path=model_dir, batch_size=4, chunk_size=10,
                           save_float=True, progress=False)["files"] == m["files"]
  with pytest.raises(ValueError, match="other inputs .*settings"):
    enc.encode_corpus(model, corpus, out, model_path=model_dir, chunk_size=7, progress=False)


def test_sharded_encode_then_index(tiny, tmp_path):
  model, model_dir, corpus = tiny
  out = tmp_path / "codes"
  for s in range(3):
    enc.encode_corpus(model, corpus, out, model_path=model_dir, batch_size=8, chunk_size=6,
                      num_shards=3, shard_index=s, progress=False)
  assert sorted(p.name for p in out.iterdir()) == ["shard_00000", "shard_00001", "shard_00002"]
  assert not (out / "shard_00000" / "chunks").exists()
  src = load_codes_dir(out)
  assert src.codes.shape == (N_PASSAGES, 4)
  whole = enc.encode_corpus(model, corpus, tmp_path / "one", batch_size=16, chunk_size=100,
                            progress=False)
  assert whole["num_passages"] == N_PASSAGES
  np.testing.assert_array_equal(src.codes, np.load(tmp_path / "one" / "codes.npy"))
  build_from_codes_dir(out, tmp_path / "idx", "flat")
  idx = BinaryIndex.load(tmp_path / "idx")
  assert idx.ntotal == N_PASSAGES and idx.code_bits == 32


def test_encode_command(tiny, tmp_path):
  _, model_dir, corpus = tiny
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  res = subprocess.run([sys.executable, "-m", "bpr_jax.encode", f"--model={model_dir}",
                        f"--passages={corpus}", f"--output={tmp_path / 'c'}", "--batch_size=16"],
                       capture_output=True, text=True, env=env, check=False)
  assert res.returncode == 0, res.stderr[-2000:]
  assert "encoded 37 passages x 32 bits" in res.stdout
  assert (tmp_path / "c" / "manifest.json").exists()
  f32 = np.load(tmp_path / "c" / "codes.npy")
  # bfloat16 compute: same shape; on a random tiny model most bits agree with float32.
  res = subprocess.run([sys.executable, "-m", "bpr_jax.encode", f"--model={model_dir}",
                        f"--passages={corpus}", f"--output={tmp_path / 'b'}", "--batch_size=16",
                        "--dtype=bfloat16"], capture_output=True, text=True, env=env, check=False)
  assert res.returncode == 0, res.stderr[-2000:]
  bf16 = np.load(tmp_path / "b" / "codes.npy")
  assert bf16.shape == f32.shape
  assert (np.unpackbits(bf16) == np.unpackbits(f32)).mean() > 0.8
  res = subprocess.run([sys.executable, "-m", "bpr_jax.encode", f"--model={model_dir}",
                        f"--passages={tmp_path / 'missing.tsv'}", f"--output={tmp_path / 'd'}"],
                       capture_output=True, text=True, env=env, check=False)
  assert res.returncode != 0 and "error:" in res.stderr and "not found" in res.stderr


def test_bucketed_encode_keeps_file_order_and_the_fixed_codes(tiny, tmp_path):
  model, _, corpus = tiny
  ps = list(itertools.islice(iter_passages(corpus), N_PASSAGES))
  mixed = tmp_path / "mixed.jsonl"  # lengths from 3 tokens to the 32 maximum, some without titles
  rng = np.random.default_rng(0)
  with open(mixed, "w", encoding="utf-8") as f:
    for i, p in enumerate(ps):
      words = p.text.split()[:int(rng.integers(1, 30))]
      f.write(json.dumps({"_id": p.id, "title": p.title if i % 3 else "", "text": " ".join(words)}) + "\n")
  runs = {}
  for multiple in (0, 8):
    out = tmp_path / f"m{multiple}"
    enc.encode_corpus(model, mixed, out, batch_size=4, chunk_size=15, save_float=True, progress=False,
                      pad_multiple=multiple)
    runs[multiple] = {k: np.load(out / f"{k}.npy") for k in ("codes", "ids", "embeddings")}
  fixed, bucketed = runs[0], runs[8]
  assert [str(i) for i in bucketed["ids"]] == [p.id for p in ps]
  np.testing.assert_array_equal(bucketed["ids"], fixed["ids"])
  # Codes packed on the device are np.packbits of the same run's float output, bit for bit.
  np.testing.assert_array_equal(bucketed["codes"], pack_codes(bucketed["embeddings"]))
  np.testing.assert_array_equal(fixed["codes"], pack_codes(fixed["embeddings"]))
  np.testing.assert_allclose(bucketed["embeddings"], fixed["embeddings"], rtol=1e-4, atol=1e-5)
  clear = np.abs(fixed["embeddings"]) > 1e-5  # signs of exact near-zeros may differ in the last bit
  bits = lambda c: np.unpackbits(c, axis=1, bitorder="big").astype(bool)
  np.testing.assert_array_equal(bits(bucketed["codes"])[clear], bits(fixed["codes"])[clear])
