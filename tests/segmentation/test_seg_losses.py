"""Masked partial-label BCE + Dice: hand-computed values, a float64 NumPy reference, gradients."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dassemble_jax.segmentation import seg_losses

# Jitted once: op-by-op (eager) evaluation compiles every primitive separately and is slow.
_loss = jax.jit(seg_losses.partial_label_loss)
_grad = jax.jit(jax.grad(lambda z, y, m: _loss(z, y, m).total))


def _hand_example():
  """B=1, a 2x2x2 crop, C=2. Values worked out on paper below."""
  logits = np.zeros((1, 2, 2, 2, 2), np.float32)
  targets = np.zeros((1, 2, 2, 2, 2), np.float32)
  # Channel 0: z = 0 everywhere (s = 1/2); two positives, both in the first depth slice.
  targets[0, 0, 0, :, 0] = 1.0
  # Channel 1: z = ln 3 everywhere (s = 3/4); every voxel positive.
  logits[..., 1] = math.log(3.0)
  targets[..., 1] = 1.0
  return logits, targets


def test_hand_computed_values():
  logits, targets = _hand_example()
  # Channel 0: BCE = ln 2 per voxel. Dice over the whole crop: sum(s*y) = 1, sum(s) = 4,
  # sum(y) = 2 -> 1 - 2/7 = 5/7. (Per slice it would be (0.6 + 1.0)/2 = 0.8: the anchor's bug.)
  # Channel 1: BCE = -ln(3/4) per voxel. Dice: sum(s*y) = 6, sum(s) = 6, sum(y) = 8 ->
  # 1 - 12/15 = 1/5.
  bce0, dice0 = math.log(2.0), 5.0 / 7.0
  bce1, dice1 = math.log(4.0 / 3.0), 0.2
  both = _loss(jnp.asarray(logits), jnp.asarray(targets),
                                   jnp.array([[True, True]]))
  np.testing.assert_allclose(both.bce, (bce0 + bce1) / 2, rtol=1e-6)
  np.testing.assert_allclose(both.dice, (dice0 + dice1) / 2, rtol=1e-6)
  np.testing.assert_allclose(both.total, (bce0 + bce1 + dice0 + dice1) / 2, rtol=1e-6)
  assert float(both.num_pairs) == 2.0
  only0 = _loss(jnp.asarray(logits), jnp.asarray(targets),
                                    jnp.array([[1, 0]]))
  np.testing.assert_allclose(only0.bce, bce0, rtol=1e-6)
  np.testing.assert_allclose(only0.dice, dice0, rtol=1e-6)
  assert abs(float(only0.dice) - 0.8) > 0.05  # not the per-slice value


def _numpy_reference(z, y, m, smooth=1.0):
  """Independent float64 version written from the definition (not the stable form)."""
  z, y, m = z.astype(np.float64), y.astype(np.float64), m.astype(np.float64)
  s = 1.0 / (1.0 + np.exp(-z))
  bces, dices = [], []
  for b in range(z.shape[0]):
    for c in range(z.shape[-1]):
      if not m[b, c]:
        continue
      sb, yb = s[b, ..., c], y[b, ..., c]
      bces.append(np.mean(-(yb * np.log(sb) + (1 - yb) * np.log(1 - sb))))
      dices.append(1 - 2 * np.sum(sb * yb) / (np.sum(sb) + np.sum(yb) + smooth))
  if not bces:
    return 0.0, 0.0
  return float(np.mean(bces)), float(np.mean(dices))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_float64_numpy(seed):
  rng = np.random.default_rng(seed)
  shape = (3, 5, 4, 7, 6)  # odd sizes on purpose
  z = rng.normal(0.0, 3.0, shape).astype(np.float32)
  y = (rng.random(shape) < 0.3).astype(np.float32)
  m = rng.random((3, 6)) < 0.5
  m[0, 0] = True  # at least one pair
  out = _loss(jnp.asarray(z), jnp.asarray(y), jnp.asarray(m))
  ref_bce, ref_dice = _numpy_reference(z, y, m)
  np.testing.assert_allclose(float(out.bce), ref_bce, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(float(out.dice), ref_dice, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(float(out.total), ref_bce + ref_dice, rtol=1e-5, atol=1e-6)


def test_gradients_finite_and_masked():
  rng = np.random.default_rng(3)
  shape = (2, 3, 4, 5, 3)
  # Extreme logits: the naive log(sigmoid) would give inf/NaN here.
  z = jnp.asarray(rng.normal(0.0, 60.0, shape).astype(np.float32))
  y = jnp.asarray((rng.random(shape) < 0.5).astype(np.float32))
  m = jnp.array([[True, False, True], [False, False, True]])
  grad = _grad(z, y, m)
  assert np.all(np.isfinite(np.asarray(grad)))
  # Unannotated (sample, class) pairs get exactly zero gradient.
  np.testing.assert_array_equal(np.asarray(grad)[0, ..., 1], 0.0)
  np.testing.assert_array_equal(np.asarray(grad)[1, ..., 0], 0.0)
  assert np.any(np.asarray(grad)[0, ..., 0] != 0.0)


def test_bf16_logits_are_computed_in_float32():
  rng = np.random.default_rng(4)
  shape = (2, 4, 4, 4, 2)
  z32 = rng.normal(0.0, 20.0, shape).astype(np.float32)
  zbf = jnp.asarray(z32).astype(jnp.bfloat16)
  y = jnp.asarray((rng.random(shape) < 0.5).astype(np.float32))
  m = jnp.ones((2, 2), bool)
  out = _loss(zbf, y, m)
  assert out.total.dtype == jnp.float32
  # Same value as the float32 loss evaluated at the bf16-rounded logits.
  ref = _loss(zbf.astype(jnp.float32), y, m)
  np.testing.assert_allclose(float(out.total), float(ref.total), rtol=1e-6)
  grad = _grad(zbf, y, m)
  assert grad.dtype == jnp.bfloat16 and np.all(np.isfinite(np.asarray(grad, np.float32)))


def test_all_unannotated_batch():
  rng = np.random.default_rng(5)
  shape = (2, 3, 3, 3, 4)
  z = jnp.asarray(rng.normal(size=shape).astype(np.float32))
  y = jnp.asarray((rng.random(shape) < 0.5).astype(np.float32))
  m = jnp.zeros((2, 4), bool)
  out = _loss(z, y, m)
  assert float(out.total) == 0.0 and float(out.bce) == 0.0 and float(out.dice) == 0.0
  assert float(out.num_pairs) == 0.0
  grad = _grad(z, y, m)
  np.testing.assert_array_equal(np.asarray(grad), 0.0)


def test_shape_errors():
  z = jnp.zeros((1, 2, 2, 2, 3))
  with pytest.raises(ValueError, match="annotated"):
    seg_losses.partial_label_loss(z, z, jnp.ones((1, 2)))
  with pytest.raises(ValueError, match="differ"):
    seg_losses.partial_label_loss(z, jnp.zeros((1, 2, 2, 2, 2)), jnp.ones((1, 3)))
