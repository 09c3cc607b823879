"""Whole-volume ROI wrapper and the mass-effect extra."""

import dataclasses

import jax
import numpy as np

from dassemble_jax.synth import SynthConfig, synthesize_tumors, synthesize_tumors_roi
from tests.synth.toy import ellipsoid_liver

SPACING = (2.0, 2.0, 2.0)
CFG = SynthConfig().only_kind('medium', count=(2, 3))


def test_roi_wrapper_matches_the_generator_on_the_liver_box():
  ct, liver = ellipsoid_liver((40, 40, 40), SPACING, semi_mm=(20.0, 18.0, 22.0))
  big_ct = np.full((64, 56, 48), -500.0, np.float32)
  big_liver = np.zeros(big_ct.shape, bool)
  big_ct[20:60, 10:50, 4:44] = ct
  big_liver[20:60, 10:50, 4:44] = liver
  roi = (32, 32, 32)
  key = jax.random.key(11)
  new, geo, info = jax.device_get(synthesize_tumors_roi(key, big_ct, big_liver, SPACING, CFG, roi))
  s = info['roi_start']
  box = tuple(slice(a, a + r) for a, r in zip(s, roi))
  assert info['roi_covers_liver'] and info['valid']
  sub_new, sub_geo, sub_info = jax.device_get(
      synthesize_tumors(key, big_ct[box], big_liver[box], SPACING, CFG))
  np.testing.assert_array_equal(geo[box], sub_geo)
  np.testing.assert_allclose(new[box], sub_new, atol=1e-4)
  outside = np.ones(big_ct.shape, bool)
  outside[box] = False
  assert not geo[outside].any() and np.all(new[outside] == big_ct[outside])
  np.testing.assert_array_equal(info['centres'], sub_info['centres'] + s)


def test_mass_effect_pushes_tissue_outwards_and_keeps_the_label():
  ct, liver = ellipsoid_liver((40, 40, 40), SPACING, semi_mm=(38.0, 38.0, 38.0))
  x_mm = (np.arange(40) * SPACING[0]).astype(np.float32)
  ramp = np.where(liver, 60.0 + 2.0 * x_mm[:, None, None], ct).astype(np.float32)
  one = SynthConfig().only_kind('medium', count=(1, 1))
  variants = (one, dataclasses.replace(one, mass_effect_mm=3.0))
  f = jax.jit(lambda k: [synthesize_tumors(k, ramp, liver, SPACING, c) for c in variants])
  (plain, geo, info), (pushed, geo_m, _) = jax.device_get(f(jax.random.key(4)))
  np.testing.assert_array_equal(geo, geo_m)                # the label does not move
  assert np.all(pushed[~liver] == ramp[~liver])
  c = info['centres'][info['active']][0]
  # The first liver voxels just outside the tumor along x through its centre: along +x the tissue
  # came from smaller x (lower ramp values), so it is darker; along -x brighter.
  line = ~geo[:, c[1], c[2]] & liver[:, c[1], c[2]]
  plus = next(i for i in range(c[0], 40) if line[i])
  minus = next(i for i in range(c[0], -1, -1) if line[i])
  for i, sign in ((plus, -1), (minus, 1)):
    d = pushed[i, c[1], c[2]] - plain[i, c[1], c[2]]
    assert sign * d > 0.5, (i, c, d)
