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

Teacher distillation (off by default: `distill_weight = distill_cand_weight = 0`, `label_weight = 1`
is the paper's loss exactly). A float teacher scores the same B x P candidates, t = <t_q, t_p>
(computed in the train step from teacher vectors made once, `bpr_jax.teacher`); with temperature
T (student) and T_t (teacher, default T):

  KL_T(t || s) = T^2 * mean_i sum_j p_ij (log p_ij - log q_ij),
                 p_i = softmax(t_i / T_t),  q_i = softmax(s_i / T)

(`distill_loss`; the T^2 factor keeps the gradient's size independent of T, as Hinton et al. 2015;
the teacher side is under stop_gradient). `distill_similarity` is the scale both sides are read on:
'dot' compares inner products; 'cos' compares cosines, the teacher's cos(t_q, t_p) with the
student's cos(e_q, h~p) and cos(h~q, h~p) (`cosine_scores`), so one temperature fits both (a
sentence-transformers teacher's training scale, e.g. T = 0.05), whatever the code's length. The
cosine leaves each question's ranking unchanged (at test time |sign(e_p)| = sqrt(d) for every
passage). BPR with a teacher:

  L = label_weight * L_bpr + distill_weight * KL_T(t || <e_q, h~p>) + distill_cand_weight * KL_T(t || <h~q, h~p>)

(L_bpr the terms above; label_weight = 0 is the label-free objective: only the teacher supervises,
the positive column is then just one more candidate). DPR: label_weight * CE + distill_weight *
KL_T(t || <e_q, e_p>).

Nested codes (`nested_bits`, e.g. (128, 384, 768); empty: off): the loss above is computed on the
prefixes e[:, :n] of the question and passage vectors (so h~p[:, :n] = tanh(beta e_p[:, :n])) for
each n and averaged, L = mean_n L(n); the teacher scores are the same for every n. The logged
`cand`, `rerank` and distillation terms are averaged the same way; `scores` (ranking metrics) are
the largest prefix's.
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
  distill: jax.Array | float = 0.0       # KL_T(teacher || rerank scores <e_q, h~p>) (DPR: <e_q, e_p>)
  distill_cand: jax.Array | float = 0.0  # KL_T(teacher || candidate scores <h~q, h~p>)


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


def distill_loss(student_scores: jax.Array, teacher_scores: jax.Array, temperature: float = 1.0,
                 teacher_temperature: float | None = None) -> jax.Array:
  """KL_T(teacher || student) over each row's candidates, averaged over rows (module docstring).

  student_scores, teacher_scores: [B, P]. Returns T^2 * mean_i KL(softmax(t_i / T_t) ||
  softmax(s_i / T)); T_t defaults to T. No gradient flows into `teacher_scores`.
  """
  if temperature <= 0:
    raise ValueError(f"distillation temperature must be > 0, got {temperature}")
  t_temp = temperature if teacher_temperature is None or teacher_temperature <= 0 else teacher_temperature
  teacher = jax.lax.stop_gradient(teacher_scores.astype(jnp.float32))
  log_p = jax.nn.log_softmax(teacher / t_temp, axis=-1)
  log_q = jax.nn.log_softmax(student_scores.astype(jnp.float32) / temperature, axis=-1)
  kl = jnp.sum(jnp.exp(log_p) * (log_p - log_q), axis=-1)
  return temperature ** 2 * kl.mean()


def cosine_scores(a: jax.Array, b: jax.Array) -> jax.Array:
  """[A, B] cosines of the rows of a and b (zero rows score 0)."""
  norm = lambda x: x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)  # noqa: E731
  return norm(a) @ norm(b).T


def _student_scores(a: jax.Array, b: jax.Array, scores: jax.Array, similarity: str) -> jax.Array:
  """The student's scores on the distillation's scale: `scores` (= a @ b.T) for 'dot', cosines for 'cos'."""
  if similarity == "dot":
    return scores
  if similarity == "cos":
    return cosine_scores(a, b)
  raise ValueError(f"distill_similarity must be 'dot' or 'cos', got {similarity!r}")


def parse_nested_bits(value) -> tuple[int, ...]:
  """`nested_bits` as a tuple of ints: "128,384,768", "(128, 384)", a list/tuple, or "" (off).

  Raises ValueError (one line) unless every size is a positive multiple of 8 and they increase.
  """
  if isinstance(value, str):
    text = value.strip().strip("()[]").strip()
    parts = [x.strip() for x in text.split(",") if x.strip()] if text else []
    try:
      sizes = tuple(int(x) for x in parts)
    except ValueError:
      raise ValueError(f"nested_bits must be comma-separated bit counts such as '128,384,768', got {value!r}") from None
  else:
    sizes = tuple(int(x) for x in (value or ()))
  for n in sizes:
    if n <= 0 or n % 8:
      raise ValueError(f"nested_bits: each size must be a positive multiple of 8, got {n} in {value!r}")
  if any(b <= a for a, b in zip(sizes, sizes[1:])):
    raise ValueError(f"nested_bits: sizes must increase, got {value!r}")
  return sizes


def _check_options(cand_loss: str, terms: str, relaxation: str) -> None:
  if cand_loss not in CAND_LOSSES:
    raise ValueError(f"cand_loss must be one of {CAND_LOSSES}, got {cand_loss!r}")
  if terms not in LOSS_TERMS:
    raise ValueError(f"loss terms must be one of {LOSS_TERMS}, got {terms!r}")
  if relaxation not in RELAXATIONS:
    raise ValueError(f"relaxation must be one of {RELAXATIONS}, got {relaxation!r}")


def _nested(fn, q: jax.Array, p: jax.Array, nested_bits) -> LossOutput:
  """fn(q, p) -> LossOutput, averaged over the prefixes q[:, :n], p[:, :n] (module docstring)."""
  sizes = parse_nested_bits(nested_bits)
  if not sizes:
    return fn(q, p)
  d = min(q.shape[-1], p.shape[-1])
  if sizes[-1] > d:
    raise ValueError(f"nested_bits {sizes}: {sizes[-1]} is more than the code's {d} bits")
  outs = [fn(q[:, :n], p[:, :n]) for n in sizes]
  mean = lambda xs: sum(xs) / len(xs)
  return LossOutput(loss=mean([o.loss for o in outs]), cand=mean([o.cand for o in outs]),
                    rerank=mean([o.rerank for o in outs]), scores=outs[-1].scores,
                    saturation=outs[-1].saturation, distill=mean([o.distill for o in outs]),
                    distill_cand=mean([o.distill_cand for o in outs]))


def bpr_loss(q: jax.Array, pos: jax.Array, neg: jax.Array | None, beta, *, alpha: float = 2.0,
             cand_reduction: str = "mean", relaxation: str = "tanh", cand_loss: str = "margin",
             terms: str = "both", teacher_scores: jax.Array | None = None, label_weight: float = 1.0,
             distill_weight: float = 0.0, distill_cand_weight: float = 0.0, distill_temperature: float = 1.0,
             distill_teacher_temperature: float | None = None, distill_similarity: str = "dot",
             nested_bits=()) -> LossOutput:
  """L_cand + L_rerank of BPR on the global batch, plus the optional teacher terms and nested
  prefixes (see the module docstring). `teacher_scores`: [B, P], needed when a distillation
  weight is > 0. With the defaults this is the paper's loss exactly."""
  _check_options(cand_loss, terms, relaxation)
  distilling = distill_weight > 0 or distill_cand_weight > 0
  if distilling and teacher_scores is None:
    raise ValueError("a distillation weight is > 0 but no teacher scores were given")

  def one(q, p) -> LossOutput:
    q = q.astype(jnp.float32)
    p = p.astype(jnp.float32)
    hq, hp = hash_relaxed(q, beta, relaxation), hash_relaxed(p, beta, relaxation)
    cand_scores = hq @ hp.T
    if cand_loss == "margin":
      cand = candidate_loss(hq, hp, alpha=alpha, reduction=cand_reduction)
    else:
      cand = _cross_entropy(cand_scores)
    scores = q @ hp.T
    rerank = _cross_entropy(scores)
    loss = {"both": cand + rerank, "cand": cand, "rerank": rerank}[terms]
    distill = distill_cand = jnp.zeros((), jnp.float32)
    if distilling:
      loss = label_weight * loss
      if distill_weight > 0:
        distill = distill_loss(_student_scores(q, hp, scores, distill_similarity), teacher_scores,
                               distill_temperature, distill_teacher_temperature)
        loss = loss + distill_weight * distill
      if distill_cand_weight > 0:
        distill_cand = distill_loss(_student_scores(hq, hp, cand_scores, distill_similarity), teacher_scores,
                                    distill_temperature, distill_teacher_temperature)
        loss = loss + distill_cand_weight * distill_cand
    elif label_weight != 1.0:
      loss = label_weight * loss
    return LossOutput(loss, cand, rerank, scores, code_saturation(p, beta), distill, distill_cand)

  return _nested(one, q, _candidates(pos, neg), nested_bits)


def dpr_loss(q: jax.Array, pos: jax.Array, neg: jax.Array | None, *, teacher_scores: jax.Array | None = None,
             label_weight: float = 1.0, distill_weight: float = 0.0, distill_temperature: float = 1.0,
             distill_teacher_temperature: float | None = None, distill_similarity: str = "dot",
             nested_bits=()) -> LossOutput:
  """DPR baseline: in-batch + hard-negative softmax cross-entropy of <e_q, e_p> (plus the optional
  teacher term and nested prefixes of the module docstring)."""
  if distill_weight > 0 and teacher_scores is None:
    raise ValueError("distill_weight is > 0 but no teacher scores were given")

  def one(q, p) -> LossOutput:
    q = q.astype(jnp.float32)
    p = p.astype(jnp.float32)
    scores = q @ p.T
    ce = _cross_entropy(scores)
    loss, distill = ce, jnp.zeros((), jnp.float32)
    if label_weight != 1.0:
      loss = label_weight * loss
    if distill_weight > 0:
      distill = distill_loss(_student_scores(q, p, scores, distill_similarity), teacher_scores,
                             distill_temperature, distill_teacher_temperature)
      loss = loss + distill_weight * distill
    return LossOutput(loss, jnp.zeros_like(ce), ce, scores, 0.0, distill, 0.0)

  return _nested(one, q, _candidates(pos, neg), nested_bits)


def positive_rank(scores: jax.Array) -> jax.Array:
  """0-based rank of each row's positive (column i) among all columns; ties count against it."""
  b = scores.shape[0]
  positive = scores[jnp.arange(b), jnp.arange(b)][:, None]
  others = jnp.arange(scores.shape[1])[None, :] != jnp.arange(b)[:, None]
  return jnp.sum((scores >= positive) & others, axis=1)
