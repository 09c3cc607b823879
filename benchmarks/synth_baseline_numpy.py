"""A fair NumPy/SciPy baseline of the synthetic liver-tumor generator (the same algorithm as
dassemble_jax.synth, reference/synthetic_tumors.md), for benchmarks/synth_benchmark.py.

Fair means: vectorised NumPy, scipy.ndimage filters (float32), and it generates only what it
needs, which NumPy can do and a static-shape JAX program cannot:
  - the in-plane erosion of the liver runs on the chosen slice only (as the anchor does);
  - each tumor is evaluated in its own box (the same analytic warped ellipsoid);
  - texture, edge blur and blending run on the bounding box of the tumors (grown by the filter
    radius), never on the whole volume; no precomputed textures (the anchor's 3.2 GB).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from dassemble_jax.synth.config import SynthConfig

_PLANES = ((0, 1), (1, 2), (0, 2))


def _bernstein(t):
  return ((1 - t) ** 2, 2 * t * (1 - t), t ** 2)


def _tumor_box(rng, kind, spacing, vol_shape, centre, cfg):
  """One warped ellipsoid: (mask in its box, box slices)."""
  semi = kind.radius_mm * rng.uniform(*cfg.axis_range, size=3)
  sigma = cfg.elastic_scale * rng.uniform(*kind.elastic_sigma_mm)
  room = 0.5 * (cfg.box_factor - cfg.axis_range[1]) * kind.radius_mm
  ctrl = np.clip(sigma * rng.standard_normal((3, 3, 3, 2)), -room, room)
  half = [int(math.ceil(cfg.box_factor * kind.radius_mm / s)) for s in spacing]
  lo = [max(c - h, 0) for c, h in zip(centre, half)]
  hi = [min(c + h + 1, n) for c, h, n in zip(centre, half, vol_shape)]
  # Coordinates (mm from the centre) as broadcastable 1D axes: the first plane warp depends on
  # axes 0 and 1 only, so it runs on a 2D grid; the later ones on the 3D box.
  axes = [((np.arange(a, b) - c) * s).astype(np.float32)
          for a, b, c, s in zip(lo, hi, centre, spacing)]
  q = [axes[0][:, None, None], axes[1][None, :, None], axes[2][None, None, :]]
  extent = [h * s for h, s in zip(half, spacing)]
  c32 = ctrl.astype(np.float32)
  for p, (u, v) in enumerate(_PLANES):
    bu = _bernstein(np.clip(0.5 * (q[u] / extent[u] + 1), 0, 1))
    bv = _bernstein(np.clip(0.5 * (q[v] / extent[v] + 1), 0, 1))
    du = dv = 0
    for i in range(3):
      du = du + bu[i] * (bv[0] * c32[p, i, 0, 0] + bv[1] * c32[p, i, 1, 0] + bv[2] * c32[p, i, 2, 0])
      dv = dv + bu[i] * (bv[0] * c32[p, i, 0, 1] + bv[1] * c32[p, i, 1, 1] + bv[2] * c32[p, i, 2, 1])
    q[u] = q[u] + du
    q[v] = q[v] + dv
  inside = (q[0] / semi[0]) ** 2 + (q[1] / semi[1]) ** 2 + (q[2] / semi[2]) ** 2 <= 1
  return inside, tuple(slice(a, b) for a, b in zip(lo, hi))


def _centre(rng, liver, spacing, cfg, extent):
  """Slice at a cranio-caudal fraction, in-plane eroded on that slice, a random voxel."""
  ax = cfg.cc_axis
  lo, hi, prof = extent
  f = rng.uniform(*cfg.cc_fraction)
  target = round(lo + f * (hi - lo)) if cfg.cranial_is_high else round(hi - f * (hi - lo))
  order = np.argsort(np.abs(np.arange(len(prof)) - target) + np.where(prof, 0, 1e9),
                     kind='stable')
  r = [int(round(cfg.erosion_mm / s)) for a, s in enumerate(spacing) if a != ax]
  for sl in order[:8]:  # the nearest slices holding liver; erosion may empty one
    plane = np.take(liver, sl, axis=ax)
    cand = ndimage.binary_erosion(plane, np.ones((2 * r[0] + 1, 2 * r[1] + 1), bool))
    if not cand.any():
      cand = plane
    idx = np.flatnonzero(cand)
    if idx.size:
      u, v = np.unravel_index(rng.choice(idx), plane.shape)
      c = [u, v]
      c.insert(ax, sl)
      return tuple(int(x) for x in c)
  return None


def synthesize_tumors_numpy(rng: np.random.Generator, ct: np.ndarray, liver: np.ndarray,
                            spacing, cfg: SynthConfig):
  """Returns (new_ct float32, tumor_mask bool, n_tumors)."""
  liver = liver.astype(bool)
  if liver.sum() < cfg.min_liver_voxels or rng.uniform() >= cfg.prob:
    return ct.astype(np.float32), np.zeros(ct.shape, bool), 0
  other = tuple(a for a in range(3) if a != cfg.cc_axis)
  prof = liver.any(axis=other)
  zs = np.flatnonzero(prof)
  extent = (zs[0], zs[-1], prof)
  choice = cfg.kind_choices[rng.integers(len(cfg.kind_choices))]
  geo = np.zeros(ct.shape, bool)
  n = 0
  for kind in cfg.kinds:
    if choice == 'mix':
      count = rng.integers(kind.mix_count[0], kind.mix_count[1] + 1)
    elif choice == kind.name:
      count = rng.integers(kind.count[0], kind.count[1] + 1)
    else:
      continue
    for _ in range(count):
      c = _centre(rng, liver, spacing, cfg, extent)
      if c is None:
        continue
      mask, box = _tumor_box(rng, kind, spacing, ct.shape, c, cfg)
      geo[box] |= mask
      n += 1
  geo &= liver
  if not geo.any():
    return ct.astype(np.float32), geo, 0

  # Texture, blur and blend on the tumors' bounding box grown by the blur radius.
  sp = np.asarray(spacing)
  grow = [int(cfg.gaussian_truncate * cfg.edge_blur_mm[1] / s + 1.5) for s in spacing]
  nz = np.nonzero(geo)
  box = tuple(slice(max(i.min() - g, 0), min(i.max() + g + 1, n_))
              for i, g, n_ in zip(nz, grow, ct.shape))
  shape = geo[box].shape
  sigma_a = rng.choice(cfg.texture_sigma_mm)
  sigma_b = rng.choice(cfg.texture_smooth_sigma_mm)
  a = ndimage.gaussian_filter(rng.random(shape, np.float32), sigma_a / sp,
                              truncate=cfg.gaussian_truncate, mode='reflect')
  prob = rng.uniform(*cfg.texture_scale) * (a - a.min()) / (a.max() - a.min()) \
      + rng.uniform(*cfg.texture_offset)
  b = (rng.random(shape, np.float32) < prob).astype(np.float32)
  b = ndimage.gaussian_filter(b, sigma_b / sp, truncate=cfg.gaussian_truncate, mode='reflect')
  over = b > cfg.texture_threshold
  tex = np.clip(rng.uniform(*cfg.texture_u0) * b / b[over].mean(), 0, 1)
  blur = ndimage.gaussian_filter(geo[box].astype(np.float32),
                                 rng.uniform(*cfg.edge_blur_mm) / sp,
                                 truncate=cfg.gaussian_truncate, mode='reflect')
  delta = rng.uniform(*cfg.hu_decrement) / cfg.hu_per_unit
  new = ct.astype(np.float32)  # a copy
  sub = new[box]
  new[box] = np.where(liver[box], sub - tex * blur * delta, sub)
  return new, geo, n
