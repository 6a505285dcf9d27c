"""Schedules: the hash layer's annealed beta and the learning rate.

Both are pure functions of the number of finished optimizer steps.
"""
from __future__ import annotations

import jax.numpy as jnp
import optax


def hash_beta(step, gamma: float = 0.1):
  """beta = sqrt(gamma * step + 1) (paper, Sec. 3.1); `step` = finished optimizer steps."""
  return jnp.sqrt(gamma * jnp.asarray(step, jnp.float32) + 1.0)


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
