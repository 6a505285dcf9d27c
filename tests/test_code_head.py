"""The code head (model.code_bits > 0): dense + LayerNorm on the pooled vector, through export,
loading in torch, encode and the index, and training from an HF checkpoint without a head."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx
from safetensors.numpy import load_file

from bpr_jax import checkpoints, codes, export_format, exported_model, parallel, train
from bpr_jax.models import hf
from bpr_jax.models.bert import BertConfig, BertEncoder, pool
from bpr_jax.tokenization import Tokenizer
from test_train import shrunk_config
from conftest import save_bert_dir

WORDS = ["who", "wrote", "the", "binary", "passage", "retriever", "hash", "code", "paper", "fast"]
TITLES = ["binary passage retriever", "", "hash code"]
TEXTS = ["the paper about fast codes", "who wrote the code", "fast hash"]


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
  vocab = tmp_path_factory.mktemp("vocab")
  (vocab / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS) + "\n")
  tokenizer = Tokenizer.from_dir(vocab)
  config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                      num_attention_heads=2, intermediate_size=64, max_position_embeddings=32)
  return tokenizer, config


def _inputs(batch):
  return tuple(jnp.asarray(batch[k]) for k in ("input_ids", "attention_mask", "token_type_ids"))


def test_head_is_dense_then_layernorm_by_hand(parts):
  tokenizer, config = parts
  model = BertEncoder(config, pooling="mean", code_bits=48, rngs=nnx.Rngs(0))
  assert model.output_dim == 48 and BertEncoder(config, rngs=nnx.Rngs(0)).output_dim == 32
  batch = tokenizer.passages(TITLES, TEXTS, 16)
  ids, mask, types = _inputs(batch)
  pooled = np.asarray(pool(model.sequence_output(ids, mask, types), mask, "mean"), np.float64)
  w = np.asarray(model.code_head.dense.kernel.get_value(), np.float64)
  b = np.asarray(model.code_head.dense.bias.get_value(), np.float64)
  y = pooled @ w + b
  y = (y - y.mean(-1, keepdims=True)) / np.sqrt(y.var(-1, keepdims=True) + config.layer_norm_eps)
  y = y * np.asarray(model.code_head.norm.scale.get_value()) + np.asarray(model.code_head.norm.bias.get_value())
  np.testing.assert_allclose(np.asarray(model(ids, mask, types)), y, atol=1e-5)
  with pytest.raises(ValueError, match="code_bits"):
    BertEncoder(config, code_bits=-1, rngs=nnx.Rngs(0))


@pytest.mark.parametrize("code_bits", [64, 32, 16])
def test_head_starts_orthogonal(parts, code_bits):
  """An isometry of the pooled vectors when code_bits >= hidden (32 here), else a projection
  with orthonormal columns; the bias starts at zero."""
  _, config = parts
  head = BertEncoder(config, code_bits=code_bits, rngs=nnx.Rngs(3)).code_head
  k = np.asarray(head.dense.kernel.get_value())
  gram = k @ k.T if code_bits >= config.hidden_size else k.T @ k
  np.testing.assert_allclose(gram, np.eye(gram.shape[0]), atol=1e-5)
  assert not np.asarray(head.dense.bias.get_value()).any()
  if code_bits >= config.hidden_size:
    x = np.random.default_rng(0).standard_normal((5, config.hidden_size)).astype(np.float32)
    np.testing.assert_allclose((x @ k) @ (x @ k).T, x @ x.T, rtol=1e-4, atol=1e-4)


def test_head_init_norm_sets_the_starting_norm(parts):
  _, config = parts
  x = np.random.default_rng(1).standard_normal((4, config.hidden_size)).astype(np.float32)
  for init_norm, want in ((0.0, np.sqrt(64)), (6.0, 6.0)):
    head = BertEncoder(config, code_bits=64, code_head_norm=init_norm, rngs=nnx.Rngs(0)).code_head
    np.testing.assert_allclose(np.linalg.norm(np.asarray(head(jnp.asarray(x))), axis=1), want, rtol=1e-3)
  with pytest.raises(ValueError, match="init_norm must be >= 0"):
    BertEncoder(config, code_bits=8, code_head_norm=-1.0, rngs=nnx.Rngs(0))


def test_export_with_head_loads_and_matches_torch(parts, tmp_path):
  tokenizer, config = parts
  q = BertEncoder(config, pooling="cls", code_bits=64, rngs=nnx.Rngs(0))
  p = BertEncoder(config, pooling="cls", code_bits=64, rngs=nnx.Rngs(1))
  settings = {"mode": "bpr", "pooling": "cls", "question_max_length": 8, "passage_max_length": 16,
              "code_bits": 64, "hidden_size": 32, "shared_encoder": False}
  out = tmp_path / "model"
  export_format.save_exported(q, p, tokenizer, settings, out)
  tensors = load_file(str(out / "passage_encoder" / "model.safetensors"))
  assert tensors["dense.weight"].shape == (64, 32) and tensors["layer_norm.bias"].shape == (64,)
  model = exported_model.load_exported(out)
  assert model.passage_encoder.code_bits == 64
  ours = model.encode_passages(TITLES, TEXTS)
  assert ours.shape == (3, 64)
  batch = tokenizer.passages(TITLES, TEXTS, 16)
  np.testing.assert_allclose(ours, np.asarray(p(*_inputs(batch))), atol=1e-5)
  # torch: BertModel (ignores the head's tensors) + the head applied from the same file
  tm = transformers.BertModel.from_pretrained(str(out / "passage_encoder"), add_pooling_layer=False).eval()
  dense = torch.nn.Linear(32, 64)
  norm = torch.nn.LayerNorm(64, eps=config.layer_norm_eps)
  with torch.no_grad():
    dense.weight.copy_(torch.from_numpy(tensors["dense.weight"]))
    dense.bias.copy_(torch.from_numpy(tensors["dense.bias"]))
    norm.weight.copy_(torch.from_numpy(tensors["layer_norm.weight"]))
    norm.bias.copy_(torch.from_numpy(tensors["layer_norm.bias"]))
    cls = tm(**{k: torch.tensor(v, dtype=torch.long) for k, v in batch.items()}).last_hidden_state[:, 0]
    expected = norm(dense(cls)).numpy()
  np.testing.assert_allclose(ours, expected, atol=1e-5)
  np.testing.assert_array_equal(codes.pack_codes(ours), np.packbits(expected >= 0, axis=1))
  # bpr.json that disagrees with the weights is refused
  bad = json.loads((out / export_format.SETTINGS_FILE).read_text())
  bad["code_bits"] = 32
  (out / export_format.SETTINGS_FILE).write_text(json.dumps(bad))
  with pytest.raises(ValueError, match="code_bits"):
    exported_model.load_exported(out)


def test_incomplete_head_is_an_error(parts):
  _, config = parts
  state = hf.state_dict_from_bert(BertEncoder(config, code_bits=16, rngs=nnx.Rngs(0)))
  del state["layer_norm.weight"]
  with pytest.raises(ValueError, match="incomplete code head"):
    hf.bert_from_state_dict(config, state)


def _tiny_config(**model):
  return shrunk_config(num_train_steps=4, eval_every=0, checkpoint_every=4,
                       **{f"model.{k}": v for k, v in model.items()})


def test_training_with_a_head_from_an_hf_encoder_without_one(tmp_path):
  # a headless HF dir (random tiny BERT), then train with a 96-bit code head on top of it
  c = _tiny_config()
  train.train_and_evaluate(c, str(tmp_path / "base"))
  q0, _, tok, _ = checkpoints.restore_encoders(str(tmp_path / "base"))
  save_bert_dir(q0, tmp_path / "hf", tokenizer=tok)
  c = _tiny_config(init="hf", hf_dir=str(tmp_path / "hf"), code_bits=96, code_head_norm=4.0)
  c.data.tokenizer_dir = str(tmp_path / "hf")
  # Both towers start from one checkpoint, so their fresh heads start equal: <q, p> begins as
  # the checkpoint's similarity through one projection (two independent random projections
  # would start it as noise).
  bert = train.encoder_configs(c, tok)
  biencoder, params = train.build_biencoder(c, bert, load_weights=True, mesh=parallel.make_mesh())
  params = jax.tree.map(np.asarray, params)
  q_init, p_init = biencoder.question_module(params), biencoder.passage_module(params)
  np.testing.assert_array_equal(q_init.code_head.dense.kernel.get_value(),
                                p_init.code_head.dense.kernel.get_value())
  np.testing.assert_allclose(p_init.code_head.norm.scale.get_value(), 4.0 / np.sqrt(96), rtol=1e-6)
  np.testing.assert_array_equal(hf.state_dict_from_bert(q_init)["encoder.layer.0.output.dense.weight"],
                                hf.state_dict_from_bert(q0)["encoder.layer.0.output.dense.weight"])
  train.train_and_evaluate(c, str(tmp_path / "run"))
  q, p, tok, settings = checkpoints.restore_encoders(str(tmp_path / "run"))
  assert q.code_bits == p.code_bits == 96 and settings["code_bits"] == 96
  # the heads were trained (each tower its own)
  assert not np.allclose(q.code_head.dense.kernel.get_value(), q_init.code_head.dense.kernel.get_value())
  export_format.save_exported(q, p, tok, settings, tmp_path / "export")
  model = exported_model.load_exported(tmp_path / "export")
  vecs = model.encode_passages(TITLES, TEXTS)
  assert vecs.shape == (3, 96) and codes.pack_codes(vecs).shape == (3, 12)


def test_doors_that_cannot_hold_a_head_refuse_it(parts, tmp_path):
  from bpr_jax import sentence_transformers_export
  tokenizer, config = parts
  head = BertEncoder(config, pooling="cls", code_bits=16, rngs=nnx.Rngs(0))
  (tmp_path / "dpr").mkdir()
  with pytest.raises(ValueError, match="code head"):
    hf.write_dpr_files(head, tmp_path / "dpr")
  settings = {"mode": "bpr", "pooling": "cls", "question_max_length": 8, "passage_max_length": 16,
              "code_bits": 16, "hidden_size": 32, "shared_encoder": True}
  export_format.save_exported(head, head, tokenizer, settings, tmp_path / "model")
  with pytest.raises(ValueError, match="code head"):
    sentence_transformers_export.export_sentence_transformers(tmp_path / "model", tmp_path / "st")
  assert not (tmp_path / "st").exists()
