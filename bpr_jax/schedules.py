"""Schedules: the hash layer's annealed beta and the learning rate.

Both are pure functions of the number of finished optimizer steps.
"""
from __future__ import annotations

import functools
from typing import Callable

import jax.numpy as jnp
import optax


def hash_beta(step, gamma: float = 0.1):
  """beta = sqrt(gamma * step + 1) (paper, Sec. 3.1); `step` = finished optimizer steps."""
  return jnp.sqrt(gamma * jnp.asarray(step, jnp.float32) + 1.0)


BETA_SCHEDULES = ("gamma", "final")


def gamma_for_final_beta(final_beta: float, total_steps: int) -> float:
  """The gamma with which sqrt(gamma * total_steps + 1) = final_beta (same sqrt shape, short runs)."""
  if final_beta < 1:
    raise ValueError(f"final_beta must be >= 1 (beta starts at 1), got {final_beta}")
  if total_steps <= 0:
    raise ValueError(f"total_steps must be positive, got {total_steps}")
  return (final_beta ** 2 - 1.0) / total_steps


def beta_schedule(kind: str = "gamma", *, gamma: float = 0.1, final_beta: float = 0.0,
                  total_steps: int | None = None) -> Callable:
  """step -> beta.

  'gamma' (paper): beta = sqrt(gamma * step + 1).
  'final': the same shape with gamma chosen so that beta reaches `final_beta` at `total_steps`,
           so a short run ends as saturated as a long one (the paper's runs end at beta ~43).
  """
  if kind == "gamma":
    return functools.partial(hash_beta, gamma=gamma)
  if kind == "final":
    if total_steps is None:
      raise ValueError("beta schedule 'final' needs the run's total steps")
    return functools.partial(hash_beta, gamma=gamma_for_final_beta(final_beta, total_steps))
  raise ValueError(f"beta schedule must be one of {BETA_SCHEDULES}, got {kind!r}")


def warmup_steps(total_steps: int, warmup_fraction: float) -> int:
  """Number of warm-up steps: `warmup_fraction` of the total, rounded down."""
  return int(total_steps * warmup_fraction)


def learning_rate_schedule(peak: float, total_steps: int, warmup_fraction: float = 0.06) -> optax.Schedule:
  """Linear warm-up from 0 to `peak` over `warmup_fraction` of the steps, then linear decay to 0.

  This is the schedule of DPR and BPR (transformers' get_linear_schedule_with_warmup):
  lr(s) = peak * s / w for s < w, and peak * (T - s) / (T - w) afterwards.
  """
  if total_steps <= 0:
    raise ValueError(f"total_steps must be positive, got {total_steps}")
  warm = warmup_steps(total_steps, warmup_fraction)
  decay = optax.linear_schedule(peak, 0.0, max(total_steps - warm, 1))
  if warm == 0:
    return decay
  return optax.join_schedules([optax.linear_schedule(0.0, peak, warm), decay], [warm])
