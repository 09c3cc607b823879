"""Class bitmasks: the NumPy and jax packings agree, boxes of any layout.

(Packing against a per-class reference and boxes against per-channel ones, for bool and packed
masks of 5-40 classes: tests/segmentation/test_inference_speed_equivalence.py.)
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dassemble_jax.ct import bitmask, taxonomy


def test_bits_round_trip():
  rng = np.random.default_rng(0)
  channels = (rng.random((5, 4, 32)) < 0.3).astype(np.uint8)
  packed = bitmask.pack(channels)
  assert packed.dtype == np.uint32
  np.testing.assert_array_equal(bitmask.unpack(packed, dtype=np.uint8), channels)
  assert bitmask.unpack(packed).dtype == bool
  # Bit k is class id k + 1 (taxonomy.bit).
  one = np.zeros(32, bool)
  one[26] = True
  assert bitmask.pack(one) == taxonomy.bit(27)


@pytest.mark.parametrize("c", [1, 7, 20, 32])
def test_jax_pack_and_unpack_equal_numpy(c):
  rng = np.random.default_rng(c)
  masks = rng.random((3, 5, 4, 6, c)) < 0.4
  bits = bitmask.pack(masks)
  got = jax.jit(bitmask.pack_jax)(jnp.asarray(masks))
  assert got.dtype == jnp.uint32
  np.testing.assert_array_equal(np.asarray(got), bits)
  for dtype in (jnp.float32, jnp.uint8, jnp.bfloat16):
    y = jax.jit(bitmask.unpack_jax, static_argnums=(1, 2))(jnp.asarray(bits), c, dtype)
    assert y.dtype == dtype
    np.testing.assert_array_equal(np.asarray(y, np.float32), bitmask.unpack(bits, c))


def test_classes_beyond_the_bits_read_as_absent():
  bits = np.array([0xFFFFFFFF, 5], np.uint32)
  for k in (33, 40):
    host = bitmask.unpack(bits, k)
    device = np.asarray(bitmask.unpack_jax(jnp.asarray(bits), k))
    np.testing.assert_array_equal(device, host)
    assert not host[:, 32:].any() and host[0, :32].all()


def test_class_boxes_any_layout_and_a_single_mask():
  rng = np.random.default_rng(3)
  masks = np.zeros((9, 8, 7, 12), bool)
  masks[1:4, 2:5, 3:7, 0] = True
  masks[8, 0, 0, 5] = True
  masks[..., 11] = rng.random((9, 8, 7)) < 0.1
  want = [None] * 12
  for k in range(12):
    idx = np.nonzero(masks[..., k])
    if idx[0].size:
      want[k] = tuple(slice(int(i.min()), int(i.max()) + 1) for i in idx)
  bits = bitmask.pack(masks)
  for m in (masks, np.asfortranarray(masks), masks[:, :, :, ::-1][..., ::-1]):
    assert bitmask.class_boxes(m) == want
  for b in (bits, np.asfortranarray(bits), bits.astype(np.uint64)):
    assert bitmask.class_boxes(b, 12) == want
  assert bitmask.class_boxes(masks[..., 0][..., None])[0] == want[0]
  assert bitmask.class_boxes(np.zeros((0, 3, 3), np.uint32), 4) == [None] * 4
  with pytest.raises(ValueError, match="num_classes"):
    bitmask.class_boxes(bits)
  with pytest.raises(ValueError, match="unsigned"):
    bitmask.class_boxes(bits.astype(np.int32), 12)
