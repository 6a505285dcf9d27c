"""Training loop: sharded BPR / DPR training with checkpoints, metrics and validation.

`train_and_evaluate(config, workdir)` is what `python -m bpr_jax.main` runs. Re-running it
with the same workdir resumes from the last checkpoint (parameters, optimizer state and the
input pipeline's position). SIGTERM (preemption) saves a checkpoint and returns cleanly.
"""
from __future__ import annotations

import json
import math
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

from bpr_jax import checkpoints, codes, losses, parallel, schedules
from bpr_jax.data import pipeline
from bpr_jax.models.biencoder import BiEncoder, tokens_of
from bpr_jax.models.build import build_biencoder, encoder_configs
from bpr_jax.preemption import Preemption
from bpr_jax.run_config import (TrainingError, check_nested_bits, check_resume, save_run_info, total_train_steps,
                                validate_config)
from bpr_jax.tokenization import Tokenizer

# Called as hook(step, checkpointer) after each checkpoint is saved. Empty in normal runs;
# tests register fault injection here (e.g. a hard crash right after a checkpoint).
checkpoint_hooks: list = []


# ----------------------------------------------------------------------------- data and model


def _sync(name: str) -> None:
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)


def build_data(config: ml_collections.ConfigDict, workdir: str):
  """(tokenizer, train source, dev source or None), every record validated up front."""
  data = config.data
  if data.source == "tiny":
    from bpr_jax.data.tiny import make_tiny_dataset
    tiny_dir = os.path.join(workdir, "tiny_data")
    if jax.process_index() == 0:
      paths = make_tiny_dataset(tiny_dir, seed=data.tiny_seed)
    _sync("tiny_data")
    if jax.process_index() != 0:
      paths = make_tiny_dataset(tiny_dir, seed=data.tiny_seed)  # identical content, atomic writes
    train_path, dev_path, tokenizer_dir = paths["train"], paths["dev"], paths["vocab_dir"]
  else:
    train_path, dev_path = data.train_path, data.dev_path
    from bpr_jax.export_format import encoder_dir
    tokenizer_dir = data.tokenizer_dir or (config.model.hf_dir and encoder_dir(config.model.hf_dir))
  if not tokenizer_dir:
    raise ValueError("config: data.tokenizer_dir (or model.hf_dir) is required")
  tokenizer = Tokenizer.from_dir(tokenizer_dir)

  if data.source in ("tiny", "dpr_json"):
    from bpr_jax.data.dpr import DprJsonSource
    if not train_path:
      raise ValueError("config: data.train_path is required with data.source='dpr_json'")
    train = DprJsonSource(train_path, skip_invalid=data.skip_invalid)
    dev = DprJsonSource(dev_path, skip_invalid=data.skip_invalid) if dev_path else None
  elif data.source == "beir":
    from bpr_jax.data.beir import BeirSource
    if not data.beir_dir:
      raise ValueError("config: data.beir_dir is required with data.source='beir'")
    train = BeirSource(data.beir_dir, data.train_split, hard_negatives_json=data.hard_negatives_json or None)
    dev = (BeirSource(data.beir_dir, data.dev_split, hard_negatives_json=data.dev_hard_negatives_json or None)
           if data.dev_split else None)
  else:
    from bpr_jax.data.tfds.source import TfdsSource
    train = TfdsSource(data.tfds_name, split=data.train_split, data_dir=data.tfds_data_dir or None)
    dev = (TfdsSource(data.tfds_name, split=data.dev_split, data_dir=data.tfds_data_dir or None)
           if data.dev_split else None)
  logging.info("train data: %s, %d examples%s", train.name, len(train),
               f"; dev: {dev.name}, {len(dev)} examples" if dev is not None else "")
  return tokenizer, train, dev


def make_optimizer(config: ml_collections.ConfigDict, total_steps: int):
  """AdamW with linear warm-up/decay and global-norm clipping; (optimizer, lr schedule)."""
  o = config.optim
  lr = schedules.learning_rate_schedule(o.learning_rate, total_steps, o.warmup_fraction)

  def decay_mask(params):
    # No weight decay on biases and LayerNorm parameters (as DPR/BPR and BERT).
    return jax.tree_util.tree_map_with_path(
        lambda path, _: not any(getattr(k, "key", None) in ("bias", "scale") or "norm" in str(getattr(k, "key", "")).lower()
                                for k in path[-2:]), params)
  tx = optax.chain(
      optax.clip_by_global_norm(o.grad_clip) if o.grad_clip > 0 else optax.identity(),
      optax.adamw(lr, b1=o.b1, b2=o.b2, eps=o.adam_eps, weight_decay=o.weight_decay, mask=decay_mask))
  return tx, lr


# ----------------------------------------------------------------------------- steps


def compute_loss(biencoder: BiEncoder, params: dict, batch: dict, *, mode: str, beta, alpha: float,
                 cand_reduction: str, deterministic: bool, dropout_rng, relaxation: str = "tanh",
                 cand_loss: str = "margin", terms: str = "both", fuse_passages: bool = False,
                 num_shards: int | None = None, loss_options: dict | None = None) -> losses.LossOutput:
  """Encodes the global batch and returns the BPR or DPR loss (the single place both share).

  `fuse_passages`: positives and hard negatives go through the passage encoder as one batch
  (one forward, bigger matmuls); `num_shards` (default: all devices) keeps that batch's rows
  on the devices that hold them. `loss_options` (`loss_options(config)`): the teacher and nested-code
  arguments of the loss; the teacher's scores come from the batch's `teacher_*` vectors.
  """
  extra = dict(loss_options or {})
  similarity = extra.get("distill_similarity", "dot")
  if extra.get("distill_weight", 0) > 0 or extra.get("distill_cand_weight", 0) > 0:
    from bpr_jax.teacher import teacher_scores
    tp = batch["teacher_pos"]
    if "teacher_neg" in batch:
      tp = jnp.concatenate([tp, batch["teacher_neg"]], axis=0)
    extra["teacher_scores"] = teacher_scores(batch["teacher_q"], tp, similarity)
  kq = kp = kn = None
  if not deterministic:
    kq, kp, kn = jax.random.split(dropout_rng, 3)
  q = biencoder.encode_questions(params, tokens_of(batch, "q"), deterministic=deterministic, dropout_rng=kq)
  neg = None
  if fuse_passages and "neg_input_ids" in batch:
    pos, neg = biencoder.encode_passage_groups(
        params, [tokens_of(batch, "pos"), tokens_of(batch, "neg")],
        num_shards=jax.device_count() if num_shards is None else num_shards,
        deterministic=deterministic, dropout_rng=kp)
  else:
    pos = biencoder.encode_passages(params, tokens_of(batch, "pos"), deterministic=deterministic, dropout_rng=kp)
    if "neg_input_ids" in batch:
      neg = biencoder.encode_passages(params, tokens_of(batch, "neg"), deterministic=deterministic, dropout_rng=kn)
  if mode == "bpr":
    return losses.bpr_loss(q, pos, neg, beta, alpha=alpha, cand_reduction=cand_reduction,
                           relaxation=relaxation, cand_loss=cand_loss, terms=terms, **extra)
  return losses.dpr_loss(q, pos, neg, **extra)


def loss_options(config: ml_collections.ConfigDict) -> dict:
  """The teacher and nested-code arguments of the loss from config.loss ({} at the defaults, the
  paper's loss): label and distillation weights, temperatures, teacher similarity, nested_bits."""
  loss = config.loss
  out = {}
  nested = losses.parse_nested_bits(loss.get("nested_bits", ""))
  if nested:
    out["nested_bits"] = nested
  weight, cand_weight = loss.get("distill_weight", 0.0), loss.get("distill_cand_weight", 0.0)
  if weight > 0 or cand_weight > 0:
    out.update(distill_weight=weight, distill_temperature=loss.get("distill_temperature", 1.0),
               distill_teacher_temperature=loss.get("distill_teacher_temperature", 0.0) or None,
               distill_similarity=loss.get("distill_similarity", "dot"))
    if config.mode == "bpr":
      out["distill_cand_weight"] = cand_weight
  if loss.get("label_weight", 1.0) != 1.0:
    out["label_weight"] = loss.get("label_weight", 1.0)
  return out


def dropout_key(config: ml_collections.ConfigDict) -> jax.Array:
  """The run's dropout key: config.seed under config.rng_impl (each step folds its step number in).

  'rbg' / 'unsafe_rbg' draw the masks with XLA's RngBitGenerator, cheaper than threefry's
  counter hashing on CPU (benchmarks/train_speed.py --what=step, variant after_rbg); the masks differ,
  the distribution does not.
  """
  return jax.random.key(config.seed, impl=config.get("rng_impl", "threefry2x32"))


def make_beta_schedule(config: ml_collections.ConfigDict, total_steps: int | None = None):
  """step -> beta of the hash layer, from config.loss (see `schedules.beta_schedule`)."""
  return schedules.beta_schedule(config.loss.beta_schedule, gamma=config.loss.gamma,
                                 final_beta=config.loss.final_beta, total_steps=total_steps)


def make_train_step(biencoder: BiEncoder, tx, lr_schedule, config: ml_collections.ConfigDict,
                    total_steps: int | None = None):
  """The un-jitted train step: (state, batch, rng) -> (state, metrics)."""
  mode, alpha = config.mode, config.loss.alpha
  reduction = config.loss.cand_reduction
  options = dict(relaxation=config.loss.relaxation, cand_loss=config.loss.cand_loss, terms=config.loss.terms,
                 fuse_passages=config.model.get("fuse_passages", False))
  extra = loss_options(config)
  if extra:
    options["loss_options"] = extra
  distilling = extra.get("distill_weight", 0) > 0 or extra.get("distill_cand_weight", 0) > 0
  beta_of = make_beta_schedule(config, total_steps)

  def train_step(state, batch, rng):
    step = state["step"]
    beta = beta_of(step)
    dropout_rng = jax.random.fold_in(rng, step)

    def loss_fn(params):
      out = compute_loss(biencoder, params, batch, mode=mode, beta=beta, alpha=alpha, cand_reduction=reduction,
                         deterministic=False, dropout_rng=dropout_rng, **options)
      return out.loss, out

    (_, out), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    metrics = {"loss": out.loss, "loss_cand": out.cand, "loss_rerank": out.rerank, "beta": beta,
               "lr": lr_schedule(step), "grad_norm": optax.global_norm(grads),
               "train_avg_rank": jnp.mean(losses.positive_rank(out.scores).astype(jnp.float32))}
    if mode == "bpr":
      metrics["code_saturation"] = out.saturation
    if distilling:
      metrics["loss_distill"] = out.distill
      if mode == "bpr":
        metrics["loss_distill_cand"] = out.distill_cand
    return {"step": step + 1, "params": params, "opt_state": opt_state}, metrics
  return train_step


def make_eval_encode(biencoder: BiEncoder, config: ml_collections.ConfigDict):
  """(params, batch) -> (e_q, e_pos, e_neg), deterministic, for validation."""
  def encode(params, batch):
    q = biencoder.encode_questions(params, tokens_of(batch, "q"))
    pos = biencoder.encode_passages(params, tokens_of(batch, "pos"))
    neg = biencoder.encode_passages(params, tokens_of(batch, "neg"))
    return q, pos, neg
  return encode


def average_rank(q: np.ndarray, passages: np.ndarray, mode: str, beta: float | None = None) -> float:
  """Mean 0-based rank of question i's positive (row i of `passages`) among all `passages`.

  BPR ranks by the test-time score <e_q, sign(e_p)>, DPR by <e_q, e_p>, as DPR's/BPR's
  checkpoint selection does on the dev set.  With `beta`, BPR ranks by the training-time
  <e_q, tanh(beta e_p)> instead (the relaxed score, to show what binarisation costs).
  """
  if mode == "bpr" and beta is not None:
    passages = np.tanh(beta * passages.astype(np.float32))
  elif mode == "bpr":
    passages = codes.binarize(passages)
  ranks = losses.positive_rank(jnp.asarray(q @ passages.T))  # the train metric's rank, one definition
  return float(np.mean(np.asarray(ranks)))


def validate(encode_fn, params, dev_batches, mesh, mode: str, beta: float | None = None) -> dict:
  qs, poss, negs = [], [], []
  for local in dev_batches:
    valid = local.pop("neg_valid")
    batch = parallel.global_batch(local, mesh)
    q, pos, neg = encode_fn(params, batch)
    valid_all = parallel.to_host(parallel.global_batch({"v": valid}, mesh)["v"]).astype(bool)
    qs.append(parallel.to_host(q))
    poss.append(parallel.to_host(pos))
    negs.append(parallel.to_host(neg)[valid_all])
  if not qs:
    return {}
  q, pos = np.concatenate(qs), np.concatenate(poss)
  passages = np.concatenate([pos] + negs)
  out = {"dev_avg_rank": average_rank(q, passages, mode), "dev_questions": float(len(q)),
         "dev_passages": float(len(passages))}
  if mode == "bpr" and beta is not None:  # the same rank with the relaxed codes: the hash layer's gap
    out["dev_avg_rank_tanh"] = average_rank(q, passages, mode, beta=beta)
  return out


# ----------------------------------------------------------------------------- metrics


class MetricWriter:
  """TensorBoard event files + WORKDIR/metrics.jsonl, written by process 0 only."""

  def __init__(self, workdir: str):
    self.enabled = jax.process_index() == 0
    self._jsonl = None
    self._tb = None
    if self.enabled:
      from tensorboardX import SummaryWriter
      self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))
      self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a", encoding="utf-8")

  def write(self, step: int, metrics: dict) -> None:
    if not self.enabled:
      return
    clean = {k: float(v) for k, v in metrics.items()}
    for k, v in clean.items():
      self._tb.add_scalar(k, v, step)
    self._jsonl.write(json.dumps({"step": int(step), **clean}) + "\n")
    self._jsonl.flush()
    self._tb.flush()

  def close(self) -> None:
    if self.enabled:
      self._tb.close()
      self._jsonl.close()


class _Eta:
  """Time left, from the step rate since the first log: the first interval includes compiling
  (minutes for a large model), so its rate would inflate the ETA; until a second log it is '?'."""

  def __init__(self):
    self._since: tuple[float, int] | None = None  # (time, step) of the first log

  def seconds_left(self, now: float, step: int, total: int) -> float:
    if step >= total:
      return 0.0
    if self._since is None:
      self._since = (now, step)
    since_time, since_step = self._since
    if step <= since_step:
      return float("inf")
    return (total - step) * max(now - since_time, 0.0) / (step - since_step)


def _format_eta(seconds: float) -> str:
  if not math.isfinite(seconds):
    return "?"
  seconds = int(seconds)
  return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


# ----------------------------------------------------------------------------- the loop


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains (or resumes) and returns the last logged metrics."""
  validate_config(config)
  resuming = check_resume(config, workdir) is not None  # before any file in the workdir is written
  os.makedirs(workdir, exist_ok=True)
  mesh = parallel.make_mesh()
  logging.info("mesh: %d devices over %d processes (%s)", jax.device_count(), jax.process_count(),
               jax.devices()[0].platform)

  tokenizer, train_source, dev_source = build_data(config, workdir)
  bert = encoder_configs(config, tokenizer)
  check_nested_bits(config.loss.get("nested_bits", ""), config.model.code_bits or bert.hidden_size)
  token_cache_dir = pipeline.default_token_cache_dir(config.data.token_cache_dir, workdir)
  from bpr_jax import teacher as teacher_lib
  teacher = teacher_lib.for_training(config, train_source, workdir, process_index=jax.process_index(),
                                     sync=_sync if jax.process_count() > 1 else None)
  batches = pipeline.TrainBatches(
      train_source, tokenizer,
      pipeline.PipelineConfig(
          global_batch_size=config.batch_size, question_max_length=config.data.question_max_length,
          passage_max_length=config.data.passage_max_length, num_hard_negatives=config.data.num_hard_negatives,
          seed=config.seed, shuffle=True, shuffle_positives=config.data.shuffle_positives,
          pad_multiple=config.data.pad_multiple, token_cache_dir=token_cache_dir),
      process_index=jax.process_index(), process_count=jax.process_count(), teacher=teacher)
  total_steps = total_train_steps(config, batches.steps_per_epoch)
  tx, lr_schedule = make_optimizer(config, total_steps)
  if not resuming:  # config.json and bert_config.json describe the run's checkpoints: new runs only
    save_run_info(workdir, config, tokenizer, bert)

  ckpt = checkpoints.Checkpointer(workdir, keep=config.keep_checkpoints, save_every=config.checkpoint_every,
                                  async_save=config.async_checkpoints)
  latest = ckpt.latest_step()
  biencoder, params = build_biencoder(config, bert, load_weights=latest is None, mesh=mesh, abstract=latest is not None)
  if latest is None:
    # Explicit out_shardings: scalars such as Adam's count must live on the mesh (replicated),
    # not on one default device, or the jitted step gets arguments on incompatible devices.
    opt_shardings = jax.tree.map(lambda a: a.sharding, _abstract_opt_state(jax.eval_shape(tx.init, params), params, mesh))
    opt_state = jax.jit(tx.init, out_shardings=opt_shardings)(params)
    step0 = jax.device_put(np.zeros((), np.int32), parallel.replicated(mesh))
    state = {"step": step0, "params": params, "opt_state": opt_state}
  else:
    abstract_opt = jax.eval_shape(tx.init, params)
    abstract_state = {"step": jax.ShapeDtypeStruct((), jnp.int32, sharding=parallel.replicated(mesh)),
                      "params": params,
                      "opt_state": _abstract_opt_state(abstract_opt, params, mesh)}
    state, data_state = ckpt.restore(latest, abstract_state)
    expected = batches.fingerprint()
    mismatch = {k: (data_state.get(k), v) for k, v in expected.items() if data_state.get(k) != v}
    if mismatch:
      raise TrainingError(f"{workdir}: checkpoint {latest} was written for other data/settings "
                          f"(checkpoint vs now: {mismatch}); use a new workdir")
    logging.info("resumed from checkpoint %d in %s", latest, ckpt.directory)

  state_shardings = jax.tree.map(lambda x: x.sharding, state)
  beta_of = make_beta_schedule(config, total_steps)
  train_step = jax.jit(make_train_step(biencoder, tx, lr_schedule, config, total_steps),
                       in_shardings=(state_shardings, parallel.batch_sharding(mesh), parallel.replicated(mesh)),
                       out_shardings=(state_shardings, parallel.replicated(mesh)),
                       donate_argnums=(0,))
  eval_encode = jax.jit(make_eval_encode(biencoder, config))
  rng = dropout_key(config)

  writer = MetricWriter(workdir)
  start = int(jax.device_get(state["step"]))
  if start >= total_steps:
    logging.info("already trained: step %d of %d", start, total_steps)
  pending: list[dict] = []
  last: dict = {}
  t_last, step_last = time.time(), start
  eta = _Eta()
  step = start
  try:
    with Preemption(start) as preemption:
      for step_index, local in batches.iterate(start, total_steps, prefetch=config.prefetch):
        batch = parallel.global_batch(local, mesh)
        state, metrics = train_step(state, batch, rng)
        pending.append(metrics)
        step = step_index + 1
        is_last = step == total_steps
        is_log_step = step % config.log_every == 0 or is_last
        stop = preemption.should_stop(step, sync=is_log_step or ckpt.should_save(step))
        if is_log_step:
          last = _log(writer, pending, step, total_steps, config.batch_size, t_last, step_last, eta)
          pending, t_last, step_last = [], time.time(), step
        if dev_source is not None and config.eval_every > 0 and (step % config.eval_every == 0 or is_last):
          dev = validate(eval_encode, state["params"],
                         pipeline.eval_batches(dev_source, tokenizer, batch_size=config.batch_size,
                                               question_max_length=config.data.question_max_length,
                                               passage_max_length=config.data.passage_max_length,
                                               max_examples=config.eval_max_examples,
                                               process_index=jax.process_index(),
                                               process_count=jax.process_count(),
                                               pad_multiple=config.data.pad_multiple,
                                               token_cache_dir=token_cache_dir), mesh, config.mode,
                         beta=float(beta_of(step)))
          if dev:
            writer.write(step, dev)
            logging.info("step %d: dev average rank %.3f (%d questions, %d passages)", step,
                         dev["dev_avg_rank"], dev["dev_questions"], dev["dev_passages"])
            last.update(dev)
        if ckpt.should_save(step) or is_last or stop:
          if pending:  # never checkpoint parameters that came from a NaN loss
            last = _log(writer, pending, step, total_steps, config.batch_size, t_last, step_last, eta)
            pending, t_last, step_last = [], time.time(), step
          ckpt.save(step, state, {"next_step": step, **batches.fingerprint()}, force=True)
          for hook in checkpoint_hooks:
            hook(step, ckpt)
        if stop:
          logging.warning("preempted at step %d; checkpoint saved, exiting", step)
          break
  finally:
    ckpt.close()
    writer.close()
    pipeline.log_fallbacks(batches)
  last["step"] = step
  last["total_steps"] = total_steps  # main's end-of-run summary: finished or stopped early
  return last


def _abstract_opt_state(abstract_opt, params, mesh):
  """Shardings for optimizer state: leaves shaped like a param take that param's sharding."""
  by_shape = {}
  for p in jax.tree.leaves(params):
    by_shape.setdefault((p.shape, p.dtype), p.sharding)
  rep = parallel.replicated(mesh)
  return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=by_shape.get((a.shape, a.dtype), rep)),
                      abstract_opt)


def _log(writer: MetricWriter, pending: list[dict], step: int, total: int, batch_size: int,
         t_last: float, step_last: int, eta: "_Eta") -> dict:
  """Averages the metrics of the steps since the last log, checks for NaN, writes them."""
  host = jax.device_get(pending)
  averaged = {k: float(np.mean([m[k] for m in host])) for k in host[0]}
  if not all(math.isfinite(float(m["loss"])) for m in host):
    bad = next(step - len(host) + 1 + i for i, m in enumerate(host) if not math.isfinite(float(m["loss"])))
    raise TrainingError(f"loss is NaN/inf at step {bad}; stopping (no checkpoint written for it). "
                        "Lower optim.learning_rate or check the data.")
  now = time.time()
  averaged["examples_per_s"] = (step - step_last) * batch_size / max(now - t_last, 1e-9)
  writer.write(step, averaged)
  logging.info("step %d/%d (%.1f%%) loss %.4f cand %.4f rerank %.4f beta %.3f lr %.3g |g| %.3f %.1f ex/s ETA %s",
               step, total, 100.0 * step / total, averaged["loss"], averaged["loss_cand"], averaged["loss_rerank"],
               averaged["beta"], averaged["lr"], averaged["grad_norm"], averaged["examples_per_s"],
               _format_eta(eta.seconds_left(now, step, total)))
  return averaged
