"""The BPR hash layer (paper, Sec. 3.1).

Test time: h = sign(e), with sign(0) = +1: `hash_sign` on the device; on the host
`bpr_jax.codes.binarize` (+-1 floats) and `bpr_jax.codes.pack_codes` (packed bits, as indexes store them).
Training (`relaxation`):
  'tanh' (paper, default): h~ = tanh(beta * e), beta = sqrt(gamma * step + 1), which approaches
         sign(e) as training goes on (see `bpr_jax.schedules`);
  'ste':  straight-through estimator, the authors' `--use_ste`: the forward pass uses sign(e), the
         backward pass the gradient of tanh(beta * e).  With gamma = 0 (beta = 1) this is exactly
         the original code's option (forward sign, gradient of tanh(e)).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def hash_sign(e: jax.Array) -> jax.Array:
  """Binary code in {-1, +1} inside jitted code: sign(e) with 0 mapped to +1."""
  return jnp.where(e >= 0, 1.0, -1.0).astype(e.dtype)


def hash_train(e: jax.Array, beta) -> jax.Array:
  """Differentiable approximation of sign: tanh(beta * e)."""
  return jnp.tanh(beta * e)


def hash_ste(e: jax.Array, beta) -> jax.Array:
  """Straight-through sign: value sign(e) (0 -> +1), gradient d tanh(beta * e) / de."""
  soft = jnp.tanh(beta * e)
  return soft + jax.lax.stop_gradient(hash_sign(e) - soft)


RELAXATIONS = ("tanh", "ste")


def hash_relaxed(e: jax.Array, beta, relaxation: str = "tanh") -> jax.Array:
  """The training-time code of `relaxation` ('tanh' or 'ste', see the module docstring)."""
  if relaxation == "tanh":
    return hash_train(e, beta)
  if relaxation == "ste":
    return hash_ste(e, beta)
  raise ValueError(f"relaxation must be one of {RELAXATIONS}, got {relaxation!r}")


def code_saturation(e: jax.Array, beta) -> jax.Array:
  """Mean |tanh(beta * e)|: 1 when the relaxed codes equal sign(e), small when far from it."""
  return jnp.mean(jnp.abs(jnp.tanh(beta * e.astype(jnp.float32))))
