"""Gaussian matrices and the texture against float64 SciPy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

from dassemble_jax.synth import SynthConfig, filters, texture


@pytest.mark.parametrize('n,sigma,radius', [(17, 2.0, 6), (16, 5.0, 15), (5, 3.0, 9), (15, 0.0, 3)])
def test_gaussian_matrix_matches_scipy_reflect(n, sigma, radius):
  x = np.random.default_rng(n).normal(size=n)
  m = np.asarray(jax.jit(filters.gaussian_matrix, static_argnums=(0, 2))(n, sigma, radius),
                 np.float64)
  if sigma == 0:
    want = x  # sigma -> 0 is the identity
  else:
    want = ndimage.gaussian_filter1d(x, sigma, mode='reflect', radius=radius)
  np.testing.assert_allclose(m @ x, want, atol=2e-6)


def test_gaussian_filter_3d_anisotropic_matches_scipy():
  x = np.random.default_rng(0).uniform(size=(15, 16, 9)).astype(np.float32)
  sig = np.array([2.0, 1.5, 0.7])
  rad = (6, 5, 2)
  got = np.asarray(jax.jit(filters.gaussian_filter, static_argnums=2)(x, sig, rad))
  want = x.astype(np.float64)
  for ax in range(3):
    want = ndimage.gaussian_filter1d(want, sig[ax], axis=ax, mode='reflect', radius=rad[ax])
  np.testing.assert_allclose(got, want, atol=1e-5)


def test_texture_matches_float64_reference():
  cfg = SynthConfig()
  spacing = (1.5, 1.5, 3.0)
  shape = (20, 18, 11)
  rng = np.random.default_rng(1)
  noise, bern = rng.uniform(size=(2,) + shape).astype(np.float32)
  params = texture.TextureParams(*[jnp.float32(v) for v in (9.0, 4.0, 0.2, 0.05, 0.52)])
  got = np.asarray(jax.jit(texture.make_texture, static_argnums=(3, 4))(
      noise, bern, params, spacing, cfg))
  want = texture.texture_numpy_reference(
      noise, bern, {'sigma_a_mm': 9.0, 'sigma_b_mm': 4.0, 'scale': 0.2, 'offset': 0.05, 'u0': 0.52},
      spacing, cfg)
  assert got.min() >= 0 and got.max() <= 1
  # A Bernoulli draw at a threshold can flip for values within float32 rounding: allow a few.
  close = np.abs(got - want) < 1e-4
  assert close.mean() > 0.99, close.mean()
  # Normalisation: the mean over b > threshold is u0 before clipping.
  assert abs(np.mean(want[want > 0.12 * 0.52 / want[want > 0].mean()]) - 0.52) < 0.2
