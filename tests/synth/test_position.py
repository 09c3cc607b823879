"""The position prior: cranio-caudal fraction, erosion, near-surface shell, vessel avoidance."""

import jax
import numpy as np
import pytest
from scipy import ndimage

from dassemble_jax.synth import SynthConfig, draws, position
from tests.synth.toy import ellipsoid_liver

N = 64  # centres drawn per check


def _centres(liver, cfg, spacing, seed=0):
  plane = int(np.prod([n for ax, n in enumerate(liver.shape) if ax != cfg.cc_axis]))

  @jax.jit
  def f(key, liver):
    cand = position.candidates(np.zeros(liver.shape, np.float32), liver, spacing, cfg)
    u = draws.draw(key, position.position_layout(liver.shape, N, cfg))
    vox = draws.field_bits(jax.random.fold_in(key, 1), (N, plane))
    return cand, position.sample_centres(u, liver, cand, N, cfg, vox)
  cand, c = f(jax.random.key(seed), liver)
  return np.asarray(cand), np.asarray(c)


def _inplane_erosion(liver, r_vox, cc_axis=2):
  size = [2 * r + 1 for r in r_vox]
  size[cc_axis] = 1
  return ndimage.binary_erosion(liver, structure=np.ones(size, bool), border_value=0)


@pytest.mark.parametrize('cranial_is_high,cc_axis', [(True, 2), (False, 2), (True, 0)])
def test_lower_third_of_the_liver(cranial_is_high, cc_axis):
  spacing = (1.5, 1.5, 3.0)
  _, liver = ellipsoid_liver((40, 36, 24), spacing, semi_mm=(27.0, 24.0, 33.0))
  if cc_axis == 0:  # the same liver in (depth, height, width) layout
    liver, spacing = np.moveaxis(liver, 2, 0).copy(), (3.0, 1.5, 1.5)
  cfg = SynthConfig(cc_fraction=(0.0, 1 / 3), cranial_is_high=cranial_is_high, cc_axis=cc_axis)
  cand, c = _centres(liver, cfg, spacing)
  other = tuple(a for a in range(3) if a != cc_axis)
  zs = np.nonzero(liver.any(axis=other))[0]
  lo, hi = zs.min(), zs.max()
  third = (hi - lo) / 3
  assert np.all(liver[tuple(c.T)]) and np.all(cand[tuple(c.T)])
  if cranial_is_high:  # feet at low index: the lower third is at the bottom
    assert c[:, cc_axis].max() <= lo + third + 1
  else:
    assert c[:, cc_axis].min() >= hi - third - 1
  assert len(np.unique(c[:, list(other)], axis=0)) > N // 2  # spread, not one voxel


def test_candidates_are_the_inplane_eroded_liver_and_near_surface_the_shell():
  spacing = (1.0, 1.0, 2.0)
  _, liver = ellipsoid_liver((40, 40, 20), spacing, semi_mm=(17.0, 15.0, 18.0))
  cand, c = _centres(liver, SynthConfig(), spacing)
  np.testing.assert_array_equal(cand, _inplane_erosion(liver, (2, 2, 0)))  # anchor: 5 x 5
  cfg = SynthConfig(near_surface_mm=3.0, cc_fraction=(0.0, 1.0))
  cand, c = _centres(liver, cfg, spacing, seed=1)
  np.testing.assert_array_equal(cand, liver & ~_inplane_erosion(liver, (3, 3, 0)))
  assert np.all(cand[tuple(c.T)])


def test_vessel_avoidance_keeps_centres_away_from_bright_vessels():
  spacing = (1.0, 1.0, 1.0)
  ct, liver = ellipsoid_liver((40, 40, 32), spacing, semi_mm=(18.0, 18.0, 15.0))
  ct[18:22, :, :] += 120.0  # a bright vessel plane-tube through the liver
  cfg = SynthConfig(avoid_vessels=True, vessel_margin_mm=4.0, cc_fraction=(0.0, 1.0))

  @jax.jit
  def f(key):
    cand = position.candidates(ct, liver, spacing, cfg)
    u = draws.draw(key, position.position_layout(liver.shape, N, cfg))
    vox = draws.field_bits(jax.random.fold_in(key, 1), (N, liver.shape[0] * liver.shape[1]))
    return position.sample_centres(u, liver, cand, N, cfg, vox)
  c = np.asarray(f(jax.random.key(0)))
  assert np.all(np.abs(c[:, 0] - 19.5) >= 2 + 4 - 0.5)
