"""Mass effect (a paper-only extra): tissue around each tumor pushed radially outwards.

Each active tumor adds a radial displacement in its box: growing linearly inside the tumor's
mean radius R, decaying as (R / r)^2 outside (what an incompressible shell around an expanding
sphere does), tapered to zero at the box edge so boxes leave no seams. The CT is then resampled
at x - d(x) (pull-back, trilinear) inside the liver. Nothing outside the tumors' boxes moves.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from dassemble_jax.synth import shapes
from dassemble_jax.synth.config import SynthConfig


def displacement(centres: jax.Array, params: shapes.ShapeParams, vol_shape: tuple[int, ...],
                 spacing: Sequence[float], cfg: SynthConfig) -> jax.Array:
  """(3, X, Y, Z) float32 displacement in mm (sum over active tumors)."""
  slots = shapes.slot_kinds(cfg)
  field = jnp.zeros((3,) + tuple(vol_shape), jnp.float32)
  for k, kind in enumerate(cfg.kinds):
    idx = np.nonzero(slots == k)[0]
    if idx.size == 0:
      continue
    half = shapes.box_half(kind.radius_mm, spacing, cfg)
    box = tuple(min(2 * h + 1, d) for h, d in zip(half, vol_shape))
    edge = min(h * s for h, s in zip(half, spacing))
    idx = jnp.asarray(idx, jnp.int32)

    def add(i, f, idx=idx, half=half, box=box, edge=edge):
      def push(f):
        c = centres[idx[i]]
        start = jnp.clip(c - jnp.asarray(half), 0, jnp.asarray(vol_shape) - jnp.asarray(box))
        x = [(((start[ax] + jnp.arange(box[ax])) - c[ax]).astype(jnp.float32) * spacing[ax])
             .reshape([-1 if a == ax else 1 for a in range(3)]) for ax in range(3)]
        r = jnp.sqrt(x[0] ** 2 + x[1] ** 2 + x[2] ** 2)
        big_r = jnp.prod(params.semi_axes_mm[idx[i]]) ** (1.0 / 3.0)
        mag = cfg.mass_effect_mm * jnp.where(r < big_r, r / big_r,
                                             (big_r / jnp.maximum(r, 1e-6)) ** 2)
        mag = mag * jnp.clip(1.0 - r / edge, 0.0, 1.0)
        d = jnp.stack([jnp.broadcast_to(mag * xa / jnp.maximum(r, 1e-6), box) for xa in x])
        s3 = jnp.concatenate([jnp.zeros((1,), start.dtype), start])
        cur = jax.lax.dynamic_slice(f, s3, (3,) + box)
        return jax.lax.dynamic_update_slice(f, cur + d, s3)
      return jax.lax.cond(params.active[idx[i]], push, lambda f: f, f)

    field = jax.lax.fori_loop(0, idx.shape[0], add, field)
  return field


def warp(ct: jax.Array, disp_mm: jax.Array, spacing: Sequence[float]) -> jax.Array:
  """ct resampled at x - disp(x) (trilinear, edges clamped): tissue moves along disp."""
  grid = jnp.meshgrid(*[jnp.arange(n, dtype=jnp.float32) for n in ct.shape], indexing='ij')
  coords = [g - disp_mm[ax] / spacing[ax] for ax, g in enumerate(grid)]
  return jax.scipy.ndimage.map_coordinates(ct, coords, order=1, mode='nearest')
