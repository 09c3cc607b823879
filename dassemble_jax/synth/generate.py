"""synthesize_tumors: the whole generator as one pure, jittable, vmappable function.

Usage inside a jitted training step (cfg and spacing static, one compile per run):

  synth = functools.partial(synthesize_tumors, spacing=(1., 1., 1.), cfg=cfg)
  ct, tumor, info = jax.vmap(synth)(jax.random.split(rng, batch), ct, liver)  # (B, X, Y, Z)

Steps (reference/synthetic_tumors.md): position prior -> deformed ellipsoids (static slots with
an `active` mask) -> union clipped to the liver -> texture for this volume -> edge blur -> HU
decrement -> label = the unblurred union; optional paper extras: vessel avoidance (position.py),
mass effect (mass_effect.py), capsule (below). An empty or too-small liver gives no tumor, the CT
unchanged and info['valid'] = False.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from dassemble_jax.synth import draws, filters, mass_effect, position, shapes, texture
from dassemble_jax.synth.config import SynthConfig


def _check(ct, liver, spacing):
  if ct.ndim != 3 or ct.shape != liver.shape:
    raise ValueError(f'ct and liver_mask must be 3D of one shape, got {ct.shape} and '
                     f'{liver.shape} (vmap for a batch)')
  if len(spacing) != 3 or min(spacing) <= 0:
    raise ValueError(f'spacing must be 3 positive numbers (mm), got {spacing}')


@functools.partial(jax.jit, static_argnames=('spacing', 'cfg'))
def synthesize_tumors(key: jax.Array, ct: jax.Array, liver_mask: jax.Array,
                      spacing: tuple[float, float, float], cfg: SynthConfig):
  """Inserts synthetic tumors into one CT volume or crop.

  Args:
    key: PRNG key.
    ct: (X, Y, Z) CT in HU, or scaled (cfg.hu_per_unit HU per unit).
    liver_mask: (X, Y, Z) bool/int, nonzero = liver.
    spacing: static voxel size in mm per axis (a tuple, hashable).
    cfg: static SynthConfig.

  Returns:
    new_ct: (X, Y, Z) ct.dtype.
    tumor_mask: (X, Y, Z) bool, the unblurred tumor union inside the liver (the label).
    info: dict of arrays: valid (), applied (), kind_choice (), n_tumors (), active (S,),
      slot_kind (S,), centres (S, 3), semi_axes_mm (S, 3), hu_decrement (), edge_sigma_mm (),
      texture_sigma_mm (), texture_smooth_sigma_mm ().
  """
  _check(ct, liver_mask, spacing)
  shape = tuple(ct.shape)
  liver = liver_mask.astype(jnp.bool_)
  n_slots = len(shapes.slot_kinds(cfg))
  layout = {'apply': (), 'edge': (), 'delta': (), **shapes.shape_layout(cfg),
            **position.position_layout(shape, n_slots, cfg), **texture.TEXTURE_LAYOUT}
  k_small, k_field, k_voxel = jax.random.split(key, 3)
  u = draws.draw(k_small, layout)
  noise = draws.field_uniform(k_field, (2,) + shape)  # texture noise + Bernoulli uniforms
  plane = math.prod(d for ax, d in enumerate(shape) if ax != cfg.cc_axis)
  voxel_bits = draws.field_bits(k_voxel, (n_slots, plane))  # in-plane centre picks

  # --- what and where -------------------------------------------------------------------------
  params = shapes.sample_shape_params(u, cfg)
  liver_ok = jnp.sum(liver) >= cfg.min_liver_voxels
  applied = u['apply'] < cfg.prob
  cand = position.candidates(ct.astype(jnp.float32), liver, spacing, cfg)
  centres = position.sample_centres(u, liver, cand, n_slots, cfg, voxel_bits)
  active = params.active & liver_ok & applied
  params = params._replace(active=active)

  # --- shape, clipped to the liver (anchor: geo = (sum of masks * liver) >= 1) ----------------
  geo = shapes.render_union(centres, params, shape, spacing, cfg) & liver

  # --- texture, edge blur, decrement ----------------------------------------------------------
  tex_params = texture.sample_texture_params(u, cfg)
  tex = texture.make_texture(noise[0], noise[1], tex_params, spacing, cfg)
  sp = jnp.asarray(spacing, jnp.float32)
  edge_sigma = draws.between(u['edge'], *cfg.edge_blur_mm)
  blur = filters.gaussian_filter(geo.astype(jnp.float32), edge_sigma / sp,
                                 texture.radii(cfg.edge_blur_mm[1], spacing, cfg))
  delta_hu = draws.between(u['delta'], *cfg.hu_decrement)
  change = tex * blur * (delta_hu / cfg.hu_per_unit)
  if cfg.capsule_hu:
    # A brighter rim just outside the tumor: a band of about capsule_mm around the union.
    near = filters.gaussian_filter(geo.astype(jnp.float32), cfg.capsule_mm / sp,
                                   texture.radii(cfg.capsule_mm, spacing, cfg))
    rim = jnp.where(geo, 0.0, jnp.minimum(1.0, 2.0 * near))
    change = change - rim * (cfg.capsule_hu / cfg.hu_per_unit)
  ct32 = ct.astype(jnp.float32)
  base = ct32
  if cfg.mass_effect_mm:
    disp = mass_effect.displacement(centres, params, shape, spacing, cfg)
    base = mass_effect.warp(ct32, disp, spacing)
  new_ct = jnp.where(liver, base - change, ct32)
  if cfg.clip is not None:
    new_ct = jnp.where(liver & (change != 0), jnp.clip(new_ct, *cfg.clip), new_ct)
  # Exactly the input where nothing was inserted (blurring an empty mask is zero anyway).
  any_tumor = jnp.any(geo)
  new_ct = jnp.where(any_tumor, new_ct, ct32)
  if jnp.issubdtype(ct.dtype, jnp.integer):  # HU stored as integers: round, do not truncate
    info_t = jnp.iinfo(ct.dtype)
    new_ct = jnp.clip(jnp.round(new_ct), info_t.min, info_t.max)
  new_ct = new_ct.astype(ct.dtype)

  info = {
      'valid': liver_ok & any_tumor,
      'liver_ok': liver_ok,
      'applied': applied,
      'kind_choice': params.kind_choice,
      'n_tumors': jnp.sum(active).astype(jnp.int32),
      'active': active,
      'slot_kind': jnp.asarray(shapes.slot_kinds(cfg)),
      'centres': centres,
      'semi_axes_mm': params.semi_axes_mm,
      'hu_decrement': delta_hu,
      'edge_sigma_mm': edge_sigma,
      'texture_sigma_mm': tex_params.sigma_a_mm,
      'texture_smooth_sigma_mm': tex_params.sigma_b_mm,
  }
  return new_ct, geo, info


def synthesize_batch(key: jax.Array, ct: jax.Array, liver_mask: jax.Array,
                     spacing: tuple[float, float, float], cfg: SynthConfig,
                     eligible: jax.Array | None = None):
  """The training-step entry point: tumors for a batch, only where allowed.

  Call inside the jitted train step (cfg and spacing are Python constants there):
    ct, tumor, info = synthesize_batch(jax.random.fold_in(rng, step), ct, liver, spacing, cfg,
                                       eligible=is_healthy_liver_source)
    labels = where(tumor, TUMOR, labels); known[:, TUMOR] |= eligible  # healthy: tumor known
  cfg.prob is the per-sample probability (the anchor: 0.9).

  Args:
    key: one PRNG key for the batch (split per sample here).
    ct: (B, X, Y, Z) CT (HU, or scaled with cfg.hu_per_unit).
    liver_mask: (B, X, Y, Z).
    eligible: (B,) bool, samples that may get tumors (healthy-liver sources); default all.

  Returns:
    (new_ct (B, X, Y, Z), tumor_mask (B, X, Y, Z) bool, info with a leading batch axis).
  """
  liver = liver_mask.astype(jnp.bool_)
  if eligible is not None:
    # An ineligible sample sees an empty liver: the generator's defined no-tumor path.
    liver = liver & eligible.astype(jnp.bool_)[:, None, None, None]
  keys = jax.random.split(key, ct.shape[0])
  return jax.vmap(lambda k, c, l: synthesize_tumors(k, c, l, spacing, cfg))(keys, ct, liver)


def liver_roi_start(liver: jax.Array, roi_shape: Sequence[int]) -> jax.Array:
  """(3,) int32 corner of a roi_shape box centred on the liver's bounding box, inside the volume."""
  starts = []
  for ax in range(3):
    other = tuple(a for a in range(3) if a != ax)
    prof = jnp.any(liver, axis=other)
    idx = jnp.arange(liver.shape[ax])
    lo = jnp.min(jnp.where(prof, idx, liver.shape[ax]))
    hi = jnp.max(jnp.where(prof, idx, 0))
    centre = jnp.where(hi >= lo, (lo + hi) // 2, liver.shape[ax] // 2)
    starts.append(jnp.clip(centre - roi_shape[ax] // 2, 0, liver.shape[ax] - roi_shape[ax]))
  return jnp.stack(starts).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=('spacing', 'cfg', 'roi_shape'))
def synthesize_tumors_roi(key: jax.Array, ct: jax.Array, liver_mask: jax.Array,
                          spacing: tuple[float, float, float], cfg: SynthConfig,
                          roi_shape: tuple[int, int, int]):
  """synthesize_tumors on a static-size box around the liver of a whole volume.

  Generates only what a whole scan needs: tumors, texture and blur live in the box (the liver of
  an abdominal CT fills a fraction of a 512 x 512 x 300 volume). Liver outside the box gets no
  tumor; info['roi_start'] and info['roi_covers_liver'] say where the box went and whether it held
  the whole liver. Centres are returned in whole-volume coordinates.
  """
  _check(ct, liver_mask, spacing)
  roi_shape = tuple(min(r, d) for r, d in zip(roi_shape, ct.shape))
  liver = liver_mask.astype(jnp.bool_)
  start = liver_roi_start(liver, roi_shape)
  ct_roi = jax.lax.dynamic_slice(ct, start, roi_shape)
  liver_roi = jax.lax.dynamic_slice(liver, start, roi_shape)
  new_roi, geo_roi, info = synthesize_tumors(key, ct_roi, liver_roi, spacing, cfg)
  new_ct = jax.lax.dynamic_update_slice(ct, new_roi, start)
  geo = jax.lax.dynamic_update_slice(jnp.zeros(ct.shape, jnp.bool_), geo_roi, start)
  info = dict(info, centres=info['centres'] + start, roi_start=start,
              roi_covers_liver=jnp.sum(liver_roi) == jnp.sum(liver))
  return new_ct, geo, info


def label_map(liver_mask, tumor_mask):
  """The anchor's label: 0 background, 1 liver, 2 tumor (works for numpy and jax arrays)."""
  xp = jnp if isinstance(liver_mask, jax.Array) else np
  return xp.where(tumor_mask, 2, xp.where(liver_mask != 0, 1, 0)).astype(xp.uint8)
