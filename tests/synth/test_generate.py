"""synthesize_tumors end to end: a 48^3 volume of 2 mm voxels holding an ellipsoid liver (default
config: every kind and 'mix')."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
from scipy import ndimage

from dassemble_jax.synth import SynthConfig, synthesize_batch, synthesize_tumors
from tests.synth.toy import ellipsoid_liver

SPACING = (2.0, 2.0, 2.0)
CFG = SynthConfig()
CT, LIVER = ellipsoid_liver((48, 48, 48), SPACING, semi_mm=(44.0, 38.0, 46.0))
BATCH_KEY = jax.random.key(42)
KEYS = jax.random.split(BATCH_KEY, 5)  # what synthesize_batch gives each sample
ELIGIBLE = np.array([True, True, True, True, False])  # the last: not a healthy-liver source



@jax.jit
@chex.assert_max_traces(n=1)
def synth(key, ct, liver):
  """The single-sample generator every test calls: one trace for the whole file (no recompiles
  across calls with the same shapes)."""
  return synthesize_tumors(key, ct, liver, SPACING, CFG)


@functools.cache
def _batch():
  """A batch of 5 through synthesize_batch (one compile shared by the tests below)."""
  cts = np.stack([CT + i for i in range(len(KEYS))])
  livers = np.broadcast_to(LIVER, cts.shape)
  batched = jax.jit(functools.partial(synthesize_batch, spacing=SPACING, cfg=CFG))
  out = batched(BATCH_KEY, cts, livers, eligible=ELIGIBLE)
  return cts, jax.device_get(out)


def test_tumors_inside_liver_decrement_in_range_label_unblurred():
  cts, (new, geo, info) = _batch()
  np.testing.assert_array_equal(info['valid'], ELIGIBLE)
  np.testing.assert_array_equal(new[-1], cts[-1])  # ineligible: untouched
  assert not geo[-1].any()
  kinds, halos = set(), 0
  for i in range(len(KEYS) - 1):
    kinds.add(int(info['kind_choice'][i]))
    assert geo[i].sum() > 0
    assert not np.any(geo[i] & ~LIVER)                      # inside the liver
    c = info['centres'][i][info['active'][i]]
    assert np.all(LIVER[tuple(c.T)])                         # centres in the liver
    dec = cts[i] - new[i]                                    # HU removed
    delta = info['hu_decrement'][i]
    assert CFG.hu_decrement[0] <= delta <= CFG.hu_decrement[1]
    np.testing.assert_array_equal(dec[~LIVER], 0.0)          # nothing outside the liver
    assert dec.min() >= -1e-3 and dec.max() <= delta + 1e-3  # T <= 1 and blur <= 1
    # The label is the binary union, not a threshold of the blurred one: the blur darkens a halo
    # of liver voxels outside the label.
    assert geo[i].dtype == bool
    halo = LIVER & ~geo[i] & ndimage.binary_dilation(geo[i])
    if halo.sum() > 20:
      halos += 1
      assert np.mean(dec[halo] > 0.5) > 0.5
    # Deep inside, decrement = T * delta with T normalised to mean u0 (0.5-0.55) over its bright
    # part: the core mean lies well inside (0.2, 0.8) * delta.
    core = ndimage.binary_erosion(geo[i], iterations=3)
    if core.sum() > 50:
      assert 0.2 < dec[core].mean() / delta < 0.8, dec[core].mean() / delta
  assert len(kinds) > 1 and halos > 0


def test_vmap_equals_loop_and_same_key_same_result():
  cts, (new_b, geo_b, info_b) = _batch()
  for i in range(len(KEYS) - 1):
    new, geo, info = synth(KEYS[i], cts[i], LIVER)
    np.testing.assert_allclose(np.asarray(new), new_b[i], atol=1e-3)
    np.testing.assert_array_equal(np.asarray(geo), geo_b[i])
    np.testing.assert_array_equal(np.asarray(info['centres']), info_b['centres'][i])
  again = synth(KEYS[0], cts[0], LIVER)
  first = synth(KEYS[0], cts[0], LIVER)
  np.testing.assert_array_equal(np.asarray(again[0]), np.asarray(first[0]))
  np.testing.assert_array_equal(np.asarray(again[1]), np.asarray(first[1]))
  other = synth(KEYS[1], cts[0], LIVER)
  assert not np.array_equal(np.asarray(other[1]), np.asarray(first[1]))


def test_no_recompile_across_calls_with_same_shapes():
  # `synth` raises if traced twice (chex.assert_max_traces); other tests call it too.
  jax.block_until_ready(synth(KEYS[0], jnp.asarray(CT), jnp.asarray(LIVER)))
  compiled = synth._cache_size()
  for i in range(1, 4):
    jax.block_until_ready(synth(KEYS[i], jnp.asarray(CT * (1 + i)), jnp.asarray(LIVER)))
  assert synth._cache_size() == compiled  # no new executable either


def test_empty_or_tiny_liver_gives_no_tumor_and_unchanged_ct():
  tiny = np.zeros_like(LIVER)
  tiny[20:23, 20:23, 20:22] = True  # 18 voxels < min_liver_voxels
  for liver in (np.zeros_like(LIVER), tiny):
    new, geo, info = synth(KEYS[0], CT, liver)
    assert not bool(info['valid']) and int(info['n_tumors']) == 0
    assert not np.asarray(geo).any()
    np.testing.assert_array_equal(np.asarray(new), CT)
