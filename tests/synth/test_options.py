"""Options: scaled CT, capsule, probability."""

import dataclasses

import jax
import numpy as np
from scipy import ndimage

from dassemble_jax.synth import SynthConfig, synthesize_tumors
from tests.synth.toy import ellipsoid_liver

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
