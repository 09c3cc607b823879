"""Packed masks: (X, Y, Z, C <= 32) bool as one (X, Y, Z) uint32 per voxel, bit k = class id k + 1.

The convention of the training records (`taxonomy.bit`). 8 times less memory than the bool
masks, so `predict` thresholds and packs on the device and only these cross to the host; the
post-processing (`postprocess.postprocess_bits`) and the label map work on them directly.
Up to 64 classes pack into uint64.
"""

from __future__ import annotations

import numpy as np

from dassemble_jax.ct import taxonomy

NUM_CLASSES = taxonomy.NUM_CLASSES


def bits_dtype(num_classes: int) -> np.dtype:
  """The unsigned integer type holding num_classes bits: uint32 up to 32, uint64 up to 64."""
  if num_classes > 64:
    raise ValueError(f"{num_classes} classes do not fit a 64-bit mask")
  return np.dtype(np.uint32 if num_classes <= 32 else np.uint64)


def pack_masks(masks: np.ndarray) -> np.ndarray:
  """(X, Y, Z, C) bool -> (X, Y, Z) uint32 (C <= 32) or uint64 (C <= 64), bit k = channel k."""
  masks = np.asarray(masks, bool)
  dtype = bits_dtype(masks.shape[-1])
  little = dtype.newbyteorder("<")
  if masks.shape[-1] == 8 * dtype.itemsize:  # C = 32 (or 64): the flat form is ~8x faster
    flat = np.packbits(np.ascontiguousarray(masks).reshape(-1), bitorder="little")
    return flat.view(little).reshape(masks.shape[:-1]).astype(dtype, copy=False)
  packed = np.packbits(masks, axis=-1, bitorder="little")  # (X, Y, Z, ceil(C / 8)) uint8
  if packed.shape[-1] != dtype.itemsize:
    width = [(0, 0)] * (packed.ndim - 1) + [(0, dtype.itemsize - packed.shape[-1])]
    packed = np.pad(packed, width)
  return np.ascontiguousarray(packed).view(little)[..., 0].astype(dtype, copy=False)


def unpack_bits(bits: np.ndarray, num_classes: int) -> np.ndarray:
  """(X, Y, Z) bitmask -> (X, Y, Z, num_classes) bool; the inverse of `pack_masks`."""
  bits = np.ascontiguousarray(bits, bits_dtype(num_classes).newbyteorder("<"))
  if num_classes == 8 * bits.itemsize:  # the flat form is ~3x faster
    flat = np.unpackbits(bits.view(np.uint8).reshape(-1), bitorder="little")
    return flat.reshape(bits.shape + (num_classes,)).view(bool)
  as_bytes = bits.view(np.uint8).reshape(bits.shape + (bits.itemsize,))
  out = np.unpackbits(as_bytes, axis=-1, count=num_classes, bitorder="little")
  return out.view(bool)


def bit_boxes(bits: np.ndarray, num_classes: int) -> list[tuple[slice, slice, slice] | None]:
  """Tight bounding box of every class of an (X, Y, Z) bitmask (None: absent), in two passes."""
  x, y, z = bits.shape
  if bits.size == 0:
    return [None] * num_classes
  xy = np.bitwise_or.reduce(bits, axis=2)                                  # (X, Y)
  projections = (np.bitwise_or.reduce(xy, axis=1), np.bitwise_or.reduce(xy, axis=0),
                 np.bitwise_or.reduce(bits.reshape(x * y, z), axis=0))     # (X,), (Y,), (Z,)
  boxes = []
  for k in range(num_classes):
    bit = bits.dtype.type(1) << bits.dtype.type(k)
    hits = [np.flatnonzero(p & bit) for p in projections]
    boxes.append(None if any(h.size == 0 for h in hits)
                 else tuple(slice(int(h[0]), int(h[-1]) + 1) for h in hits))
  return boxes


def draw_order(num_classes: int) -> list[int]:
  """Class ids in drawing order: organs by id, then lesions (a lesion shows over its organ)."""
  organs = [i for i in range(1, num_classes + 1) if i not in taxonomy.TUMOR_IDS]
  lesions = [i for i in range(1, num_classes + 1) if i in taxonomy.TUMOR_IDS]
  return organs + lesions


def _highest_bit(x: np.ndarray) -> np.ndarray:
  """1-based index of the highest set bit of uint32 values (0 for 0), as uint8.

  frexp's exponent of x > 0 is its bit length; float64 holds every uint32 exactly. Done in slabs
  of ~1M values, so the float64 temporaries stay small instead of 20 bytes per voxel.
  """
  out = np.empty(x.shape, np.uint8)
  flat_in, flat_out = x.reshape(-1), out.reshape(-1)
  step = 1 << 20
  for i in range(0, flat_in.size, step):
    flat_out[i:i + step] = np.frexp(flat_in[i:i + step].astype(np.float64))[1]
  return out


def bits_to_label_map(bits: np.ndarray, num_classes: int = NUM_CLASSES) -> np.ndarray:
  """(X, Y, Z) bitmask -> (X, Y, Z) uint8 ids, as `postprocess.masks_to_label_map`."""
  bits = np.asarray(bits)
  order = draw_order(num_classes)
  if order == sorted(order):
    # Every lesion id is above every organ id (taxonomy: lesions are 26..32), so the class
    # drawn last at a voxel is its highest set bit.
    if bits.dtype.itemsize <= 4:
      return _highest_bit(bits)
    high = (bits >> np.uint64(32)).astype(np.uint32)
    low = (bits & np.uint64(0xFFFFFFFF)).astype(np.uint32)
    return np.where(high != 0, _highest_bit(high) + np.uint8(32), _highest_bit(low))
  labels = np.zeros(bits.shape, np.uint8)
  for i in order:  # a taxonomy with lesions below organs: draw class by class
    labels[(bits & (bits.dtype.type(1) << bits.dtype.type(i - 1))) != 0] = i
  return labels
