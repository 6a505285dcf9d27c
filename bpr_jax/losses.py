"""BPR and DPR losses on the GLOBAL batch.

Inputs are global arrays (under `jax.jit` with a data-sharded Mesh, XLA inserts the
all-gathers), so every question sees every passage of every device and host:

  q:   [B, d]      question [CLS] vectors e_q
  pos: [B, d]      positive passage vectors; question i's positive is pos[i]
  neg: [B * n, d]  hard negatives (n per question); may be empty (n = 0)

The candidate passages of every question are P = concat(pos, neg), i.e. B + B*n passages, of
which one is positive and the other P - 1 are (in-batch or hard) negatives.

BPR (Yamada et al. 2021, Sec. 3.2):
  L_cand   = sum_j max(0, -<h~q, h~p+> + <h~q, h~p_j> + alpha) over the P - 1 negatives j
  L_rerank = cross-entropy of softmax over <e_q, h~p_j>
  L        = L_cand + L_rerank
with h~ = tanh(beta * e). `cand_reduction='mean'` averages L_cand over all (question, negative)
pairs, as the authors' code that produced the paper's numbers (torch margin_ranking_loss);
`'sum'` sums over negatives and averages over questions, as the paper writes it.

Options of the authors' code (studio-ousia/bpr), defaults = the paper's method:
  relaxation  'tanh' | 'ste'      (`--use_ste`: forward sign, gradient of tanh; `models/hash_layer.py`)
  cand_loss   'margin' | 'ce'     (`--use_binary_cross_entropy_loss`: L_cand = CE of softmax <h~q, h~p_j>)
  terms       'both' | 'cand' | 'rerank'   (`--no_dense_loss` = 'cand', `--no_binary_loss` = 'rerank')

DPR (Karpukhin et al. 2020): cross-entropy of softmax over <e_q, e_p>.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from bpr_jax.models.hash_layer import RELAXATIONS, code_saturation, hash_relaxed

MODES = ("bpr", "dpr")  # the two training objectives (config.mode, bpr.json's mode)
CAND_REDUCTIONS = ("mean", "sum")
CAND_LOSSES = ("margin", "ce")
LOSS_TERMS = ("both", "cand", "rerank")


class LossOutput(NamedTuple):
  loss: jax.Array
  cand: jax.Array
  rerank: jax.Array
  scores: jax.Array  # [B, P] scores used for ranking metrics (L_rerank's logits, or DPR's)
  saturation: jax.Array | float = 0.0  # BPR: mean |tanh(beta e_p)| of the batch's passages


def _candidates(pos: jax.Array, neg: jax.Array | None) -> jax.Array:
  if neg is None or neg.shape[0] == 0:
    return pos
  return jnp.concatenate([pos, neg], axis=0)


def _cross_entropy(scores: jax.Array) -> jax.Array:
  labels = jnp.arange(scores.shape[0])
  return optax.softmax_cross_entropy_with_integer_labels(scores, labels).mean()


def candidate_loss(hq: jax.Array, hp: jax.Array, *, alpha: float, reduction: str = "mean") -> jax.Array:
  """L_cand: margin ranking of the positive (column i for row i) above every other column."""
  if reduction not in CAND_REDUCTIONS:
    raise ValueError(f"cand_reduction must be one of {CAND_REDUCTIONS}, got {reduction!r}")
  scores = hq @ hp.T  # [B, P]
  b, p = scores.shape
  positive = scores[jnp.arange(b), jnp.arange(b)][:, None]  # [B, 1]
  is_negative = jnp.arange(p)[None, :] != jnp.arange(b)[:, None]
  hinge = jnp.where(is_negative, jax.nn.relu(scores - positive + alpha), 0.0)
  if reduction == "mean":
    return hinge.sum() / (b * (p - 1))
  return hinge.sum(axis=1).mean()


def bpr_loss(q: jax.Array, pos: jax.Array, neg: jax.Array | None, beta, *, alpha: float = 2.0,
             cand_reduction: str = "mean", relaxation: str = "tanh", cand_loss: str = "margin",
             terms: str = "both") -> LossOutput:
  """L_cand + L_rerank of BPR on the global batch (see module docstring for the options)."""
  if cand_loss not in CAND_LOSSES:
    raise ValueError(f"cand_loss must be one of {CAND_LOSSES}, got {cand_loss!r}")
  if terms not in LOSS_TERMS:
    raise ValueError(f"loss terms must be one of {LOSS_TERMS}, got {terms!r}")
  if relaxation not in RELAXATIONS:
    raise ValueError(f"relaxation must be one of {RELAXATIONS}, got {relaxation!r}")
  q = q.astype(jnp.float32)
  p = _candidates(pos, neg).astype(jnp.float32)
  hq, hp = hash_relaxed(q, beta, relaxation), hash_relaxed(p, beta, relaxation)
  if cand_loss == "margin":
    cand = candidate_loss(hq, hp, alpha=alpha, reduction=cand_reduction)
  else:
    cand = _cross_entropy(hq @ hp.T)
  scores = q @ hp.T
  rerank = _cross_entropy(scores)
  loss = {"both": cand + rerank, "cand": cand, "rerank": rerank}[terms]
  return LossOutput(loss, cand, rerank, scores, code_saturation(p, beta))


def dpr_loss(q: jax.Array, pos: jax.Array, neg: jax.Array | None) -> LossOutput:
  """DPR baseline: in-batch + hard-negative softmax cross-entropy of <e_q, e_p>."""
  q = q.astype(jnp.float32)
  p = _candidates(pos, neg).astype(jnp.float32)
  scores = q @ p.T
  loss = _cross_entropy(scores)
  return LossOutput(loss, jnp.zeros_like(loss), loss, scores)


def positive_rank(scores: jax.Array) -> jax.Array:
  """0-based rank of each row's positive (column i) among all columns; ties count against it."""
  b = scores.shape[0]
  positive = scores[jnp.arange(b), jnp.arange(b)][:, None]
  others = jnp.arange(scores.shape[1])[None, :] != jnp.arange(b)[:, None]
  return jnp.sum((scores >= positive) & others, axis=1)
