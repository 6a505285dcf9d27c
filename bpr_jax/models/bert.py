"""A BERT encoder in Flax NNX, weight-compatible with Hugging Face `BertModel`.

The encoder returns one pooled vector per sequence: the last-layer hidden state
of token 0 ('cls', as in DPR/BPR; there is no pooler dense layer) or the mean of
the hidden states of the real tokens ('mean').

Dropout takes its randomness from an explicit `dropout_rng` key, so the
module's state holds nothing but `nnx.Param` variables and
`nnx.split(model)` gives `(graphdef, params)`.

Attention logits and softmax are float32 whatever the compute dtype. With `scan_layers=True`
the layers run as one `jax.lax.scan` over their parameters stacked at trace time (one layer
body to compile instead of `num_hidden_layers`); the parameter tree stays per layer.

Parameter tree (paths of `nnx.state(model)`):

  embeddings.word_embeddings.embedding        [vocab, hidden]
  embeddings.position_embeddings.embedding    [max_positions, hidden]
  embeddings.token_type_embeddings.embedding  [type_vocab, hidden]
  embeddings.norm.{scale,bias}                [hidden]
  layers.<i>.attention.{query,key,value,output}.{kernel [in, out], bias}
  layers.<i>.attention_norm.{scale,bias}
  layers.<i>.intermediate.{kernel,bias}       [hidden, intermediate]
  layers.<i>.output.{kernel,bias}             [intermediate, hidden]
  layers.<i>.output_norm.{scale,bias}
  code_head.dense.{kernel [hidden, code_bits], bias}, code_head.norm.{scale,bias}
                                              (only with code_bits > 0)

With `code_bits > 0` a code head (dense + LayerNorm, the authors' `--projection_dim_size`) maps the
pooled vector to `code_bits` dims, so the code length and its scale no longer depend on the
encoder: a 384-dim MiniLM can give 768-bit codes and bert-base 128-bit ones.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import nnx

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
}
POOLINGS = ("cls", "mean")
# 'manual': einsum + softmax (+ attention-probability dropout); 'xla': jax.nn.dot_product_attention
# with a padding mask; 'cudnn': jax.nn.dot_product_attention(implementation='cudnn') (GPU flash
# attention; padding as key lengths, so real tokens must come first: right padding); 'auto':
# 'manual' while attention dropout is active, else 'cudnn' on GPU in bfloat16/float16, 'manual'
# on CPU (measured faster there than 'xla': benchmarks/results/train_step_speed.json), else 'xla'.
ATTENTION_IMPLS = ("auto", "manual", "xla", "cudnn")
# Added to the attention scores of padding keys (scores are float32).
MASK_BIAS = -1e9


@dataclasses.dataclass(frozen=True)
class BertConfig:
  """BERT hyper-parameters, with Hugging Face `config.json` field names."""
  vocab_size: int = 30522
  hidden_size: int = 768
  num_hidden_layers: int = 12
  num_attention_heads: int = 12
  intermediate_size: int = 3072
  hidden_act: str = "gelu"
  hidden_dropout_prob: float = 0.1
  attention_probs_dropout_prob: float = 0.1
  max_position_embeddings: int = 512
  type_vocab_size: int = 2
  layer_norm_eps: float = 1e-12
  pad_token_id: int = 0

  def __post_init__(self):
    if self.hidden_size % self.num_attention_heads:
      raise ValueError(f"hidden_size {self.hidden_size} is not a multiple of "
                       f"num_attention_heads {self.num_attention_heads}")
    if self.hidden_act not in ACTIVATIONS:
      raise ValueError(f"unsupported hidden_act {self.hidden_act!r}; "
                       f"expected one of {sorted(ACTIVATIONS)}")

  @classmethod
  def from_dict(cls, d: dict) -> "BertConfig":
    """Builds a config from a dict such as HF config.json; unknown keys are ignored."""
    position_type = d.get("position_embedding_type", "absolute")
    if position_type != "absolute":
      raise ValueError(f"unsupported position_embedding_type {position_type!r}; "
                       "only 'absolute' is implemented")
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {k: v for k, v in d.items() if k in names and v is not None}
    return cls(**kwargs)

  @classmethod
  def from_json(cls, path: str | os.PathLike) -> "BertConfig":
    """Reads a HF-style config.json."""
    try:
      with open(path, encoding="utf-8") as f:
        d = json.load(f)
    except FileNotFoundError:
      raise FileNotFoundError(f"config file not found: {path}") from None
    except json.JSONDecodeError as e:
      raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(d, dict):
      raise ValueError(f"{path}: expected a JSON object")
    return cls.from_dict(d)

  def to_dict(self) -> dict:
    """The content of a HF `config.json` for `BertModel`."""
    d: dict[str, Any] = {"architectures": ["BertModel"], "model_type": "bert"}
    d.update(dataclasses.asdict(self))
    d["position_embedding_type"] = "absolute"
    d["initializer_range"] = 0.02
    return d

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_attention_heads


def _normal_init(stddev: float = 0.02):
  return nnx.initializers.normal(stddev)


def dropout(x: jax.Array, rate: float, rng: jax.Array | None,
            deterministic: bool) -> jax.Array:
  """Inverted dropout: zeroes a `rate` fraction of `x` and rescales the rest."""
  if deterministic or rate <= 0.0:
    return x
  if rng is None:
    raise ValueError("dropout needs a dropout_rng key when deterministic=False")
  keep = jax.random.bernoulli(rng, 1.0 - rate, x.shape)
  return jnp.where(keep, x / (1.0 - rate), jnp.zeros_like(x)).astype(x.dtype)


def _split(rng: jax.Array | None, n: int) -> list[jax.Array | None]:
  """n keys from `rng`, or n Nones when there is no key."""
  if rng is None:
    return [None] * n
  return list(jax.random.split(rng, n))


class BertEmbeddings(nnx.Module):
  """Word + position + token-type embeddings, layer norm and dropout."""

  def __init__(self, config: BertConfig, *, param_dtype=jnp.float32, rngs: nnx.Rngs):
    self.config = config
    kw = dict(dtype=jnp.float32, param_dtype=param_dtype,
              embedding_init=_normal_init(), rngs=rngs)
    self.word_embeddings = nnx.Embed(config.vocab_size, config.hidden_size, **kw)
    self.position_embeddings = nnx.Embed(config.max_position_embeddings,
                                         config.hidden_size, **kw)
    self.token_type_embeddings = nnx.Embed(config.type_vocab_size, config.hidden_size, **kw)
    self.norm = nnx.LayerNorm(config.hidden_size, epsilon=config.layer_norm_eps,
                              dtype=jnp.float32, param_dtype=param_dtype, rngs=rngs)

  def __call__(self, input_ids: jax.Array, token_type_ids: jax.Array, *,
               deterministic: bool, rng: jax.Array | None) -> jax.Array:
    length = input_ids.shape[-1]
    if length > self.config.max_position_embeddings:
      raise ValueError(f"sequence length {length} exceeds max_position_embeddings "
                       f"{self.config.max_position_embeddings}")
    positions = jnp.arange(length, dtype=jnp.int32)[None, :]
    x = (self.word_embeddings(input_ids) + self.position_embeddings(positions)
         + self.token_type_embeddings(token_type_ids))
    x = self.norm(x.astype(jnp.float32))
    return dropout(x, self.config.hidden_dropout_prob, rng, deterministic)


class BertSelfAttention(nnx.Module):
  """Multi-head self-attention with the output projection (no layer norm)."""

  def __init__(self, config: BertConfig, *, dtype=jnp.float32, param_dtype=jnp.float32,
               attention: str = "auto", rngs: nnx.Rngs):
    if attention not in ATTENTION_IMPLS:
      raise ValueError(f"unknown attention {attention!r}; expected one of {ATTENTION_IMPLS}")
    self.config = config
    self.dtype = dtype
    self.attention = attention
    h = config.hidden_size
    kw = dict(dtype=dtype, param_dtype=param_dtype, kernel_init=_normal_init(), rngs=rngs)
    self.query = nnx.Linear(h, h, **kw)
    self.key = nnx.Linear(h, h, **kw)
    self.value = nnx.Linear(h, h, **kw)
    self.output = nnx.Linear(h, h, **kw)

  def implementation(self, deterministic: bool) -> str:
    """The attention implementation this call uses ('manual', 'xla' or 'cudnn')."""
    rate = self.config.attention_probs_dropout_prob
    dropout_on = not deterministic and rate > 0.0
    if self.attention == "auto":
      if dropout_on:
        return "manual"
      backend = jax.default_backend()
      if backend == "gpu" and jnp.dtype(self.dtype) in (jnp.bfloat16, jnp.float16):
        return "cudnn"
      return "manual" if backend == "cpu" else "xla"
    if dropout_on and self.attention != "manual":
      raise ValueError(f"attention {self.attention!r} has no attention-probability dropout; set "
                       f"attention_probs_dropout_prob to 0 (model.attention_dropout=0) or use "
                       f"attention 'manual' or 'auto'")
    return self.attention

  def __call__(self, x: jax.Array, attention_mask: jax.Array, *, deterministic: bool,
               rngs: list[jax.Array | None]) -> jax.Array:
    """x [B, L, H], attention_mask [B, L] (1 = real token) -> [B, L, H] in the compute dtype."""
    batch, length, _ = x.shape
    heads, head_dim = self.config.num_attention_heads, self.config.head_dim

    def to_heads(y: jax.Array) -> jax.Array:
      return y.reshape(batch, length, heads, head_dim)

    q, k, v = to_heads(self.query(x)), to_heads(self.key(x)), to_heads(self.value(x))
    impl = self.implementation(deterministic)
    if impl == "manual":
      context = self._manual(q, k, v, attention_mask, deterministic, rngs[0])
    elif impl == "xla":
      mask = (attention_mask > 0)[:, None, None, :]
      context = jax.nn.dot_product_attention(q, k, v, mask=mask, implementation="xla")
    else:
      lengths = jnp.sum(attention_mask > 0, axis=-1).astype(jnp.int32)
      context = jax.nn.dot_product_attention(q, k, v, key_value_seq_lengths=lengths,
                                             implementation="cudnn")
    out = self.output(context.astype(self.dtype).reshape(batch, length, heads * head_dim))
    return dropout(out, self.config.hidden_dropout_prob, rngs[1], deterministic)

  def _manual(self, q, k, v, attention_mask, deterministic, rng):
    """Scores and softmax in float32, with attention-probability dropout."""
    bias = jnp.where(attention_mask[:, None, None, :] > 0, 0.0, MASK_BIAS).astype(jnp.float32)
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
    scores = scores.astype(jnp.float32) / math.sqrt(q.shape[-1]) + bias
    probs = jax.nn.softmax(scores, axis=-1)
    probs = dropout(probs, self.config.attention_probs_dropout_prob, rng, deterministic)
    return jnp.einsum("bhqk,bkhd->bqhd", probs.astype(self.dtype), v)


class BertLayer(nnx.Module):
  """One post-norm transformer block: attention, add & norm, MLP, add & norm."""

  def __init__(self, config: BertConfig, *, dtype=jnp.float32, param_dtype=jnp.float32,
               attention: str = "auto", rngs: nnx.Rngs):
    self.config = config
    h, m = config.hidden_size, config.intermediate_size
    kw = dict(dtype=dtype, param_dtype=param_dtype, kernel_init=_normal_init(), rngs=rngs)
    norm_kw = dict(epsilon=config.layer_norm_eps, dtype=jnp.float32,
                   param_dtype=param_dtype, rngs=rngs)
    self.attention = BertSelfAttention(config, dtype=dtype, param_dtype=param_dtype,
                                       attention=attention, rngs=rngs)
    self.attention_norm = nnx.LayerNorm(h, **norm_kw)
    self.intermediate = nnx.Linear(h, m, **kw)
    self.output = nnx.Linear(m, h, **kw)
    self.output_norm = nnx.LayerNorm(h, **norm_kw)

  def __call__(self, x: jax.Array, attention_mask: jax.Array, rng: jax.Array | None, *,
               deterministic: bool) -> jax.Array:
    """x [B, L, H] float32, attention_mask [B, L] -> [B, L, H] float32."""
    rngs = _split(rng, 3)
    attn = self.attention(x, attention_mask, deterministic=deterministic, rngs=rngs[:2])
    x = self.attention_norm(x + attn.astype(jnp.float32))
    y = ACTIVATIONS[self.config.hidden_act](self.intermediate(x))
    y = dropout(self.output(y), self.config.hidden_dropout_prob, rngs[2], deterministic)
    return self.output_norm(x + y.astype(jnp.float32))


class CodeHead(nnx.Module):
  """dense + LayerNorm on the pooled vector (float32), as the authors' projection option.

  The dense kernel starts orthogonal: with code_bits >= the pooled width it is an isometry (inner
  products of pooled vectors kept exactly), below it a random orthogonal projection; LayerNorm
  then leaves (about) the cosine of the pooled vectors. A head added to a pretrained encoder so
  starts from the encoder's similarity. (BERT's N(0, 0.02) start scrambled it: a 384-bit head on
  MiniLM reached SciFact dev nDCG@10 0.535 in 200 steps, below the untrained model.)
  """

  def __init__(self, in_dim: int, code_bits: int, *, eps: float, init_norm: float = 0.0,
               param_dtype=jnp.float32, rngs: nnx.Rngs):
    if init_norm < 0:
      raise ValueError(f"code head init_norm must be >= 0 (0: LayerNorm's scale 1), got {init_norm}")
    self.dense = nnx.Linear(in_dim, code_bits, dtype=jnp.float32, param_dtype=param_dtype,
                            kernel_init=nnx.initializers.orthogonal(), rngs=rngs)
    # init_norm > 0: LayerNorm's scale starts at init_norm / sqrt(code_bits), so the head's vectors
    # start with norm ~init_norm instead of sqrt(code_bits) (the rerank logits' scale at the start).
    scale = init_norm / math.sqrt(code_bits) if init_norm else 1.0
    self.norm = nnx.LayerNorm(code_bits, epsilon=eps, dtype=jnp.float32, param_dtype=param_dtype,
                              scale_init=nnx.initializers.constant(scale), rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.norm(self.dense(x.astype(jnp.float32)))


class BertEncoder(nnx.Module):
  """BERT that maps token ids to one pooled float32 vector per sequence (+ optional code head)."""

  def __init__(self, config: BertConfig, *, pooling: str = "cls", dtype=jnp.float32,
               param_dtype=jnp.float32, remat: bool = False, attention: str = "auto",
               scan_layers: bool = False, code_bits: int = 0, code_head_norm: float = 0.0,
               rngs: nnx.Rngs):
    if pooling not in POOLINGS:
      raise ValueError(f"unknown pooling {pooling!r}; expected one of {POOLINGS}")
    if attention not in ATTENTION_IMPLS:
      raise ValueError(f"unknown attention {attention!r}; expected one of {ATTENTION_IMPLS}")
    if code_bits < 0:
      raise ValueError(f"code_bits must be >= 0 (0: no code head), got {code_bits}")
    self.config = config
    self.code_bits = int(code_bits)
    self.code_head = (CodeHead(config.hidden_size, code_bits, eps=config.layer_norm_eps,
                               init_norm=code_head_norm, param_dtype=param_dtype, rngs=rngs)
                      if code_bits else None)
    self.pooling = pooling
    self.dtype = dtype
    self.param_dtype = param_dtype
    self.remat = remat
    self.attention = attention
    self.scan_layers = scan_layers
    self.embeddings = BertEmbeddings(config, param_dtype=param_dtype, rngs=rngs)
    self.layers = nnx.List([
        BertLayer(config, dtype=dtype, param_dtype=param_dtype, attention=attention, rngs=rngs)
        for _ in range(config.num_hidden_layers)])

  def sequence_output(self, input_ids: jax.Array, attention_mask: jax.Array,
                      token_type_ids: jax.Array | None = None, *, deterministic: bool = True,
                      dropout_rng: jax.Array | None = None) -> jax.Array:
    """[B, L] int inputs -> last-layer hidden states [B, L, hidden] float32."""
    if not deterministic and dropout_rng is None:
      raise ValueError("deterministic=False needs a dropout_rng key")
    if input_ids.ndim != 2 or attention_mask.shape != input_ids.shape:
      raise ValueError(f"expected input_ids and attention_mask of the same shape [B, L]; got "
                       f"{input_ids.shape} and {attention_mask.shape}")
    if token_type_ids is None:
      token_type_ids = jnp.zeros_like(input_ids)
    rng = None if deterministic else dropout_rng
    num_layers = len(self.layers)
    keys = None if rng is None else jax.random.split(rng, num_layers + 1)
    x = self.embeddings(input_ids, token_type_ids, deterministic=deterministic,
                        rng=None if keys is None else keys[0])
    layer_keys = None if keys is None else keys[1:]

    def run_layer(layer: BertLayer, h: jax.Array, key: jax.Array | None) -> jax.Array:
      return layer(h, attention_mask, key, deterministic=deterministic)

    if self.scan_layers and num_layers > 1:
      x = self._scan(run_layer, x, layer_keys)
    else:
      step = nnx.remat(run_layer) if self.remat else run_layer
      for i, layer in enumerate(self.layers):
        x = step(layer, x, None if layer_keys is None else layer_keys[i])
    return x.astype(jnp.float32)

  def _scan(self, run_layer, x: jax.Array, layer_keys: jax.Array | None) -> jax.Array:
    """All layers as one lax.scan over their parameters, stacked here (the tree stays per layer)."""
    splits = [nnx.split(layer) for layer in self.layers]
    graphdef = splits[0][0]
    stacked = jax.tree.map(lambda *leaves: jnp.stack(leaves), *[state for _, state in splits])

    def body(h, xs):
      state, key = xs
      return run_layer(nnx.merge(graphdef, state), h, key), None

    if self.remat:
      body = jax.checkpoint(body)
    x, _ = jax.lax.scan(body, x, (stacked, layer_keys))
    return x

  def __call__(self, input_ids: jax.Array, attention_mask: jax.Array,
               token_type_ids: jax.Array | None = None, *, deterministic: bool = True,
               dropout_rng: jax.Array | None = None) -> jax.Array:
    """[B, L] int inputs -> pooled [B, output_dim] float32 ('cls' or masked 'mean', then the head)."""
    hidden = self.sequence_output(input_ids, attention_mask, token_type_ids,
                                  deterministic=deterministic, dropout_rng=dropout_rng)
    pooled = pool(hidden, attention_mask, self.pooling)
    return pooled if self.code_head is None else self.code_head(pooled)

  @property
  def output_dim(self) -> int:
    """Dimension of the vectors it returns: code_bits with a code head, else hidden_size."""
    return self.code_bits or self.config.hidden_size


def pool(hidden: jax.Array, attention_mask: jax.Array, pooling: str) -> jax.Array:
  """Pools [B, L, H] hidden states into [B, H] float32."""
  if pooling == "cls":
    return hidden[:, 0].astype(jnp.float32)
  if pooling == "mean":
    mask = attention_mask.astype(jnp.float32)[..., None]
    total = jnp.sum(hidden.astype(jnp.float32) * mask, axis=1)
    return total / jnp.maximum(jnp.sum(mask, axis=1), 1.0)
  raise ValueError(f"unknown pooling {pooling!r}; expected one of {POOLINGS}")
