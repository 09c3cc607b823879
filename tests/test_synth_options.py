"""Options: scaled CT, capsule, probability, and the whole-volume ROI wrapper."""

import dataclasses

import jax
import numpy as np
from scipy import ndimage

from dassemble_jax.synth import SynthConfig, synthesize_tumors, synthesize_tumors_roi
from dassemble_jax.synth.toy import ellipsoid_liver

SPACING = (2.0, 2.0, 2.0)
CFG = SynthConfig().only_kind('medium', count=(2, 3))


def test_scaled_ct_gets_the_same_decrement_in_its_units():
  ct, liver = ellipsoid_liver((40, 40, 40), SPACING, semi_mm=(34.0, 32.0, 36.0))
  scaled = np.clip((ct + 21.0) / 210.0, 0, 1)  # the anchor's [-21, 189] HU window
  cfg = dataclasses.replace(CFG, hu_per_unit=210.0, clip=(0.0, 1.0))
  key = jax.random.key(3)
  new_hu, geo_hu, info_hu = synthesize_tumors(key, ct, liver, SPACING, CFG)
  new_s, geo_s, info_s = synthesize_tumors(key, scaled, liver, SPACING, cfg)
  np.testing.assert_array_equal(np.asarray(geo_hu), np.asarray(geo_s))
  want = np.clip((np.asarray(new_hu) + 21.0) / 210.0, 0, 1)
  np.testing.assert_allclose(np.asarray(new_s), want, atol=2e-5)
  assert float(info_hu['hu_decrement']) == float(info_s['hu_decrement'])


def test_capsule_brightens_a_rim_and_prob_zero_changes_nothing():
  ct, liver = ellipsoid_liver((40, 40, 40), SPACING, semi_mm=(34.0, 32.0, 36.0))
  variants = (CFG, dataclasses.replace(CFG, capsule_hu=40.0), dataclasses.replace(CFG, prob=0.0))
  f = jax.jit(lambda k: [synthesize_tumors(k, ct, liver, SPACING, c) for c in variants])
  (plain, _, _), (caps, geo, _), (none, geo0, info0) = jax.device_get(f(jax.random.key(0)))
  extra = caps - plain                       # what the capsule adds, same key
  ring = liver & ~geo & ndimage.binary_dilation(geo)
  assert extra[ring].mean() > 10.0           # brighter just outside the tumor
  np.testing.assert_allclose(extra[geo], 0.0, atol=1e-3)   # not inside it
  far = liver & ~ndimage.binary_dilation(geo, iterations=4)
  np.testing.assert_allclose(extra[far], 0.0, atol=0.05)  # kernel tails at cube corners
  assert np.all(caps[~liver] == ct[~liver])
  assert not info0['applied'] and not info0['valid'] and not geo0.any()
  np.testing.assert_array_equal(none, ct)


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
