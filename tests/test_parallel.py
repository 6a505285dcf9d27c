"""The global-batch loss on 8 fake devices equals a single-device run (value and gradients)."""
import jax
import numpy as np
import pytest
from flax import nnx

from bpr_jax import parallel, train
from bpr_jax.models.bert import BertConfig, BertEncoder
from bpr_jax.models.biencoder import BiEncoder

BERT = BertConfig(vocab_size=97, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                  intermediate_size=64, max_position_embeddings=32)


def _batch(rng, b=16, lq=8, lp=12, n=1):
  def tokens(rows, length):
    ids = rng.integers(5, BERT.vocab_size, size=(rows, length)).astype(np.int32)
    lengths = rng.integers(3, length + 1, size=rows)
    mask = (np.arange(length)[None, :] < lengths[:, None]).astype(np.int32)
    types = (np.arange(length)[None, :] >= lengths[:, None] // 2).astype(np.int32) * mask
    return ids * mask, mask, types
  out = {}
  for prefix, rows, length in (("q", b, lq), ("pos", b, lp), ("neg", b * n, lp)):
    ids, mask, types = tokens(rows, length)
    out.update({f"{prefix}_input_ids": ids, f"{prefix}_attention_mask": mask, f"{prefix}_token_type_ids": types})
  return out


def _loss_and_grads(mesh, biencoder, params_host, batch_host, *, mode, deterministic, rule="replicated"):
  shardings = parallel.param_shardings(params_host, mesh, rule)
  params = parallel.host_to_global(params_host, shardings)
  batch = parallel.global_batch(batch_host, mesh)

  @jax.jit
  def f(params, batch):
    def loss_fn(p):
      out = train.compute_loss(biencoder, p, batch, mode=mode, beta=1.3, alpha=2.0, cand_reduction="mean",
                               deterministic=deterministic, dropout_rng=jax.random.key(7))
      return out.loss, (out.cand, out.rerank)
    return jax.value_and_grad(loss_fn, has_aux=True)(params)
  (loss, aux), grads = f(params, batch)
  return jax.device_get((loss, aux, grads))


@pytest.fixture(scope="module")
def model_and_batch():
  assert jax.device_count() == 8, "tests need XLA_FLAGS=--xla_force_host_platform_device_count=8"
  q = BertEncoder(BERT, rngs=nnx.Rngs(0))
  p = BertEncoder(BERT, rngs=nnx.Rngs(1))
  biencoder, params = BiEncoder.from_modules(q, p)
  return biencoder, jax.device_get(params), _batch(np.random.default_rng(0))


@pytest.mark.parametrize("mode,deterministic,rule", [
    ("bpr", True, "replicated"), ("bpr", False, "replicated"), ("dpr", True, "replicated"), ("bpr", True, "fsdp")])
def test_eight_devices_equal_one(model_and_batch, mode, deterministic, rule):
  biencoder, params, batch = model_and_batch
  one = _loss_and_grads(parallel.make_mesh(jax.devices()[:1]), biencoder, params, batch, mode=mode,
                        deterministic=deterministic)
  eight = _loss_and_grads(parallel.make_mesh(), biencoder, params, batch, mode=mode,
                          deterministic=deterministic, rule=rule)
  np.testing.assert_allclose(eight[0], one[0], rtol=1e-5)
  np.testing.assert_allclose(eight[1], one[1], rtol=1e-5, atol=1e-7)
  flat_one, flat_eight = jax.tree.leaves(one[2]), jax.tree.leaves(eight[2])
  assert len(flat_one) == len(flat_eight) > 0
  for a, b in zip(flat_eight, flat_one):
    # rtol 1e-5 relative to the tensor's scale: all-reduce order changes the last float32 bits
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6 + 1e-5 * float(np.abs(b).max()))


def test_global_batch_spans_all_devices(model_and_batch):
  _, _, batch = model_and_batch
  mesh = parallel.make_mesh()
  arr = parallel.global_batch(batch, mesh)["q_input_ids"]
  assert arr.shape == batch["q_input_ids"].shape
  assert len(arr.sharding.device_set) == 8
  np.testing.assert_array_equal(np.asarray(arr), batch["q_input_ids"])


def test_fsdp_rule_shards_large_tensors():
  mesh = parallel.make_mesh()
  # the largest dimension divisible by the device count is split: 30522 is not, 768 is
  assert parallel.param_spec((30522, 768), 8, "fsdp") == jax.sharding.PartitionSpec(None, "data")
  assert parallel.param_spec((3072, 768), 8, "fsdp") == jax.sharding.PartitionSpec("data", None)
  assert parallel.param_spec((768,), 8, "fsdp") == jax.sharding.PartitionSpec()
  assert parallel.param_spec((30522, 768), 8, "replicated") == jax.sharding.PartitionSpec()
  with pytest.raises(ValueError, match="param_sharding"):
    parallel.param_spec((8, 8), 8, "zero")
  del mesh
