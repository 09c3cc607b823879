"""Tumor shapes: elastically deformed ellipsoids drawn in fixed-size boxes, unioned into a volume.

Static shapes: every kind has a fixed number of slots (its largest possible count) and each slot a
validity flag. A slot is drawn in a box of fixed size (box_factor * radius, converted to voxels
by the spacing, cut to the volume), placed with dynamic_update_slice, so no shape depends on data.

Elastic deformation: the anchor warps a binary ellipsoid three times with elasticdeform (a random
displacement on a 3-point control grid in the planes (0,1), (1,2), (0,2), nearest-neighbour).
Here the same three plane warps are composed on the *coordinates* and the ellipsoid equation is
evaluated at the warped point: no resampling, no gather, one fused elementwise pass per box, and
the shape is the same family (a smooth random warp of an ellipsoid, control-point displacement
std sigma mm). Control displacements are smooth-blended with quadratic Bernstein weights (a convex
combination, so the displacement never exceeds its largest control value) and clipped so the
warped tumor always fits its box.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from dassemble_jax.synth import draws
from dassemble_jax.synth.config import SynthConfig

_PLANES = ((0, 1), (1, 2), (0, 2))  # the anchor's three elasticdeform passes


class ShapeParams(NamedTuple):
  """Random parameters of every slot; S = sum(cfg.max_counts())."""
  semi_axes_mm: jax.Array  # (S, 3) float32
  control_mm: jax.Array    # (S, 3 planes, 3, 3, 2) float32: control-point displacements
  active: jax.Array        # (S,) bool: slot holds a tumor
  kind_choice: jax.Array   # () int32: index into cfg.kind_choices


def slot_kinds(cfg: SynthConfig) -> np.ndarray:
  """(S,) int32, static: the index in cfg.kinds of each slot."""
  return np.concatenate([np.full(n, k, np.int32) for k, n in enumerate(cfg.max_counts())]
                        + [np.zeros(0, np.int32)])


def box_half(radius_mm: float, spacing: Sequence[float], cfg: SynthConfig) -> tuple[int, ...]:
  """Static half-size (voxels, per axis) of the box a tumor of nominal radius is drawn in."""
  return tuple(math.ceil(cfg.box_factor * radius_mm / s) for s in spacing)


def shape_layout(cfg: SynthConfig) -> dict[str, tuple[int, ...]]:
  """Shapes of the uniforms sample_shape_params consumes."""
  n = len(slot_kinds(cfg))
  return {'choice': (), 'counts': (len(cfg.kinds),), 'axes': (n, 3), 'sigma': (n,),
          'ctrl': (n, 3, 3, 3, 2)}


def sample_shape_params(u: dict[str, jax.Array], cfg: SynthConfig) -> ShapeParams:
  """Draws the kind choice, per-kind counts, semi-axes and elastic control points from uniforms."""
  slots = slot_kinds(cfg)
  n_slots = len(slots)
  choice = draws.randint(u['choice'], 0, len(cfg.kind_choices) - 1)

  # Per kind, the count range under each possible choice; the drawn choice selects one row.
  lo = np.zeros((len(cfg.kind_choices), len(cfg.kinds)), np.int32)
  hi = np.zeros_like(lo)
  for c, name in enumerate(cfg.kind_choices):
    for k, kind in enumerate(cfg.kinds):
      if name == 'mix':
        lo[c, k], hi[c, k] = kind.mix_count
      elif name == kind.name:
        lo[c, k], hi[c, k] = kind.count
  counts = draws.randint(u['counts'], jnp.asarray(lo)[choice], jnp.asarray(hi)[choice])
  first = np.cumsum([0] + list(cfg.max_counts()))[:-1]
  rank = np.arange(n_slots) - first[slots]  # position of a slot within its kind
  active = jnp.asarray(rank) < counts[slots]

  radius = np.array([k.radius_mm for k in cfg.kinds], np.float32)[slots]
  semi = radius[:, None] * draws.between(u['axes'], *cfg.axis_range)

  s_lo = np.array([k.elastic_sigma_mm[0] for k in cfg.kinds], np.float32)[slots]
  s_hi = np.array([k.elastic_sigma_mm[1] for k in cfg.kinds], np.float32)[slots]
  sigma = cfg.elastic_scale * draws.between(u['sigma'], s_lo, s_hi)
  # Each axis is moved by two of the three plane warps: half the room between the largest
  # ellipsoid and the box edge each keeps the warped tumor inside its box.
  room = (0.5 * (cfg.box_factor - cfg.axis_range[1]) * radius)[:, None, None, None, None]
  ctrl = jnp.clip(sigma[:, None, None, None, None] * draws.normal(u['ctrl']), -room, room)
  return ShapeParams(semi.astype(jnp.float32), ctrl.astype(jnp.float32), active,
                     choice.astype(jnp.int32))


def _bernstein(t):
  return ((1 - t) ** 2, 2 * t * (1 - t), t ** 2)


def render_tumor(centre: jax.Array, semi_mm: jax.Array, control_mm: jax.Array, half: tuple[int, ...],
                 box: tuple[int, ...], vol_shape: tuple[int, ...],
                 spacing: Sequence[float]) -> tuple[jax.Array, jax.Array]:
  """One tumor in its box. Returns (mask (box) bool, start (3,) int32: box corner in the volume).

  centre: (3,) int voxel index; semi_mm (3,); control_mm (3, 3, 3, 2); half/box/vol_shape static.
  """
  start = jnp.clip(centre - jnp.asarray(half), 0, jnp.asarray(vol_shape) - jnp.asarray(box))
  # Coordinates in mm relative to the centre, broadcast over the box.
  q = []
  for ax in range(3):
    x = ((start[ax] + jnp.arange(box[ax])) - centre[ax]).astype(jnp.float32) * spacing[ax]
    # Kept broadcastable (not materialised): the first plane warp then runs on a 2D grid.
    q.append(x.reshape([-1 if a == ax else 1 for a in range(3)]))
  extent = [max(h * s, 1e-6) for h, s in zip(half, spacing)]
  for p, (u, v) in enumerate(_PLANES):
    bu = _bernstein(jnp.clip(0.5 * (q[u] / extent[u] + 1.0), 0.0, 1.0))
    bv = _bernstein(jnp.clip(0.5 * (q[v] / extent[v] + 1.0), 0.0, 1.0))
    # Tensor-product blend of the 3 x 3 control displacements, written out elementwise: one
    # fused loop (an einsum here lowers to a slow batched dot on the CPU).
    du = dv = 0.0
    for i in range(3):
      ru = sum(bv[j] * control_mm[p, i, j, 0] for j in range(3))
      rv = sum(bv[j] * control_mm[p, i, j, 1] for j in range(3))
      du, dv = du + bu[i] * ru, dv + bu[i] * rv
    q[u], q[v] = q[u] + du, q[v] + dv
  r2 = sum(jnp.square(q[ax] / semi_mm[ax]) for ax in range(3))
  return jnp.broadcast_to(r2 <= 1.0, box), start.astype(jnp.int32)


def render_union(centres: jax.Array, params: ShapeParams, vol_shape: tuple[int, ...],
                 spacing: Sequence[float], cfg: SynthConfig) -> jax.Array:
  """Union of every active slot's tumor: (vol_shape) bool. centres: (S, 3) int32."""
  slots = slot_kinds(cfg)
  geo = jnp.zeros(vol_shape, jnp.bool_)
  for k, kind in enumerate(cfg.kinds):
    idx = np.nonzero(slots == k)[0]
    if idx.size == 0:
      continue
    half = box_half(kind.radius_mm, spacing, cfg)
    box = tuple(min(2 * h + 1, d) for h, d in zip(half, vol_shape))
    idx = jnp.asarray(idx, jnp.int32)

    def place(i, g, idx=idx, half=half, box=box):
      # lax.cond skips inactive slots on a single volume (most of the work for whole scans);
      # under vmap it becomes a select and every slot is drawn, as before.
      def draw(g):
        mask, start = render_tumor(centres[idx[i]], params.semi_axes_mm[idx[i]],
                                   params.control_mm[idx[i]], half, box, vol_shape, spacing)
        cur = jax.lax.dynamic_slice(g, start, box)
        return jax.lax.dynamic_update_slice(g, cur | mask, start)
      return jax.lax.cond(params.active[idx[i]], draw, lambda g: g, g)

    geo = jax.lax.fori_loop(0, idx.shape[0], place, geo)
  return geo
