"""The BPR hash layer (paper, Sec. 3.1).

Training: h~ = tanh(beta * e), beta = sqrt(gamma * step + 1), which approaches sign(e) as
training goes on (see `bpr_jax.schedules.hash_beta`).
Test time: h = sign(e), with sign(0) = +1, on the host: `bpr_jax.codes.binarize` (+-1 floats)
and `bpr_jax.codes.pack_codes` (packed bits, as indexes store them).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def hash_train(e: jax.Array, beta) -> jax.Array:
  """Differentiable approximation of sign: tanh(beta * e)."""
  return jnp.tanh(beta * e)
