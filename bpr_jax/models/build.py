"""Building the bi-encoder from a training config: architecture, dropout, weights, shardings.

`build_biencoder` gives (BiEncoder, params) with the params born sharded on the mesh: random
initialisation, or weights from a Hugging Face BERT dir or an exported model (`model.hf_dir`),
plus a fresh code head when `model.code_bits` asks for one the checkpoint lacks.
"""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from bpr_jax import parallel
from bpr_jax.models.bert import BertConfig, BertEncoder
from bpr_jax.models.biencoder import BiEncoder
from bpr_jax.tokenization import Tokenizer

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def bert_config_of(config: ml_collections.ConfigDict, tokenizer: Tokenizer) -> BertConfig:
  """Architecture of a randomly initialised encoder (model.init='random')."""
  arch = dict(config.model.bert)
  arch.setdefault("vocab_size", tokenizer.vocab_size)
  if arch.get("vocab_size", 0) <= 0:
    arch["vocab_size"] = tokenizer.vocab_size
  return BertConfig.from_dict(arch)


def _with_dropout(bert: BertConfig, dropout: float, attention_dropout: float | None = None) -> BertConfig:
  """`bert` with hidden dropout `dropout` and attention dropout `attention_dropout`.

  A negative `dropout` keeps the hidden rate; a negative (or None) `attention_dropout`
  follows `dropout` (or keeps the checkpoint's attention rate when both are negative).
  """
  rates = {}
  if dropout >= 0:
    rates["hidden_dropout_prob"] = rates["attention_probs_dropout_prob"] = dropout
  if attention_dropout is not None and attention_dropout >= 0:
    rates["attention_probs_dropout_prob"] = attention_dropout
  if not rates:
    return bert
  return BertConfig.from_dict({**bert.to_dict(), **rates})


def encoder_configs(config: ml_collections.ConfigDict, tokenizer: Tokenizer) -> BertConfig:
  """The BertConfig the encoders are built with (dropout from the config when set)."""
  if config.model.init == "hf":
    from bpr_jax.export_format import encoder_dir  # pylint: disable=import-outside-toplevel
    path = os.path.join(encoder_dir(config.model.hf_dir), "config.json")  # an export: its question encoder
    if not os.path.isfile(path):
      raise FileNotFoundError(f"{path}: model config not found (model.hf_dir)")
    bert = BertConfig.from_json(path)
  else:
    bert = bert_config_of(config, tokenizer)
  return _with_dropout(bert, config.model.dropout, config.model.get("attention_dropout", None))


def build_biencoder(config: ml_collections.ConfigDict, bert: BertConfig, *, load_weights: bool,
                    mesh, abstract: bool = False):
  """(BiEncoder, params) with params born sharded on `mesh` (or ShapeDtypeStructs if abstract)."""
  dtype = DTYPES[config.model.dtype]
  shared = config.model.shared_encoder
  code_bits = int(config.model.get("code_bits", 0))  # configs saved before the option have none

  def make(seed: int) -> BertEncoder:
    return BertEncoder(bert, pooling=config.model.pooling, dtype=dtype, remat=config.model.remat,
                       attention=config.model.get("attention", "auto"),
                       scan_layers=config.model.get("scan_layers", False), code_bits=code_bits,
                       code_head_norm=float(config.model.get("code_head_norm", 0.0)), rngs=nnx.Rngs(seed))

  def init():
    q = make(config.seed)
    p = None if shared else make(config.seed + 1)
    return BiEncoder.from_modules(q, p)

  biencoder, abstract_params = _abstract_init(init)
  shardings = parallel.param_shardings(abstract_params, mesh, config.model.param_sharding)
  if abstract:
    return biencoder, jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                                   abstract_params, shardings)
  if load_weights and config.model.init == "hf":
    from bpr_jax.export_format import encoder_dir  # pylint: disable=import-outside-toplevel
    from bpr_jax.models import hf
    # An exported dir (bpr.json) gives its two encoders; a HF BERT dir gives both.
    dirs = [encoder_dir(config.model.hf_dir, w) for w in (("question",) if shared else ("question", "passage"))]
    hosts, heads = {}, {}
    for path in dirs:
      if path not in hosts:
        module = hf.bert_from_state_dict(bert, hf.load_state_dict(path), pooling=config.model.pooling, dtype=dtype)
        if module.code_bits not in (0, code_bits):
          raise ValueError(f"{path} has a {module.code_bits}-dim code head but model.code_bits is {code_bits}")
        hosts[path] = jax.tree.map(np.asarray, BiEncoder.from_modules(module, None)[1]["shared"])
        heads[path] = module.code_bits

    def with_head(path, seed: int) -> dict:
      """The checkpoint's weights plus a freshly initialised code head (if asked and absent)."""
      if not code_bits or heads[path]:
        return hosts[path]
      return {**hosts[path], "code_head": jax.tree.map(np.asarray, nnx.split(make(seed).code_head)[1].to_pure_dict())}
    # Both fresh heads get the same initial weights when both encoders start from the same
    # checkpoint: the two towers then start as one function (as the two BERTs do), so <q, p> keeps
    # the checkpoint's similarity. Two independent random projections would make it noise.
    params = ({"shared": with_head(dirs[0], config.seed)} if shared else
              {"question": with_head(dirs[0], config.seed),
               "passage": with_head(dirs[-1], config.seed if dirs[-1] == dirs[0] else config.seed + 1)})
    return biencoder, parallel.host_to_global(params, shardings)
  params = jax.jit(lambda: init()[1], out_shardings=shardings)()
  return biencoder, params


def _abstract_init(init):
  """BiEncoder (graph definitions) and ShapeDtypeStructs of its params, allocating nothing."""
  out = {}

  def capture():
    biencoder, params = init()
    out["biencoder"] = biencoder
    return params
  abstract = jax.eval_shape(capture)
  return out["biencoder"], abstract
