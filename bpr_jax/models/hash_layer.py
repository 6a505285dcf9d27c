"""The BPR hash layer (paper, Sec. 3.1).

Test time: h = sign(e), with sign(0) = +1.
Training: h~ = tanh(beta * e), beta = sqrt(gamma * step + 1), which approaches sign(e) as
training goes on (see `bpr_jax.schedules.hash_beta`).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def hash_sign(e: jax.Array) -> jax.Array:
  """Binary code in {-1, +1}: sign(e) with 0 mapped to +1."""
  return jnp.where(e >= 0, 1.0, -1.0).astype(e.dtype)


def hash_train(e: jax.Array, beta) -> jax.Array:
  """Differentiable approximation of sign: tanh(beta * e)."""
  return jnp.tanh(beta * e)
