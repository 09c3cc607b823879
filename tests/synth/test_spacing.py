"""Counts, radii (mm) and the label at the generator level, at two spacings."""

import dataclasses

import jax
import numpy as np
import pytest

from dassemble_jax.synth import SynthConfig, synthesize_tumors
from tests.synth.toy import ellipsoid_liver


@pytest.mark.parametrize('spacing,shape', [((1.0, 1.0, 1.0), (48, 48, 48)),
                                           ((1.5, 1.5, 3.0), (48, 48, 24))])
def test_counts_radii_and_label_at_two_spacings(spacing, shape):
  """Rigid small tumors: the label is exactly the union of the analytic ellipsoids (mm) of the
  reported centres and semi-axes, clipped to the liver; counts and semi-axes in their ranges."""
  cfg = dataclasses.replace(SynthConfig().only_kind('small', count=(2, 4)), elastic_scale=0.0)
  ct, liver = ellipsoid_liver(shape, spacing, semi_mm=(22.0, 21.0, 23.0))
  keys = jax.random.split(jax.random.key(7), 3)
  f = jax.jit(jax.vmap(lambda k: synthesize_tumors(k, ct, liver, spacing, cfg)))
  _, geo, info = jax.device_get(f(keys))
  grids = [np.arange(n) * s for n, s in zip(shape, spacing)]
  for i in range(len(keys)):
    act = info['active'][i]
    assert 2 <= act.sum() <= 4 and info['n_tumors'][i] == act.sum()
    semi = info['semi_axes_mm'][i][act]
    assert semi.min() >= 6.0 and semi.max() <= 10.0
    want = np.zeros(shape, bool)
    for centre, a in zip(info['centres'][i][act], semi):
      d = [(g - g[c]) / ax for g, c, ax in zip(grids, centre, a)]
      want |= (d[0][:, None, None] ** 2 + d[1][None, :, None] ** 2
               + d[2][None, None, :] ** 2) <= 1.0
    want &= liver
    np.testing.assert_array_equal(geo[i], want)
