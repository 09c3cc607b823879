"""On-device crop and augmentation of a host batch (jitted; per-sample randomness via vmap).

Input: the host batch of `crop_pipeline.make_ct_dataset` (windows of crop + 2 * jitter voxels, image
float16, label as a uint32 class bitmask). Output, channels last:
  image     (B, X, Y, Z, 1) float32
  label     (B, X, Y, Z, 32) label_dtype {0, 1}   channel k = universal class k + 1
  annotated (B, 32) label_dtype                   1 where the source annotates the class
  source    (B,) int32
The anchor's augmentations, each drawn per sample: random crop inside the window (the jitter),
zoom in by 1.3-1.5 (p 0.3, only where `zoom_ok`: the anchor zooms the MSD tasks), a 90-degree
rotation in the axial (x, y) plane (p 0.1, k in 1..3), intensity shift in [-0.1, 0.1] (p 0.2).
No flips: they would swap left and right organs. Labels are resampled by nearest neighbour on
the bitmask, so classes never blend; the unpacking happens last, on the cropped window only.

Labels come out as float32 by default: integer {0,1} labels invite `1 - y` underflows in
losses; pass label_dtype=jnp.uint8 to save memory.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from dassemble_jax.ct import bitmask, taxonomy


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
  crop_size: tuple[int, int, int] = (96, 96, 96)
  rot90_prob: float = 0.1
  shift_prob: float = 0.2
  shift: float = 0.1
  zoom_prob: float = 0.3
  zoom_range: tuple[float, float] = (1.3, 1.5)


def random_crop(x: jax.Array, start: jax.Array, size) -> jax.Array:
  """x (X, Y, Z) -> x[start : start + size] (one sample; vmapped over the batch)."""
  return jax.lax.dynamic_slice(x, start, size)


def _zoom_coords(n: int, factor: jax.Array) -> jax.Array:
  """Source coordinate of each output index for a zoom about the centre: c + (i - c) / f."""
  c = (n - 1) / 2.0
  return jnp.clip(c + (jnp.arange(n, dtype=jnp.float32) - c) / factor, 0.0, n - 1.0)


def zoom(x: jax.Array, factor: jax.Array, *, order: int) -> jax.Array:
  """Zooms one sample (X, Y, Z) about its centre by `factor` (> 1 enlarges, keeps the size).

  Separable: one 1D interpolation per axis, which for order=1 is exactly trilinear and for
  order=0 nearest neighbour (safe on bitmasks).
  """
  for axis, n in enumerate(x.shape):
    coords = _zoom_coords(n, factor)
    if order == 0:
      x = jnp.take(x, jnp.round(coords).astype(jnp.int32), axis=axis)
    else:
      lo = jnp.floor(coords).astype(jnp.int32)
      hi = jnp.minimum(lo + 1, n - 1)
      w = (coords - lo).astype(x.dtype)
      shape = [1] * x.ndim
      shape[axis] = n
      w = w.reshape(shape)
      x = jnp.take(x, lo, axis=axis) * (1 - w) + jnp.take(x, hi, axis=axis) * w
  return x


def rot90_axial(x: jax.Array, k: jax.Array) -> jax.Array:
  """Rotates one sample (X, Y, Z) by k * 90 degrees in the (x, y) plane; X must equal Y."""
  return jax.lax.switch(k, [lambda v, k=k: jnp.rot90(v, k, axes=(0, 1)) for k in range(4)], x)


def augment_batch(rng: jax.Array, batch: dict, cfg: AugmentConfig = AugmentConfig(), *,
                  label_dtype=jnp.float32) -> dict:
  """Crops and augments a host batch on the device; see the module docstring."""
  image = batch["image"].astype(jnp.float32)             # (B, Wx, Wy, Wz)
  label = batch["label"]                                  # (B, Wx, Wy, Wz) uint32
  b = image.shape[0]
  size = tuple(int(s) for s in cfg.crop_size)
  window = image.shape[1:]
  if any(w < s for w, s in zip(window, size)):
    raise ValueError(f"host window {window} is smaller than the crop {size}")
  k_crop, k_rot, k_rotk, k_zoom, k_zf, k_shift, k_sv = jax.random.split(rng, 7)

  # Random crop inside the window (the host left `jitter` voxels on each side).
  high = jnp.asarray([w - s + 1 for w, s in zip(window, size)], jnp.int32)
  starts = jax.random.randint(k_crop, (b, 3), 0, high)
  crop = jax.vmap(functools.partial(random_crop, size=size))
  image, label = crop(image, starts), crop(label, starts)

  # Zoom, only for samples whose source allows it.
  zoom_ok = batch.get("zoom_ok", jnp.ones((b,), jnp.uint8)).astype(bool)
  do_zoom = (jax.random.uniform(k_zoom, (b,)) < cfg.zoom_prob) & zoom_ok
  factor = jnp.where(do_zoom, jax.random.uniform(k_zf, (b,), minval=cfg.zoom_range[0],
                                                 maxval=cfg.zoom_range[1]), 1.0)
  image = jax.vmap(functools.partial(zoom, order=1))(image, factor)
  label = jax.vmap(functools.partial(zoom, order=0))(label, factor)

  # 90-degree rotation in the axial plane.
  if cfg.rot90_prob > 0:
    if size[0] != size[1]:
      raise ValueError(f"axial rotation needs a square axial crop, got {size}")
    k = jnp.where(jax.random.uniform(k_rot, (b,)) < cfg.rot90_prob,
                  jax.random.randint(k_rotk, (b,), 1, 4), 0)
    image = jax.vmap(rot90_axial)(image, k)
    label = jax.vmap(rot90_axial)(label, k)

  # Intensity shift.
  do_shift = jax.random.uniform(k_shift, (b,)) < cfg.shift_prob
  offset = jnp.where(do_shift, jax.random.uniform(k_sv, (b,), minval=-cfg.shift,
                                                  maxval=cfg.shift), 0.0)
  image = image + offset[:, None, None, None]

  return {
      "image": image[..., None],
      "label": bitmask.unpack_jax(label, taxonomy.NUM_CLASSES, label_dtype),
      # The packed form too: the fused heads + loss read one uint32 per voxel (XLA drops
      # whichever of the two the step does not use).
      "label_bits": label,
      "annotated": jnp.asarray(batch["annotated"]).astype(label_dtype),
      "source": jnp.asarray(batch["source"]).astype(jnp.int32),
  }


@functools.lru_cache(maxsize=16)
def make_augment_fn(cfg: AugmentConfig = AugmentConfig(), *, label_dtype=jnp.float32):
  """jax.jit(augment_batch) for a fixed config: fn(rng, batch) -> batch (cached per config, so
  callers share one compiled function)."""
  return jax.jit(functools.partial(augment_batch, cfg=cfg, label_dtype=label_dtype))


def host_to_device_fields(batch: dict) -> dict:
  """The host batch fields the device step needs (drops bookkeeping like centre_kind)."""
  return {k: np.asarray(batch[k]) for k in ("image", "label", "annotated", "source", "zoom_ok")}
