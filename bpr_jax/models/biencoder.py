"""Question and passage encoders as pure functions of a params pytree.

The train state holds params as plain nested dicts (`nnx.split` + `to_pure_dict`):
`{"question": ..., "passage": ...}`, or `{"shared": ...}` when one encoder serves both.
`BiEncoder` keeps the two NNX graph definitions and rebuilds the modules inside jit.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from bpr_jax.models.bert import BertEncoder


def split_module(model: BertEncoder) -> tuple[Any, dict]:
  """(graphdef, params as a pure dict) of one encoder."""
  graphdef, state = nnx.split(model)
  return graphdef, state.to_pure_dict()


@dataclasses.dataclass(frozen=True)
class BiEncoder:
  question_graphdef: Any
  passage_graphdef: Any
  shared: bool = False

  @classmethod
  def from_modules(cls, question: BertEncoder, passage: BertEncoder | None) -> tuple["BiEncoder", dict]:
    """Builds the wrapper and its params; `passage=None` shares the question encoder."""
    qdef, qparams = split_module(question)
    if passage is None:
      return cls(qdef, qdef, shared=True), {"shared": qparams}
    pdef, pparams = split_module(passage)
    return cls(qdef, pdef, shared=False), {"question": qparams, "passage": pparams}

  def question_params(self, params: dict) -> dict:
    return params["shared"] if self.shared else params["question"]

  def passage_params(self, params: dict) -> dict:
    return params["shared"] if self.shared else params["passage"]

  def question_module(self, params: dict) -> BertEncoder:
    return nnx.merge(self.question_graphdef, self.question_params(params))

  def passage_module(self, params: dict) -> BertEncoder:
    return nnx.merge(self.passage_graphdef, self.passage_params(params))

  def encode_questions(self, params: dict, tokens: dict, *, deterministic: bool = True,
                       dropout_rng: jax.Array | None = None) -> jax.Array:
    """e_q [B, d] float32 from tokens with keys input_ids, attention_mask, token_type_ids."""
    return self.question_module(params)(
        tokens["input_ids"], tokens["attention_mask"], tokens.get("token_type_ids"),
        deterministic=deterministic, dropout_rng=dropout_rng)

  def encode_passages(self, params: dict, tokens: dict, *, deterministic: bool = True,
                      dropout_rng: jax.Array | None = None) -> jax.Array:
    """e_p [B, d] float32."""
    return self.passage_module(params)(
        tokens["input_ids"], tokens["attention_mask"], tokens.get("token_type_ids"),
        deterministic=deterministic, dropout_rng=dropout_rng)

  def encode_passage_groups(self, params: dict, groups: list[dict], *, num_shards: int = 1,
                            deterministic: bool = True,
                            dropout_rng: jax.Array | None = None) -> list[jax.Array]:
    """One passage-encoder forward over several token groups (e.g. positives and negatives).

    Groups are right-padded to a common length and concatenated shard by shard: with rows
    sharded over `num_shards` devices, device d's rows of every group stay on device d.
    Returns one [rows_g, d] float32 array per group, in the order of `groups`.
    """
    length = max(g["input_ids"].shape[1] for g in groups)
    rows = [g["input_ids"].shape[0] for g in groups]
    shards = num_shards if all(r % num_shards == 0 for r in rows) else 1
    keys = ("input_ids", "attention_mask", "token_type_ids")

    def part(g: dict, key: str) -> jax.Array:
      x = g.get(key)
      if x is None:
        x = jnp.zeros_like(g["input_ids"])
      x = jnp.pad(x, ((0, 0), (0, length - x.shape[1])))
      return x.reshape(shards, x.shape[0] // shards, length)
    merged = {k: jnp.concatenate([part(g, k) for g in groups], axis=1).reshape(-1, length) for k in keys}
    out = self.encode_passages(params, merged, deterministic=deterministic, dropout_rng=dropout_rng)
    out = out.reshape(shards, -1, out.shape[-1])
    bounds = [0]
    for r in rows:
      bounds.append(bounds[-1] + r // shards)
    return [out[:, a:b].reshape(-1, out.shape[-1]) for a, b in zip(bounds[:-1], bounds[1:])]


def tokens_of(batch: dict, prefix: str) -> dict:
  """The `prefix_*` token arrays of a batch, without the prefix."""
  return {k[len(prefix) + 1:]: v for k, v in batch.items() if k.startswith(prefix + "_")
          and k[len(prefix) + 1:] in ("input_ids", "attention_mask", "token_type_ids")}
