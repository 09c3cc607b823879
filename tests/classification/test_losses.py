"""Masked partial-label BCE against hand-computed values and a float64 NumPy version."""

import jax
import jax.numpy as jnp
import numpy as np

from dassemble_jax.classification import losses


def test_hand_computed_values():
  logits = jnp.array([[0.0, 2.0], [-1.0, 3.0]])
  targets = jnp.array([[1.0, 0.0], [0.0, 1.0]])
  known = jnp.array([[1.0, 0.0], [1.0, 1.0]])
  # Known entries: BCE(0, 1) = log 2; BCE(-1, 0) = log(1 + e^-1); BCE(3, 1) = log(1 + e^-3).
  expected = (np.log(2) + np.log1p(np.exp(-1)) + np.log1p(np.exp(-3))) / 3
  np.testing.assert_allclose(losses.masked_bce(logits, targets, known), expected, rtol=1e-6)


def test_all_unknown_rows_and_batch():
  logits = jnp.array([[5.0, -5.0], [1.0, 1.0]])
  targets = jnp.zeros((2, 2))
  known = jnp.array([[0.0, 0.0], [1.0, 0.0]])  # first row entirely unknown
  np.testing.assert_allclose(losses.masked_bce(logits, targets, known), np.log1p(np.e), rtol=1e-6)
  none = jnp.zeros((2, 2))
  value, grad = jax.value_and_grad(losses.masked_bce)(logits, targets, none)
  assert value == 0.0 and np.all(np.asarray(grad) == 0.0)


def test_matches_float64_numpy_and_is_stable():
  rng = np.random.default_rng(0)
  z = rng.normal(size=(17, 5)) * 30  # large logits: the naive formula overflows
  y = (rng.random((17, 5)) > 0.5).astype(np.float64)
  m = (rng.random((17, 5)) > 0.3).astype(np.float64)
  p = 1 / (1 + np.exp(-z.astype(np.float64)))
  with np.errstate(divide="ignore"):
    ref_terms = -(y * np.log(np.clip(p, 1e-300, 1)) + (1 - y) * np.log(np.clip(1 - p, 1e-300, 1)))
  # Where the float64 probability saturates, use the exact asymptote |z|.
  ref_terms = np.where(np.abs(z) > 30, np.where((z > 0) != (y > 0.5), np.abs(z), 0.0), ref_terms)
  ref = (ref_terms * m).sum() / m.sum()
  got = losses.masked_bce(jnp.asarray(z, jnp.float32), jnp.asarray(y), jnp.asarray(m))
  np.testing.assert_allclose(float(got), ref, rtol=1e-5)
  assert np.isfinite(float(got))
