"""Sliding-window stitching on functions whose output is known."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dassemble_jax.segmentation import sliding_window as sw

C = 3


def identity(params, x):
  """The input broadcast to C channels, scaled per channel: (n, d, h, w, 1) -> (n, d, h, w, C)."""
  del params
  return x * jnp.arange(1, C + 1, dtype=x.dtype)


def constant(params, x):
  return jnp.full(x.shape[:-1] + (C,), params, jnp.float32)


def window_ramp(params, x):
  """Depends on the position inside the window, so the stitched result depends on the weights."""
  del params
  d = x.shape[1]
  ramp = jnp.arange(d, dtype=jnp.float32)[None, :, None, None, None]
  return x * (1.0 + ramp) + jnp.arange(C, dtype=jnp.float32)


@pytest.mark.parametrize("accumulate_on", ["device", "host"])
def test_identity_odd_volume(accumulate_on):
  rng = np.random.default_rng(0)
  vol = rng.normal(size=(23, 17, 30)).astype(np.float32)
  out = sw.sliding_window_inference(identity, vol, window=(8, 8, 8), overlap=0.5,
                                    sw_batch_size=5, output="logits", accumulate_on=accumulate_on)
  out = np.asarray(out)
  assert out.shape == (23, 17, 30, C)
  for c in range(C):
    np.testing.assert_allclose(out[..., c], vol * (c + 1), rtol=1e-5, atol=1e-5)
  probs = sw.sliding_window_inference(identity, vol, window=(8, 8, 8), overlap=0.5,
                                      sw_batch_size=5, output="probs",
                                      accumulate_on=accumulate_on)
  np.testing.assert_allclose(np.asarray(probs)[..., 0], 1 / (1 + np.exp(-vol)), atol=1e-6)


@pytest.mark.parametrize("accumulate_on", ["device", "host"])
def test_constant_and_small_volume_padding(accumulate_on):
  vol = np.zeros((5, 9, 3), np.float32)  # smaller than the window along two axes
  out = sw.sliding_window_inference(constant, vol, params=2.5, window=(8, 8, 8), overlap=0.25,
                                    sw_batch_size=2, output="logits", accumulate_on=accumulate_on)
  assert out.shape == (5, 9, 3, C)
  np.testing.assert_allclose(np.asarray(out), 2.5, rtol=1e-6)
  # The padding is cropped exactly: the identity still returns the input.
  rng = np.random.default_rng(1)
  vol = rng.normal(size=(5, 9, 3)).astype(np.float32)
  out = sw.sliding_window_inference(identity, vol, window=(8, 8, 8), overlap=0.5,
                                    output="logits", accumulate_on=accumulate_on)
  np.testing.assert_allclose(np.asarray(out)[..., 0], vol, rtol=1e-5, atol=1e-6)


def _numpy_stitch(fn_np, vol, window, overlap, sigma_scale=0.125):
  """Independent float64 stitcher: loop over every window, weight by a Gaussian from scratch."""
  starts = [sw.window_starts(s, w, overlap) for s, w in zip(vol.shape, window)]
  gs = []
  for w in window:
    t = np.arange(w) - (w - 1) / 2
    gs.append(np.maximum(np.exp(-0.5 * (t / (sigma_scale * w)) ** 2), 1e-3))
  g = gs[0][:, None, None] * gs[1][None, :, None] * gs[2][None, None, :]
  num = np.zeros(vol.shape + (C,))
  den = np.zeros(vol.shape)
  for z in starts[0]:
    for y in starts[1]:
      for x in starts[2]:
        sl = (slice(z, z + window[0]), slice(y, y + window[1]), slice(x, x + window[2]))
        num[sl] += g[..., None] * fn_np(vol[sl].astype(np.float64))
        den[sl] += g
  return num / den[..., None]


def test_weighting_matches_numpy_and_host_equals_device():
  rng = np.random.default_rng(2)
  vol = rng.normal(size=(19, 13, 21)).astype(np.float32)
  window = (8, 6, 10)

  def ramp_np(x):
    ramp = np.arange(x.shape[0])[:, None, None, None]
    return x[..., None] * (1.0 + ramp) + np.arange(C)

  kwargs = dict(window=window, overlap=0.5, sw_batch_size=3, output="logits")
  dev = np.asarray(sw.sliding_window_inference(window_ramp, vol, accumulate_on="device",
                                               **kwargs))
  host = sw.sliding_window_inference(window_ramp, vol, accumulate_on="host", **kwargs)
  assert isinstance(host, np.ndarray)
  np.testing.assert_allclose(dev, host, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(dev, _numpy_stitch(ramp_np, vol, window, 0.5), rtol=1e-5, atol=1e-5)


def test_no_recompiles_across_windows_or_volumes():
  traced = chex.assert_max_traces(identity, n=1)
  rng = np.random.default_rng(3)
  for shape in [(23, 17, 30), (11, 20, 9)]:  # many batches, a padded last batch, new shapes
    vol = rng.normal(size=shape).astype(np.float32)
    for where in ["device", "host"]:
      out = sw.sliding_window_inference(traced, vol, window=(8, 8, 8), overlap=0.5,
                                        sw_batch_size=4, output="logits", accumulate_on=where)
      np.testing.assert_allclose(np.asarray(out)[..., 0], vol, atol=1e-5)


def test_window_starts_and_importance_map():
  np.testing.assert_array_equal(sw.window_starts(8, 8, 0.5), [0])
  starts = sw.window_starts(30, 8, 0.5)
  assert starts[0] == 0 and starts[-1] == 22 and np.all(np.diff(starts) <= 4)
  imp = sw.importance_map((96, 96, 96))
  assert imp.shape == (96, 96, 96) and imp.dtype == np.float32
  # Centre at 47.5, sigma = 96/8 = 12 voxels: index 59 is 11.5 from the centre, index 47 is 0.5.
  np.testing.assert_allclose(imp[47, 47, 59] / imp[47, 47, 47],
                             np.exp(-0.5 * (11.5**2 - 0.5**2) / 144), rtol=1e-5)
  np.testing.assert_allclose(imp[47, 47, 47], np.exp(-0.5 * 3 * 0.25 / 144), rtol=1e-6)
  assert imp.min() > 0
  with pytest.raises(ValueError, match="overlap"):
    sw.window_starts(30, 8, 1.0)


def test_choose_accumulator():
  class FakeGpu:
    platform = "gpu"

    def __init__(self, limit):
      self.limit = limit

    def memory_stats(self):
      return {"bytes_limit": self.limit, "bytes_in_use": 0}

  shape, c = (512, 512, 300), 32
  need = sw.estimate_accumulator_bytes(shape, c)
  assert need == 4 * 512 * 512 * 300 * 65
  assert sw.choose_accumulator(shape, c, device=FakeGpu(12 * 2**30)) == "host"
  assert sw.choose_accumulator(shape, c, device=FakeGpu(80 * 2**30)) == "device"
  assert sw.choose_accumulator((64, 64, 64), c, device=FakeGpu(12 * 2**30)) == "device"
  assert sw.choose_accumulator(shape, c, device=jax.devices("cpu")[0]) == "device"


def test_bad_arguments():
  vol = np.zeros((8, 8, 8), np.float32)
  with pytest.raises(ValueError, match="accumulate_on"):
    sw.sliding_window_inference(identity, vol, window=(8, 8, 8), accumulate_on="gpu")
  with pytest.raises(ValueError, match="window"):
    sw.sliding_window_inference(identity, vol, window=(8, 8))
  with pytest.raises(ValueError, match="volume"):
    sw.sliding_window_inference(identity, np.zeros((2, 8, 8, 8, 1)), window=(8, 8, 8))
