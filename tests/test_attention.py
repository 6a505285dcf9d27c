"""Attention implementations and scanned layers of BertEncoder give the old encoder's numbers."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from bpr_jax import train
from bpr_jax.models import build
from bpr_jax.models.bert import BertConfig, BertEncoder
from bpr_jax.models.biencoder import split_module
from configs import common

CONFIG = BertConfig(vocab_size=61, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                    intermediate_size=48, max_position_embeddings=32)


def inputs():
  rs = np.random.RandomState(0)
  ids = rs.randint(1, CONFIG.vocab_size, (4, 12)).astype(np.int32)
  mask = np.ones_like(ids)
  mask[1, 7:] = 0
  mask[2, 2:] = 0
  ids[mask == 0] = 0
  return jnp.asarray(ids), jnp.asarray(mask)


def hidden(config=CONFIG, dtype=jnp.float32, **kwargs):
  ids, mask = inputs()
  model = BertEncoder(config, dtype=dtype, rngs=nnx.Rngs(0), **kwargs)
  return np.asarray(model.sequence_output(ids, mask)), np.asarray(mask)


def real(x, mask):
  """Hidden states of the real tokens only (padding positions are never pooled)."""
  return x[mask.astype(bool)]


@pytest.mark.parametrize("attention", ["xla", "auto"])
def test_dot_product_attention_equals_manual_attention_with_padding(attention):
  want, mask = hidden(attention="manual")
  got, _ = hidden(attention=attention)
  np.testing.assert_allclose(real(got, mask), real(want, mask), atol=1e-5, rtol=1e-5)


def test_cudnn_branch_arguments_equal_manual_attention(monkeypatch):
  """The 'cudnn' branch (padding as key lengths), run through XLA here: no GPU needed."""
  original = jax.nn.dot_product_attention
  calls = []

  def on_xla(*args, implementation=None, **kwargs):
    calls.append(implementation)
    return original(*args, implementation="xla", **kwargs)
  monkeypatch.setattr(jax.nn, "dot_product_attention", on_xla)
  want, mask = hidden(attention="manual")
  got, _ = hidden(attention="cudnn")
  assert calls and set(calls) == {"cudnn"}
  np.testing.assert_allclose(real(got, mask), real(want, mask), atol=1e-5, rtol=1e-5)


def dot_generals(jaxpr):
  """Every dot_general equation of a jaxpr, inner jaxprs (scan, remat, ...) included."""
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "dot_general":
      yield eqn
    for param in eqn.params.values():
      for sub in param if isinstance(param, (list, tuple)) else [param]:
        inner = getattr(sub, "jaxpr", sub)
        if hasattr(inner, "eqns"):
          yield from dot_generals(inner)


@pytest.mark.parametrize("attention", ["manual", "xla"])
@pytest.mark.parametrize("scan_layers", [False, True])
def test_bfloat16_attention_logits_are_float32(attention, scan_layers):
  ids, mask = inputs()
  model = BertEncoder(CONFIG, dtype=jnp.bfloat16, attention=attention, scan_layers=scan_layers,
                      rngs=nnx.Rngs(0))
  jaxpr = jax.make_jaxpr(lambda i, m: model.sequence_output(i, m))(ids, mask).jaxpr
  length = ids.shape[1]
  # Q K^T: bfloat16 operands, an output with both sequence axes [.., L, .., L]
  logits = [e.outvars[0].aval for e in dot_generals(jaxpr)
            if all(v.aval.dtype == jnp.bfloat16 for v in e.invars) and e.outvars[0].aval.shape.count(length) >= 2]
  assert logits and all(a.dtype == jnp.float32 for a in logits), logits
  want, m = hidden(attention="manual")
  got = np.asarray(model.sequence_output(ids, mask), np.float32)
  assert np.max(np.abs(real(got, m) - real(want, m))) < 0.1


def test_scanned_layers_equal_the_loop_forward_dropout_and_gradients():
  ids, mask = inputs()
  loop = BertEncoder(CONFIG, pooling="mean", scan_layers=False, rngs=nnx.Rngs(0))
  scan = BertEncoder(CONFIG, pooling="mean", scan_layers=True, rngs=nnx.Rngs(0))
  remat = BertEncoder(CONFIG, pooling="mean", scan_layers=True, remat=True, rngs=nnx.Rngs(0))
  (gl, pl), (gs, ps), (gr, pr) = split_module(loop), split_module(scan), split_module(remat)
  # the parameter tree (HF import/export, checkpoints) does not change
  assert jax.tree.structure(pl) == jax.tree.structure(ps) == jax.tree.structure(pr)
  key = jax.random.key(5)

  def loss(graphdef):
    def f(params):
      out = nnx.merge(graphdef, params)(ids, mask, deterministic=False, dropout_rng=key)
      return jnp.sum(out ** 2), out
    return jax.jit(jax.value_and_grad(f, has_aux=True))
  (_, out_l), grad_l = loss(gl)(pl)
  for graphdef, params in ((gs, ps), (gr, pr)):
    (_, out_s), grad_s = loss(graphdef)(params)
    np.testing.assert_allclose(out_s, out_l, atol=1e-5, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(grad_s), jax.tree.leaves(grad_l)):
      np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-4)
  np.testing.assert_allclose(scan(ids, mask), loop(ids, mask), atol=1e-5, rtol=1e-5)


def test_attention_dropout_selects_manual_or_is_refused():
  config = BertConfig.from_dict({**CONFIG.to_dict(), "attention_probs_dropout_prob": 0.1})
  ids, mask = inputs()
  auto = BertEncoder(config, rngs=nnx.Rngs(0))
  attention = auto.layers[0].attention
  assert attention.implementation(deterministic=False) == "manual"
  assert attention.implementation(deterministic=True) == ("manual" if jax.default_backend() == "cpu" else "xla")
  auto(ids, mask, deterministic=False, dropout_rng=jax.random.key(0))
  fused = BertEncoder(config, attention="xla", rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="attention-probability dropout"):
    fused(ids, mask, deterministic=False, dropout_rng=jax.random.key(0))
  with pytest.raises(ValueError, match="unknown attention"):
    BertEncoder(config, attention="flash", rngs=nnx.Rngs(0))


@pytest.mark.parametrize("dropout,attention_dropout,want", [
    (0.1, 0.0, (0.1, 0.0)), (0.1, -1.0, (0.1, 0.1)), (0.2, 0.05, (0.2, 0.05)), (-1.0, 0.0, (0.3, 0.0)),
    (-1.0, -1.0, (0.3, 0.4))])
def test_config_attention_dropout(dropout, attention_dropout, want):
  bert = BertConfig.from_dict({**CONFIG.to_dict(), "hidden_dropout_prob": 0.3, "attention_probs_dropout_prob": 0.4})
  got = build._with_dropout(bert, dropout, attention_dropout)  # pylint: disable=protected-access
  assert (got.hidden_dropout_prob, got.attention_probs_dropout_prob) == want


def test_config_defaults_keep_the_papers_dropout_and_auto_attention():
  c = common.base_config()
  assert c.model.attention == "auto" and c.model.attention_dropout == -1.0  # follows model.dropout
  c.model.attention = "flash"
  with pytest.raises(ValueError, match="model.attention"):
    train.validate_config(c)
