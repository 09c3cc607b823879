"""Class bitmasks: a voxel's set of classes as one unsigned int, bit k = class id k + 1.

The one home of this layout (`taxonomy.bit`): the training records store labels so, the
augmentation and the fused heads unpack them on the device, prediction packs its thresholds on the
device and post-processes, draws and writes the packed masks on the host.

* Host (NumPy): `pack`, `unpack`, `bits_dtype`, and `class_boxes` (every class's bounding box, of
  (X, Y, Z, C) bool masks or of a packed (X, Y, Z) bitmask).
* Device (jax, inside jitted programs): `pack_jax`, `unpack_jax`; equal to the NumPy pair
  (tests/ct/test_bitmask.py). They hold up to 32 classes (uint32: jax has no uint64 by default).

Classes beyond a mask's bit width read as absent, on both sides.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from dassemble_jax.ct import taxonomy

NUM_CLASSES = taxonomy.NUM_CLASSES
Box = tuple[slice, slice, slice]


# ---------------------------------------------------------------------------------------------
# Host (NumPy).


def bits_dtype(num_classes: int) -> np.dtype:
  """The unsigned integer type holding num_classes bits: uint32 up to 32, uint64 up to 64."""
  if num_classes > 64:
    raise ValueError(f"{num_classes} classes do not fit a 64-bit mask")
  return np.dtype(np.uint32 if num_classes <= 32 else np.uint64)


def pack(masks: np.ndarray) -> np.ndarray:
  """(..., C) bool -> (...,) uint32 (C <= 32) or uint64 (C <= 64), bit k = channel k."""
  masks = np.asarray(masks, bool)
  dtype = bits_dtype(masks.shape[-1])
  little = dtype.newbyteorder("<")
  if masks.shape[-1] == 8 * dtype.itemsize:  # C = 32 (or 64): the flat form is ~8x faster
    flat = np.packbits(np.ascontiguousarray(masks).reshape(-1), bitorder="little")
    return flat.view(little).reshape(masks.shape[:-1]).astype(dtype, copy=False)
  packed = np.packbits(masks, axis=-1, bitorder="little")  # (..., ceil(C / 8)) uint8
  if packed.shape[-1] != dtype.itemsize:
    width = [(0, 0)] * (packed.ndim - 1) + [(0, dtype.itemsize - packed.shape[-1])]
    packed = np.pad(packed, width)
  return np.ascontiguousarray(packed).view(little)[..., 0].astype(dtype, copy=False)


def unpack(bits: np.ndarray, num_classes: int = NUM_CLASSES, dtype=bool) -> np.ndarray:
  """(...,) bitmask -> (..., num_classes) `dtype` {0, 1}; the inverse of `pack`."""
  bits = np.ascontiguousarray(bits, bits_dtype(num_classes).newbyteorder("<"))
  if num_classes == 8 * bits.itemsize:  # the flat form is ~3x faster
    flat = np.unpackbits(bits.view(np.uint8).reshape(-1), bitorder="little")
    out = flat.reshape(bits.shape + (num_classes,))
  else:
    as_bytes = bits.view(np.uint8).reshape(bits.shape + (bits.itemsize,))
    out = np.unpackbits(as_bytes, axis=-1, count=num_classes, bitorder="little")
  return out.view(bool) if np.dtype(dtype) == bool else out.astype(dtype, copy=False)


def _spans(projection: np.ndarray) -> slice | None:
  hit = np.flatnonzero(projection)
  return slice(int(hit[0]), int(hit[-1]) + 1) if hit.size else None


def class_boxes(masks: np.ndarray, num_classes: int | None = None) -> list[Box | None]:
  """Tight bounding box (three slices) of every class, None for an absent class.

  `masks`: (X, Y, Z, C) bool, or a packed (X, Y, Z) bitmask (unsigned ints; then `num_classes`
  says how many bits to read). Two passes over the array serve every class: an OR over the
  axis that is contiguous in memory gives a plane (2 of the 3 projections), an OR over the other
  two axes the third. Bool masks with C a multiple of 8 are ORed as uint64 words, 8 classes at
  a time. (A single mask's box: `class_boxes(mask[..., None])[0]`.)
  """
  masks = np.asarray(masks)
  packed = masks.ndim == 3
  if packed:
    if masks.dtype.kind != "u":
      raise ValueError(f"a packed bitmask must be unsigned ints, got {masks.dtype}")
    if num_classes is None:
      raise ValueError("a packed bitmask needs num_classes")
    words, c = masks, num_classes
  else:
    c = masks.shape[-1]
    if num_classes not in (None, c):
      raise ValueError(f"masks {masks.shape} have {c} classes, not {num_classes}")
    words = masks.view(np.uint64) if (masks.flags.c_contiguous and c % 8 == 0 and masks.size
                                      ) else masks
  if masks.size == 0:
    return [None] * c
  # The fastest-varying spatial axis (z for C order, x for NIfTI's Fortran order).
  fast = min(range(3), key=lambda a: abs(masks.strides[a]))
  rest = [a for a in range(3) if a != fast]
  reduce = np.bitwise_or.reduce if words.dtype.kind == "u" else np.any
  plane = reduce(words, axis=fast)                                # (rest0, rest1[, words])
  projections = {rest[0]: reduce(plane, axis=1), rest[1]: reduce(plane, axis=0),
                 fast: reduce(words, axis=tuple(rest))}
  if packed:
    bits = [masks.dtype.type(1) << masks.dtype.type(k) for k in range(c)]
    test = lambda p, k: p & bits[k]
  else:
    projections = {a: p.view(bool) if p.dtype != bool else p for a, p in projections.items()}
    test = lambda p, k: p[:, k]
  boxes = []
  for k in range(c):
    box = []
    for axis in range(3):
      span = _spans(test(projections[axis], k))
      if span is None:
        break
      box.append(span)
    boxes.append(tuple(box) if len(box) == 3 else None)
  return boxes


# ---------------------------------------------------------------------------------------------
# Device (jax): the same layout inside compiled programs, up to 32 classes.

_JAX_BITS = 32


def pack_jax(masks: jax.Array) -> jax.Array:
  """(..., C <= 32) bool -> (...,) uint32, bit k = channel k (as `pack`)."""
  c = masks.shape[-1]
  if c > _JAX_BITS:
    raise ValueError(f"{c} classes do not fit a uint32 mask")
  weights = jnp.left_shift(jnp.uint32(1), jnp.arange(c, dtype=jnp.uint32))
  return jnp.sum(jnp.where(masks, weights, jnp.uint32(0)), axis=-1, dtype=jnp.uint32)


def unpack_jax(bits: jax.Array, num_classes: int = NUM_CLASSES, dtype=jnp.float32
               ) -> jax.Array:
  """(...,) uint32 -> (..., num_classes) `dtype` {0, 1} (as `unpack`; classes >= 32: 0)."""
  shifts = jnp.minimum(jnp.arange(num_classes, dtype=jnp.uint32), _JAX_BITS - 1)
  y = (bits.astype(jnp.uint32)[..., None] >> shifts) & jnp.uint32(1)
  if num_classes > _JAX_BITS:
    y = jnp.where(jnp.arange(num_classes) < _JAX_BITS, y, jnp.uint32(0))
  return y.astype(dtype)
