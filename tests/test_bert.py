"""BertEncoder against transformers' PyTorch BertModel on the MiniLM checkpoint."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from bpr_jax.models import hf
from bpr_jax.models.bert import BertConfig, BertEncoder

SENTENCES = [
    "who wrote the binary passage retriever paper?",
    "Hashing passages into compact binary codes makes retrieval cheap.",
    "short one",
]


@pytest.fixture(scope="module")
def batch(minilm_dir):
  import transformers
  tok = transformers.AutoTokenizer.from_pretrained(str(minilm_dir))
  enc = tok(SENTENCES, padding=True, return_tensors="np")
  out = {k: np.asarray(enc[k], np.int32) for k in ("input_ids", "attention_mask", "token_type_ids")}
  out["token_type_ids"][0, 4:] = 1  # exercise token-type embeddings too
  out["token_type_ids"] *= out["attention_mask"]
  assert (out["attention_mask"] == 0).any(), "the batch must contain padding"
  return out


@pytest.fixture(scope="module")
def torch_hidden(minilm_dir, batch):
  import torch
  import transformers
  model = transformers.BertModel.from_pretrained(str(minilm_dir), add_pooling_layer=False)
  model.eval()
  with torch.no_grad():
    out = model(**{k: torch.tensor(v, dtype=torch.long) for k, v in batch.items()})
  return out.last_hidden_state.float().numpy()


@pytest.fixture(scope="module")
def model(minilm_dir):
  return hf.load_bert(minilm_dir, pooling="cls")


def _run(model, batch, **kw):
  return np.asarray(model(jnp.asarray(batch["input_ids"]), jnp.asarray(batch["attention_mask"]),
                          jnp.asarray(batch["token_type_ids"]), **kw))


def test_config_from_dict_and_to_dict(minilm_dir):
  config = BertConfig.from_json(minilm_dir / "config.json")
  assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (384, 6, 12)
  d = config.to_dict()
  assert d["model_type"] == "bert" and d["architectures"] == ["BertModel"]
  assert BertConfig.from_dict({**d, "unknown_key": 1}) == config
  with pytest.raises(ValueError, match="hidden_act"):
    BertConfig(hidden_act="swish")
  with pytest.raises(ValueError, match="multiple"):
    BertConfig(hidden_size=30, num_attention_heads=4)


def test_sequence_output_and_cls_match_torch(model, batch, torch_hidden):
  hidden = np.asarray(model.sequence_output(
      jnp.asarray(batch["input_ids"]), jnp.asarray(batch["attention_mask"]),
      jnp.asarray(batch["token_type_ids"])))
  assert hidden.dtype == np.float32 and hidden.shape == torch_hidden.shape
  assert np.abs(hidden - torch_hidden).max() < 1e-4
  pooled = _run(model, batch)
  assert pooled.shape == (len(SENTENCES), 384) and pooled.dtype == np.float32
  assert np.abs(pooled - torch_hidden[:, 0]).max() < 1e-4


def test_mean_pooling_matches_torch_masked_mean(minilm_dir, batch, torch_hidden):
  model = hf.load_bert(minilm_dir, pooling="mean")
  mask = batch["attention_mask"][..., None].astype(np.float32)
  expected = (torch_hidden * mask).sum(1) / mask.sum(1)
  assert np.abs(_run(model, batch) - expected).max() < 1e-4


def test_bfloat16_compute_is_close(minilm_dir, model, batch):
  bf16 = hf.load_bert(minilm_dir, pooling="cls", dtype=jnp.bfloat16)
  params = nnx.state(bf16, nnx.Param)
  assert all(v.get_value().dtype == jnp.float32 for _, v in nnx.to_flat_state(params))
  got, want = _run(bf16, batch), _run(model, batch)
  assert got.dtype == np.float32
  cos = (got * want).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
  assert cos.min() > 0.99
  assert np.abs(got - want).max() < 0.1 * np.abs(want).max()


def test_state_holds_only_params(model):
  graphdef, state = nnx.split(model)
  kinds = {type(v) for _, v in nnx.to_flat_state(state)}
  assert kinds == {nnx.Param}
  assert len(nnx.to_flat_state(state)) == 5 + 6 * 16
  merged = nnx.merge(graphdef, state)
  assert isinstance(merged, BertEncoder)


def test_dropout(model, batch):
  small = {k: v[:2, :8] for k, v in batch.items()}
  a = _run(model, small)
  np.testing.assert_array_equal(a, _run(model, small))
  k1, k2 = jax.random.key(1), jax.random.key(2)
  d1 = _run(model, small, deterministic=False, dropout_rng=k1)
  d1_again = _run(model, small, deterministic=False, dropout_rng=k1)
  d2 = _run(model, small, deterministic=False, dropout_rng=k2)
  np.testing.assert_array_equal(d1, d1_again)
  assert np.abs(d1 - d2).max() > 1e-3
  assert np.abs(d1 - a).max() > 1e-3
  # Deterministic mode ignores the key.
  np.testing.assert_array_equal(a, _run(model, small, dropout_rng=k1))
  with pytest.raises(ValueError, match="dropout_rng"):
    _run(model, small, deterministic=False)


def test_remat_gives_same_output(model, batch):
  small = {k: v[:2, :8] for k, v in batch.items()}
  remat = BertEncoder(model.config, remat=True, rngs=nnx.Rngs(3))
  nnx.update(remat, nnx.state(model))
  np.testing.assert_allclose(_run(remat, small), _run(model, small), atol=1e-6)


def test_remat_gives_same_grads():
  config = BertConfig(vocab_size=20, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                      intermediate_size=32, max_position_embeddings=16)
  plain = BertEncoder(config, rngs=nnx.Rngs(0))
  remat = BertEncoder(config, remat=True, rngs=nnx.Rngs(0))
  ids = jnp.array([[2, 5, 7, 3, 0, 0], [2, 9, 11, 13, 4, 3]], jnp.int32)
  mask = (ids > 0).astype(jnp.int32)

  def loss(m, key):
    return jnp.sum(m(ids, mask, deterministic=False, dropout_rng=key) ** 2)

  key = jax.random.key(0)
  grad = nnx.jit(nnx.grad(loss))
  g_plain = nnx.to_flat_state(grad(plain, key))
  g_remat = nnx.to_flat_state(grad(remat, key))
  assert len(g_plain) == len(g_remat)
  for (p1, v1), (p2, v2) in zip(g_plain, g_remat):
    assert p1 == p2
    np.testing.assert_allclose(np.asarray(v1.get_value()), np.asarray(v2.get_value()),
                               atol=1e-5, rtol=1e-4)


def test_bad_inputs(model):
  with pytest.raises(ValueError, match="same shape"):
    model(jnp.ones((2, 4), jnp.int32), jnp.ones((2, 5), jnp.int32))
  with pytest.raises(ValueError, match="pooling"):
    BertEncoder(BertConfig(vocab_size=10, hidden_size=8, num_hidden_layers=1,
                           num_attention_heads=2, intermediate_size=16),
                pooling="max", rngs=nnx.Rngs(0))
