"""Binary passage codes: sign hashing and bit packing.

BPR represents a passage by h = sign(e), with sign(0) = +1, where e is the
passage encoder's d-dimensional output.  Codes are stored packed, 8 bits per
byte, using ``np.packbits(e >= 0, bitorder="big")``:

  bit j of a passage (j = 0 .. d-1) is byte ``j // 8``, bit ``7 - (j % 8)``
  (the most significant bit of byte 0 is dimension 0).

A set bit means +1 and a clear bit means -1.  At d = 768 this is 96 bytes per
passage.  This is the layout faiss binary indexes expect (they only require
that question and passage codes use the same layout, since Hamming distance is
a popcount of XOR); ``bpr_jax.device_search`` reads the same bytes as uint32
words on the device.

``binarize`` is h = sign(e) as float32 +-1 (the test-time hash layer, e.g. for
scoring <e_q, h_p> against unpacked codes); ``pack_codes`` stores the same
signs as bits and ``unpack_codes`` gives them back.
"""
from __future__ import annotations

import numpy as np


def _check_2d(x: np.ndarray, name: str) -> np.ndarray:
  x = np.asarray(x)
  if x.ndim != 2:
    raise ValueError(f"{name} must be 2-D [N, d], got shape {x.shape}")
  return x


def binarize(x: np.ndarray) -> np.ndarray:
  """Returns sign(x) as float32 +-1, with sign(0) = +1."""
  x = np.asarray(x)
  return np.where(x >= 0, np.float32(1.0), np.float32(-1.0)).astype(np.float32)


def pack_codes(emb: np.ndarray) -> np.ndarray:
  """Packs the signs of embeddings [N, d] into uint8 codes [N, d/8].

  ``d`` must be a multiple of 8.  NaN compares false with ``>= 0`` and becomes
  -1, so callers should reject NaN embeddings beforehand if that matters.
  """
  emb = _check_2d(emb, "embeddings")
  d = emb.shape[1]
  if d % 8:
    raise ValueError(f"code dimension must be a multiple of 8, got {d}")
  return np.packbits(emb >= 0, axis=1, bitorder="big")


def unpack_codes(codes: np.ndarray, d: int | None = None) -> np.ndarray:
  """Unpacks uint8 codes [N, d/8] into float32 +-1 vectors [N, d].

  ``d`` defaults to ``8 * codes.shape[1]``; a smaller ``d`` drops the trailing
  bits (it must then still lie inside the last byte).
  """
  codes = _check_2d(codes, "codes")
  if codes.dtype != np.uint8:
    raise ValueError(f"codes must be uint8, got {codes.dtype}")
  nbits = 8 * codes.shape[1]
  if d is None:
    d = nbits
  if not nbits - 8 < d <= nbits:
    raise ValueError(f"d={d} does not match codes of {codes.shape[1]} bytes")
  bits = np.unpackbits(codes, axis=1, count=d, bitorder="big")
  # 2 * bit - 1 without going through int arithmetic on a huge array.
  out = bits.astype(np.float32)
  out *= 2.0
  out -= 1.0
  return out


def pack_codes_jnp(emb):
  """`pack_codes` for a JAX array, to run inside a jitted function on the device.

  Same layout and sign(0) = +1 convention (NaN gives a clear bit, as ``>= 0`` is false):
  the result equals ``np.packbits(np.asarray(emb) >= 0, axis=1, bitorder="big")``.
  """
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  if emb.ndim != 2:
    raise ValueError(f"embeddings must be 2-D [N, d], got shape {emb.shape}")
  n, d = emb.shape
  if d % 8:
    raise ValueError(f"code dimension must be a multiple of 8, got {d}")
  bits = (emb >= 0).reshape(n, d // 8, 8).astype(jnp.uint8)
  weights = jnp.asarray([128, 64, 32, 16, 8, 4, 2, 1], jnp.uint8)
  return jnp.sum(bits * weights, axis=-1, dtype=jnp.uint8)
