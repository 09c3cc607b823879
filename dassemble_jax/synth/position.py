"""Where tumors go: the position prior of the anchor, with static shapes and no crash.

Anchor: a slice at a uniform fraction (0.3-0.7) of the liver's cranio-caudal extent, the liver
eroded in that slice (5 x 5), a random liver voxel there. Its failure mode is an empty slice (a
crash); here the slice moves to the nearest one with a candidate voxel, candidates fall back from
the eroded liver to the liver itself, and a liver below cfg.min_liver_voxels turns every slot off
(info['valid'] = False upstream) instead of raising.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from dassemble_jax.synth import draws, filters
from dassemble_jax.synth.config import SynthConfig


def _pool_axis(x: jax.Array, axis: int, r: int, erode: bool) -> jax.Array:
  """1D min (erode) or max (dilate) over a window of 2r+1 along one axis; outside = background."""
  if r <= 0:
    return x
  pad = [(0, 0)] * x.ndim
  pad[axis] = (r, r)
  xp = jnp.pad(x, pad, constant_values=False)
  n = x.shape[axis]
  out = None
  for s in range(2 * r + 1):
    part = jax.lax.slice_in_dim(xp, s, s + n, axis=axis)
    out = part if out is None else (out & part if erode else out | part)
  return out


def morph_inplane(mask: jax.Array, radius_mm: float, spacing: Sequence[float], cfg: SynthConfig,
                  erode: bool) -> jax.Array:
  """Erodes/dilates a bool mask by a square of radius_mm in the plane normal to cfg.cc_axis."""
  for ax in range(3):
    if ax != cfg.cc_axis:
      mask = _pool_axis(mask, ax, round(radius_mm / spacing[ax]), erode)
  return mask


def candidates(ct: jax.Array, liver: jax.Array, spacing: Sequence[float],
               cfg: SynthConfig) -> jax.Array:
  """Bool volume of voxels allowed as tumor centres (never empty when the liver is not)."""
  if cfg.near_surface_mm is not None:
    cand = liver & ~morph_inplane(liver, cfg.near_surface_mm, spacing, cfg, erode=True)
  else:
    cand = morph_inplane(liver, cfg.erosion_mm, spacing, cfg, erode=True)
  if cfg.avoid_vessels:
    # Vessels: liver voxels clearly brighter than the mean liver (contrast-enhanced CT).
    sp = jnp.asarray(spacing, jnp.float32)
    smooth = filters.gaussian_filter(ct, 1.0 / sp, [filters.kernel_radius(1.0 / s, 3.0)
                                                    for s in spacing])
    n = jnp.maximum(jnp.sum(liver), 1)
    mean = jnp.sum(jnp.where(liver, smooth, 0.0)) / n
    vessel = liver & (smooth > mean + cfg.vessel_hu_margin / cfg.hu_per_unit)
    near = vessel
    for ax in range(3):
      near = _pool_axis(near, ax, round(cfg.vessel_margin_mm / spacing[ax]), erode=False)
    cand = cand & ~near
  return jnp.where(jnp.any(cand), cand, liver)


def position_layout(shape: tuple[int, ...], n: int, cfg: SynthConfig) -> dict:
  """Shapes of the uniforms sample_centres consumes."""
  plane = 1
  for ax in range(3):
    plane *= shape[ax] if ax != cfg.cc_axis else 1
  return {'frac': (n,)}


def sample_centres(u: dict[str, jax.Array], liver: jax.Array, cand: jax.Array, n: int,
                   cfg: SynthConfig, voxel_bits: jax.Array) -> jax.Array:
  """(n, 3) int32 centres: slice by cranio-caudal fraction, then a uniform candidate voxel in it.

  u['frac']: (n,) uniforms; voxel_bits: (n, plane) uint32 random bits for the in-plane pick
  (plane = the product of the two in-plane sizes).
  """
  ax = cfg.cc_axis
  other = tuple(a for a in range(3) if a != ax)
  length = liver.shape[ax]
  idx = jnp.arange(length)
  liver_prof = jnp.any(liver, axis=other)       # (L,)
  cand_prof = jnp.any(cand, axis=other)         # (L,)
  lo = jnp.min(jnp.where(liver_prof, idx, length))
  hi = jnp.max(jnp.where(liver_prof, idx, -1))
  f = draws.between(u['frac'], *cfg.cc_fraction)
  ext = (hi - lo).astype(jnp.float32)
  target = lo + f * ext if cfg.cranial_is_high else hi - f * ext
  target = jnp.round(target)
  # Nearest slice holding a candidate (the anchor crashes on an empty slice).
  dist = jnp.abs(idx[None, :] - target[:, None]) + jnp.where(cand_prof, 0.0, 1e9)[None, :]
  sl = jnp.argmin(dist, axis=1)                 # (n,)
  planes = jnp.moveaxis(jnp.take(cand, sl, axis=ax), ax, 0)  # (n, A, B)
  flat = planes.reshape(n, -1)
  # The argmax of iid random numbers over the candidates is a uniform pick among them (equal
  # logits: no Gumbel transform needed). 32 bits make ties (first index wins) negligible.
  pick = jnp.argmax(jnp.where(flat, voxel_bits | jnp.uint32(1), jnp.uint32(0)), axis=-1)  # (n,)
  u, v = jnp.unravel_index(pick, planes.shape[1:])
  coords = [None, None, None]
  coords[ax] = sl
  coords[other[0]], coords[other[1]] = u, v
  return jnp.stack(coords, axis=-1).astype(jnp.int32)
