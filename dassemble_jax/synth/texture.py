"""Tumor texture, generated for the volume or crop at hand (the anchor precomputes ten
420 x 300 x 320 float64 fields per worker and crops them: 3.2 GB and minutes of start-up).

uniform noise -> Gaussian (sigma_a) -> min-max rescaled to a probability field (scale, offset)
-> one Bernoulli sample -> Gaussian (sigma_b) -> T = clip(u0 * b / mean(b[b > threshold]), 0, 1).
Sigmas are in mm and converted per axis by the spacing; the choice among the configured sigmas is
traced (one kernel matrix per axis built from it), so every choice runs the same compiled code.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from dassemble_jax.synth import draws, filters
from dassemble_jax.synth.config import SynthConfig


class TextureParams(NamedTuple):
  sigma_a_mm: jax.Array  # ()
  sigma_b_mm: jax.Array  # ()
  scale: jax.Array       # ()
  offset: jax.Array      # ()
  u0: jax.Array          # ()


TEXTURE_LAYOUT = {'texture': (5,)}


def sample_texture_params(u: dict[str, jax.Array], cfg: SynthConfig) -> TextureParams:
  t = u['texture']
  sa = jnp.asarray(cfg.texture_sigma_mm, jnp.float32)
  sb = jnp.asarray(cfg.texture_smooth_sigma_mm, jnp.float32)
  return TextureParams(
      sigma_a_mm=sa[draws.randint(t[0], 0, len(cfg.texture_sigma_mm) - 1)],
      sigma_b_mm=sb[draws.randint(t[1], 0, len(cfg.texture_smooth_sigma_mm) - 1)],
      scale=draws.between(t[2], *cfg.texture_scale),
      offset=draws.between(t[3], *cfg.texture_offset),
      u0=draws.between(t[4], *cfg.texture_u0))


def radii(max_sigma_mm: float, spacing: Sequence[float], cfg: SynthConfig) -> tuple[int, ...]:
  """Static per-axis kernel radius (voxels) for sigmas up to max_sigma_mm."""
  return tuple(filters.kernel_radius(max_sigma_mm / s, cfg.gaussian_truncate) for s in spacing)


def make_texture(noise: jax.Array, bern_u: jax.Array, params: TextureParams,
                 spacing: Sequence[float], cfg: SynthConfig) -> jax.Array:
  """(X, Y, Z) float32 texture in [0, 1] from two uniform fields of that shape."""
  spacing_a = jnp.asarray(spacing, jnp.float32)
  a = filters.gaussian_filter(noise, params.sigma_a_mm / spacing_a,
                              radii(max(cfg.texture_sigma_mm), spacing, cfg))
  a_min, a_max = jnp.min(a), jnp.max(a)
  prob = params.scale * (a - a_min) / jnp.maximum(a_max - a_min, 1e-12) + params.offset
  b = (bern_u < prob).astype(jnp.float32)
  b = filters.gaussian_filter(b, params.sigma_b_mm / spacing_a,
                              radii(max(cfg.texture_smooth_sigma_mm), spacing, cfg))
  over = b > cfg.texture_threshold
  mean = jnp.sum(jnp.where(over, b, 0.0)) / jnp.maximum(jnp.sum(over), 1)
  return jnp.clip(params.u0 * b / jnp.maximum(mean, 1e-12), 0.0, 1.0)


def texture_numpy_reference(noise: np.ndarray, bern_u: np.ndarray, params: dict,
                            spacing: Sequence[float], cfg: SynthConfig) -> np.ndarray:
  """Float64 SciPy version of make_texture given the same uniforms (for tests)."""
  from scipy import ndimage  # pylint: disable=g-import-not-at-top
  sp = np.asarray(spacing, np.float64)
  ra = radii(max(cfg.texture_sigma_mm), spacing, cfg)
  rb = radii(max(cfg.texture_smooth_sigma_mm), spacing, cfg)
  a = noise.astype(np.float64)
  for ax in range(3):
    a = ndimage.gaussian_filter1d(a, params['sigma_a_mm'] / sp[ax], axis=ax, mode='reflect',
                                  radius=ra[ax]) if ra[ax] else a
  prob = params['scale'] * (a - a.min()) / (a.max() - a.min()) + params['offset']
  b = (bern_u < prob).astype(np.float64)
  for ax in range(3):
    b = ndimage.gaussian_filter1d(b, params['sigma_b_mm'] / sp[ax], axis=ax, mode='reflect',
                                  radius=rb[ax]) if rb[ax] else b
  over = b > cfg.texture_threshold
  return np.clip(params['u0'] * b / b[over].mean(), 0, 1)
