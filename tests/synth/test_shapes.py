"""Tumor shapes: radii in mm at two spacings, counts in their ranges, elastic warp in its box."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dassemble_jax.synth import SynthConfig, draws, shapes


def _analytic_ellipsoid(shape, spacing, centre, semi):
  grids = np.meshgrid(*[(np.arange(n) - c) * s for n, c, s in zip(shape, centre, spacing)],
                      indexing='ij')
  return sum((g.astype(np.float64) / a) ** 2 for g, a in zip(grids, semi)) <= 1.0


@pytest.mark.parametrize('spacing', [(1.0, 1.0, 1.0), (1.5, 1.5, 3.0)])
def test_rigid_ellipsoid_has_its_radii_in_mm(spacing):
  cfg = dataclasses.replace(SynthConfig().only_kind('small', count=(2, 2)), elastic_scale=0.0)
  shape = (40, 40, 24)
  params = jax.jit(lambda k: shapes.sample_shape_params(
      draws.draw(k, shapes.shape_layout(cfg)), cfg))(jax.random.key(3))
  semi = np.asarray(params.semi_axes_mm)
  assert np.all(semi >= 0.75 * 8.0) and np.all(semi <= 1.25 * 8.0)
  centres = jnp.asarray(np.tile([[20, 19, 12]], (len(semi), 1)), jnp.int32)
  slots = shapes.slot_kinds(cfg)
  small = np.nonzero(np.asarray(params.active))[0]
  assert len(small) == 2
  # One tumor at a time: deactivate every other slot.
  render = jax.jit(lambda c, p: shapes.render_union(c, p, shape, spacing, cfg))
  for s in small:
    p = params._replace(active=jnp.asarray(np.arange(len(slots)) == s))
    geo = np.asarray(render(centres, p))
    np.testing.assert_array_equal(geo, _analytic_ellipsoid(shape, spacing, (20, 19, 12), semi[s]))
    # Extent through the centre, in mm, is the diameter to within a voxel.
    lines = [geo[:, 19, 12], geo[20, :, 12], geo[20, 19, :]]
    for ax, line in enumerate(lines):
      ext = line.sum() * spacing[ax]
      assert abs(ext - 2 * semi[s, ax]) <= 2 * spacing[ax], (ax, ext, semi[s, ax])


def test_counts_and_axes_in_configured_ranges():
  cfg = SynthConfig()
  n = 400
  params = jax.jit(jax.vmap(lambda k: shapes.sample_shape_params(
      draws.draw(k, shapes.shape_layout(cfg)), cfg)))(jax.random.split(jax.random.key(0), n))
  slots = shapes.slot_kinds(cfg)
  active = np.asarray(params.active)
  choice = np.asarray(params.kind_choice)
  seen = set()
  for i in range(n):
    name = cfg.kind_choices[choice[i]]
    seen.add(name)
    for k, kind in enumerate(cfg.kinds):
      c = active[i, slots == k].sum()
      if name == 'mix':
        lo, hi = kind.mix_count
      elif name == kind.name:
        lo, hi = kind.count
      else:
        lo = hi = 0
      assert lo <= c <= hi, (name, kind.name, c)
  assert seen == set(cfg.kind_choices)
  radius = np.array([k.radius_mm for k in cfg.kinds])[slots]
  ratio = np.asarray(params.semi_axes_mm) / radius[None, :, None]
  assert ratio.min() >= 0.75 and ratio.max() <= 1.25
  assert ratio.min() < 0.76 and ratio.max() > 1.24  # the whole range is used


def test_elastic_tumor_stays_in_its_box_and_changes_shape():
  cfg = dataclasses.replace(SynthConfig().only_kind('large', count=(1, 1)), elastic_scale=3.0)
  spacing = (1.5, 1.5, 3.0)
  half = shapes.box_half(32.0, spacing, cfg)
  box = tuple(2 * h + 1 for h in half)
  shape = tuple(b + 10 for b in box)
  centre = jnp.asarray([s // 2 for s in shape], jnp.int32)
  params = jax.jit(lambda k: shapes.sample_shape_params(
      draws.draw(k, shapes.shape_layout(cfg)), cfg))(jax.random.key(5))
  mask, _ = jax.jit(shapes.render_tumor, static_argnums=(3, 4, 5, 6))(
      centre, params.semi_axes_mm[0], params.control_mm[0], half, box, tuple(shape), spacing)
  mask = np.asarray(mask)
  assert mask.sum() > 0
  # The box border is never reached: the clipped displacement keeps the tumor inside.
  for ax in range(3):
    assert not np.take(mask, 0, axis=ax).any() and not np.take(mask, -1, axis=ax).any()
  rigid = _analytic_ellipsoid(box, spacing, half, np.asarray(params.semi_axes_mm[0]))
  assert (mask != rigid).mean() > 0.005  # deformed
