"""Shape buckets for jitted functions.

A jitted function compiles once per input shape, so callers pad a varying
size (batch, sequence length, k) up to the next power of two: at most
log2(max) shapes are ever compiled.  Used by ``bpr_jax.search`` (rerank
blocks, k), ``bpr_jax.device_search`` (question batches) and the export
encoders' batch and length buckets.
"""
from __future__ import annotations


def next_pow2(n: int) -> int:
  """The smallest power of two >= ``n`` (1 for ``n <= 1``)."""
  return 1 << max(0, (int(n) - 1).bit_length())
