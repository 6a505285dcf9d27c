"""One passage forward over positives and negatives gives the loss of two separate forwards."""
import jax
import numpy as np
import pytest
from flax import nnx

from bpr_jax import parallel, train
from bpr_jax.models.bert import BertConfig, BertEncoder
from bpr_jax.models.biencoder import BiEncoder

BERT = BertConfig(vocab_size=97, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                  intermediate_size=64, max_position_embeddings=32)


def tokens(rng, rows, length):
  ids = rng.integers(5, BERT.vocab_size, size=(rows, length)).astype(np.int32)
  lengths = rng.integers(3, length + 1, size=rows)
  mask = (np.arange(length)[None, :] < lengths[:, None]).astype(np.int32)
  return {"input_ids": ids * mask, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}


@pytest.mark.parametrize("pooling", ["cls", "mean"])
@pytest.mark.parametrize("num_neg,neg_len", [(1, 12), (2, 9)])
def test_fused_passage_forward_equals_two_forwards_on_eight_devices(pooling, num_neg, neg_len):
  rng = np.random.default_rng(0)
  b = 16
  batch = {}
  for prefix, rows, length in (("q", b, 8), ("pos", b, 12), ("neg", b * num_neg, neg_len)):
    batch.update({f"{prefix}_{k}": v for k, v in tokens(rng, rows, length).items()})
  biencoder, params = BiEncoder.from_modules(BertEncoder(BERT, pooling=pooling, rngs=nnx.Rngs(0)),
                                             BertEncoder(BERT, pooling=pooling, rngs=nnx.Rngs(1)))
  mesh = parallel.make_mesh()
  assert mesh.devices.size == 8
  params = parallel.host_to_global(jax.device_get(params), parallel.param_shardings(params, mesh))
  global_batch = parallel.global_batch(batch, mesh)

  def run(fuse):
    @jax.jit
    def f(params, batch):
      def loss_fn(p):
        out = train.compute_loss(biencoder, p, batch, mode="bpr", beta=1.3, alpha=2.0, cand_reduction="mean",
                                 deterministic=True, dropout_rng=None, fuse_passages=fuse)
        return out.loss, out.scores
      return jax.value_and_grad(loss_fn, has_aux=True)(params)
    return jax.device_get(f(params, global_batch))
  (loss_f, scores_f), grads_f = run(True)
  (loss_u, scores_u), grads_u = run(False)
  np.testing.assert_allclose(loss_f, loss_u, rtol=1e-5)
  np.testing.assert_allclose(scores_f, scores_u, rtol=1e-5, atol=1e-5)
  for a, g in zip(jax.tree.leaves(grads_f), jax.tree.leaves(grads_u)):
    np.testing.assert_allclose(a, g, rtol=1e-4, atol=1e-6 + 1e-5 * float(np.abs(g).max()))


def test_encode_passage_groups_keeps_group_order():
  rng = np.random.default_rng(1)
  model = BertEncoder(BERT, pooling="mean", rngs=nnx.Rngs(0))
  biencoder, params = BiEncoder.from_modules(model, None)
  groups = [tokens(rng, 8, 10), tokens(rng, 16, 6), tokens(rng, 4, 10)]
  for shards in (1, 4):
    fused = biencoder.encode_passage_groups(params, groups, num_shards=shards)
    for g, got in zip(groups, fused):
      np.testing.assert_allclose(got, biencoder.encode_passages(params, g), rtol=1e-5, atol=1e-5)
