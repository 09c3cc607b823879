"""On-device crop and augmentation against NumPy/SciPy references."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
from scipy import ndimage

from dassemble_jax.ct import bitmask, volume_augment


def _batch(b=3, w=(12, 12, 10), seed=0):
  rng = np.random.default_rng(seed)
  image = rng.random((b, *w)).astype(np.float16)
  label = (rng.integers(0, 2, (b, *w, 32)) * (rng.random((b, *w, 32)) < 0.2)).astype(np.uint8)
  return {"image": image, "label": bitmask.pack(label),
          "annotated": rng.integers(0, 2, (b, 32)).astype(np.uint8),
          "source": np.arange(b, dtype=np.int32), "zoom_ok": np.ones(b, np.uint8)}, label


_OFF = volume_augment.AugmentConfig(crop_size=(12, 12, 10), rot90_prob=0, shift_prob=0, zoom_prob=0)


def test_identity_when_everything_is_off():
  batch, channels = _batch()
  out = volume_augment.make_augment_fn(_OFF)(jax.random.key(0), batch)
  chex.assert_shape(out["image"], (3, 12, 12, 10, 1))
  chex.assert_shape(out["label"], (3, 12, 12, 10, 32))
  np.testing.assert_array_equal(out["image"][..., 0], batch["image"].astype(np.float32))
  np.testing.assert_array_equal(out["label"], channels)
  np.testing.assert_array_equal(out["annotated"], batch["annotated"])


def test_random_crop_is_a_window_of_the_input():
  batch, channels = _batch(w=(14, 14, 13))
  cfg = volume_augment.AugmentConfig(crop_size=(8, 8, 8), rot90_prob=0, shift_prob=0, zoom_prob=0)
  out = volume_augment.make_augment_fn(cfg)(jax.random.key(1), batch)
  for i in range(3):
    crop = np.asarray(out["image"][i, ..., 0])
    found = [(a, b, c) for a in range(7) for b in range(7) for c in range(6)
             if np.array_equal(batch["image"][i, a:a + 8, b:b + 8, c:c + 8].astype(np.float32),
                               crop)]
    assert len(found) == 1
    a, b, c = found[0]
    np.testing.assert_array_equal(out["label"][i], channels[i, a:a + 8, b:b + 8, c:c + 8])


def test_zoom_matches_scipy_trilinear_and_nearest():
  rng = np.random.default_rng(2)
  x = rng.random((9, 10, 11))
  factor = 1.37
  coords = np.meshgrid(*[np.clip((n - 1) / 2 + (np.arange(n) - (n - 1) / 2) / factor, 0, n - 1)
                         for n in x.shape], indexing="ij")
  expected = ndimage.map_coordinates(x, coords, order=1)
  zoom = jax.jit(volume_augment.zoom, static_argnames="order")
  got = zoom(jnp.asarray(x, jnp.float32), jnp.float32(factor), order=1)
  np.testing.assert_allclose(got, expected, atol=1e-5)
  bits = rng.integers(0, 2 ** 31, x.shape).astype(np.uint32)
  got = zoom(jnp.asarray(bits), jnp.float32(factor), order=0)
  idx = [np.round(c).astype(int) for c in coords]
  np.testing.assert_array_equal(got, bits[tuple(idx)])


def test_rotation_shift_and_zoom_flags():
  batch, channels = _batch(w=(10, 10, 6))
  rot = volume_augment.AugmentConfig(crop_size=(10, 10, 6), rot90_prob=1.0, shift_prob=1.0, shift=0.1,
                              zoom_prob=0)
  out = volume_augment.make_augment_fn(rot)(jax.random.key(3), batch)
  for i in range(3):
    lab = np.asarray(out["label"][i])
    k = [k for k in (1, 2, 3) if np.array_equal(np.rot90(channels[i], k, axes=(0, 1)), lab)]
    assert len(k) == 1  # rotated by 90, 180 or 270 degrees in the axial plane, never 0
    image = np.rot90(batch["image"][i].astype(np.float32), k[0], axes=(0, 1))
    offset = np.asarray(out["image"][i, ..., 0]) - image
    assert np.ptp(offset) < 1e-6 and abs(offset.mean()) <= 0.1
  # zoom_prob 1 but zoom_ok 0: nothing changes.
  zoom = volume_augment.AugmentConfig(crop_size=(10, 10, 6), rot90_prob=0, shift_prob=0, zoom_prob=1.0)
  batch["zoom_ok"] = np.zeros(3, np.uint8)
  fn = volume_augment.make_augment_fn(zoom)
  out = fn(jax.random.key(4), batch)
  np.testing.assert_array_equal(out["label"], channels)
  batch["zoom_ok"] = np.ones(3, np.uint8)
  out = fn(jax.random.key(4), batch)
  assert not np.array_equal(out["label"], channels)


def test_no_retrace_across_batches():
  traced = chex.assert_max_traces(volume_augment.augment_batch, n=1)
  fn = jax.jit(lambda r, b: traced(r, b, _OFF))
  for seed in range(3):
    fn(jax.random.key(seed), _batch(seed=seed)[0])
