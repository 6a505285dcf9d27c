"""Tests for bpr_jax.codes: sign hashing and the documented bit layout."""
import numpy as np
import pytest

from bpr_jax.codes import binarize, pack_codes, unpack_codes


def test_binarize_sign_zero_is_plus_one():
  x = np.array([[-2.0, -0.0, 0.0, 1e-9, -1e-9, 3.0]], dtype=np.float32)
  out = binarize(x)
  assert out.dtype == np.float32
  np.testing.assert_array_equal(out, [[-1, 1, 1, 1, -1, 1]])
  # The same rule for JAX arrays (the test-time hash layer applied to encoder outputs).
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  np.testing.assert_array_equal(binarize(jnp.asarray(x[0])), [-1, 1, 1, 1, -1, 1])


def test_pack_layout_is_big_endian_per_byte():
  # Bit j lives in byte j // 8 at bit 7 - j % 8.
  emb = -np.ones((1, 16), np.float32)
  emb[0, 0] = 1.0  # byte 0, MSB
  emb[0, 15] = 0.0  # byte 1, LSB (sign(0) = +1)
  codes = pack_codes(emb)
  assert codes.dtype == np.uint8 and codes.shape == (1, 2)
  assert codes.tolist() == [[0b1000_0000, 0b0000_0001]]
  rng = np.random.default_rng(0)
  e = rng.standard_normal((5, 64)).astype(np.float32)
  c = pack_codes(e)
  for j in range(64):
    bit = (c[:, j // 8] >> (7 - j % 8)) & 1
    np.testing.assert_array_equal(bit, (e[:, j] >= 0).astype(np.uint8))


def test_roundtrip_and_sizes():
  rng = np.random.default_rng(1)
  e = rng.standard_normal((7, 768)).astype(np.float32)
  c = pack_codes(e)
  assert c.shape == (7, 96)  # 96 bytes per passage at d=768
  np.testing.assert_array_equal(unpack_codes(c), binarize(e))
  assert unpack_codes(c).dtype == np.float32
  np.testing.assert_array_equal(unpack_codes(c, d=764), binarize(e)[:, :764])


def test_errors():
  with pytest.raises(ValueError, match="multiple of 8"):
    pack_codes(np.zeros((2, 12)))
  with pytest.raises(ValueError, match="2-D"):
    pack_codes(np.zeros(16))
  with pytest.raises(ValueError, match="uint8"):
    unpack_codes(np.zeros((2, 4), np.int32))
  with pytest.raises(ValueError, match="does not match"):
    unpack_codes(np.zeros((2, 4), np.uint8), d=40)


def test_pack_codes_jnp_matches_numpy_inside_jit():
  import jax
  import jax.numpy as jnp
  from bpr_jax.codes import pack_codes_jnp
  rng = np.random.default_rng(1)
  e = rng.standard_normal((7, 64)).astype(np.float32)
  e[0, :8] = [0.0, -0.0, 1e-30, -1e-30, np.nan, np.inf, -np.inf, 2.0]
  got = jax.jit(pack_codes_jnp)(jnp.asarray(e))
  assert got.dtype == jnp.uint8 and got.shape == (7, 8)
  np.testing.assert_array_equal(np.asarray(got), pack_codes(e))
  np.testing.assert_array_equal(np.asarray(got), np.packbits(e >= 0, axis=1, bitorder="big"))
  with pytest.raises(ValueError, match="multiple of 8"):
    pack_codes_jnp(jnp.zeros((2, 12)))
