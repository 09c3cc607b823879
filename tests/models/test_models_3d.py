"""3D backbones: parameter counts at full size (abstract, no allocation), shapes on tiny crops,
and the shifted-window attention against a per-token float64 NumPy reference."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from dassemble_jax.models import swin_unetr
from dassemble_jax.models.swin_unetr import SwinUNETR
from dassemble_jax.models.unet3d import UNet3D

jax.config.update("jax_default_matmul_precision", "highest")


def _normal(seed, shape):
  # NumPy, not jax.random: threefry on 5-D shapes compiles for seconds on a CPU.
  return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def numpy_init(ctor, seed=0):
  """Builds a module abstractly and fills it with NumPy random values.

  Eager random initialisation compiles one small XLA program per parameter shape, which costs
  tens of seconds on a loaded 2-core CPU; tests only need *some* well-scaled values.
  """
  graphdef, state = nnx.split(nnx.eval_shape(ctor))
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = str(path[-1])
    if "scale" in name or "var" in name:
      return np.ones(leaf.shape, leaf.dtype)
    if "mean" in name:
      return np.zeros(leaf.shape, leaf.dtype)
    fan_in = max(1, int(np.prod(leaf.shape[:-1])))
    std = 0.1 if leaf.ndim < 2 or "bias" in name else 1.0 / np.sqrt(fan_in)
    return (rng.normal(size=leaf.shape) * std).astype(leaf.dtype)

  state = jax.tree_util.tree_map_with_path(fill, state)
  return nnx.merge(graphdef, state)


def count_params(module):
  return sum(x.size for x in jax.tree.leaves(nnx.state(module, nnx.Param)))


# --------------------------------------------------------------------------------------------
# Parameter counts, full size, abstract.
# --------------------------------------------------------------------------------------------
def _unet_formula(b=32, cin=1):
  """Models Genesis UNet3D parameter count from its PyTorch layout (conv+bias, BN w+b)."""
  lu = lambda i, o: 27 * i * o + o + 2 * o
  n, prev = 0, cin
  for d in range(4):  # DownTransitions
    n += lu(prev, b * 2**d) + lu(b * 2**d, b * 2**(d + 1))
    prev = b * 2**(d + 1)
  for d, skip in ((2, 8 * b), (1, 4 * b), (0, 2 * b)):  # UpTransitions
    out = b * 2**(d + 1)
    n += 8 * prev * prev + prev  # ConvTranspose3d(prev, prev, 2, 2)
    n += lu(prev + skip, out) + lu(out, out)
    prev = out
  return n


def _swin_formula(f=48, depths=(2, 2, 2, 2), heads=(3, 6, 12, 24), win=7, cin=1):
  """MONAI SwinUNETR (without its output block) parameter count from its layout."""
  n = cin * f * 8 + f  # patch embedding conv
  for i in range(4):
    c = f * 2**i
    block = (2 * c + (2 * win - 1)**3 * heads[i] + 3 * c * c + 3 * c + c * c + c + 2 * c
             + 4 * c * c + 4 * c + 4 * c * c + c)
    n += depths[i] * block + 16 * c + 8 * c * 2 * c  # + patch merging (LN, no-bias linear)
  res = lambda i, o: 27 * i * o + 27 * o * o + (i * o if i != o else 0)
  n += res(cin, f) + res(f, f) + res(2 * f, 2 * f) + res(4 * f, 4 * f) + res(16 * f, 16 * f)
  for i, o in ((16 * f, 8 * f), (8 * f, 4 * f), (4 * f, 2 * f), (2 * f, f), (f, f)):
    n += 8 * i * o + res(2 * o, o)  # no-bias transposed conv + res block
  return n


def test_unet_parameter_count_matches_anchor():
  model = nnx.eval_shape(lambda: UNet3D(rngs=nnx.Rngs(0)))
  n = count_params(model)
  assert n == _unet_formula()  # 19,073,600 (BatchNorm running stats are not Params)
  assert abs(n - 19.1e6) / 19.1e6 < 0.02


def test_swin_unetr_parameter_count_matches_anchor():
  model = nnx.eval_shape(lambda: SwinUNETR(rngs=nnx.Rngs(0)))
  n = count_params(model)
  assert n == _swin_formula()  # 62,186,610
  assert abs(n - 62.2e6) / 62.2e6 < 0.02


def test_full_size_shapes_abstract():
  # 96^3 crops, batch 2: shapes only, nothing allocated or compiled.
  x = jax.ShapeDtypeStruct((2, 96, 96, 96, 1), jnp.float32)
  for ctor, deep_shape, dec_shape in [
      (lambda: UNet3D(rngs=nnx.Rngs(0)), (2, 12, 12, 12, 512), (2, 96, 96, 96, 64)),
      (lambda: SwinUNETR(rngs=nnx.Rngs(0)), (2, 3, 3, 3, 768), (2, 96, 96, 96, 48))]:
    graphdef, state = nnx.split(nnx.eval_shape(ctor))
    deep, dec = jax.eval_shape(lambda s, x: nnx.merge(graphdef, s)(x), state, x)
    assert deep.shape == deep_shape and dec.shape == dec_shape


# --------------------------------------------------------------------------------------------
# Real forward passes on tiny crops.
# --------------------------------------------------------------------------------------------
def _forward(model, x):
  """Jitted forward. XLA's CPU backend optimisations are off: they double the compile time of
  these shape tests and change nothing they check."""
  graphdef, state = nnx.split(model)
  lowered = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x)).lower(state, x)
  return lowered.compile({"xla_backend_optimization_level": 0})(state, x)


def test_unet_forward_tiny():
  model = numpy_init(lambda: UNet3D(base_channels=4, rngs=nnx.Rngs(0)))
  x = _normal(0, (2, 16, 16, 24, 1))
  deep, dec = _forward(model, x)
  assert deep.shape == (2, 2, 2, 3, 64) and dec.shape == (2, 16, 16, 24, 8)
  assert np.isfinite(np.asarray(dec)).all() and float(jnp.std(dec)) > 0
  with pytest.raises(ValueError, match="divisible by 8"):
    model(jnp.zeros((1, 12, 16, 16, 1)))


def test_swin_unetr_forward_tiny():
  model = numpy_init(lambda: SwinUNETR(feature_size=12, rngs=nnx.Rngs(0)))
  x = _normal(0, (1, 32, 32, 32, 1))
  deep, dec = _forward(model, x)
  assert deep.shape == (1, 1, 1, 1, 192) and dec.shape == (1, 32, 32, 32, 12)
  assert np.isfinite(np.asarray(dec)).all() and float(jnp.std(dec)) > 0
  with pytest.raises(ValueError, match="divisible by 32"):
    model(jnp.zeros((1, 48, 32, 32, 1)))


# --------------------------------------------------------------------------------------------
# Swin internals against naive references.
# --------------------------------------------------------------------------------------------
def test_window_partition_roundtrip_and_order():
  x = np.arange(2 * 4 * 6 * 8 * 3, dtype=np.float32).reshape(2, 4, 6, 8, 3)
  win = (2, 3, 4)
  w = np.asarray(swin_unetr.window_partition(jnp.asarray(x), win))
  assert w.shape == (2 * 2 * 2 * 2, 24, 3)
  # Window 1 of sample 0 is the (d 0:2, h 0:3, w 4:8) block in raster order.
  np.testing.assert_array_equal(w[1], x[0, 0:2, 0:3, 4:8].reshape(24, 3))
  back = swin_unetr.window_reverse(jnp.asarray(w), win, 2, 4, 6, 8)
  np.testing.assert_array_equal(back, x)


def _region_labels(dims, win, shift):
  """Region id of every position of the rolled map (the 27 slabs of the shifted layout)."""
  def axis_region(size, w, s):
    r = np.zeros(size, int)
    r[size - w:size - s] = 1
    r[size - s:] = 2
    return r
  ids = [axis_region(n, w, s) for n, w, s in zip(dims, win, shift)]
  return ids[0][:, None, None] * 9 + ids[1][None, :, None] * 3 + ids[2][None, None, :]


def test_shifted_window_attention_matches_per_token_reference():
  dims, dim, heads, window = (8, 4, 8), 6, 2, (4, 4, 4)
  block = numpy_init(lambda: swin_unetr.SwinBlock(dim, heads, window, (2, 2, 2), dtype=None,
                                                  rngs=nnx.Rngs(0)), seed=3)
  x = np.random.default_rng(1).normal(size=(1, *dims, dim)).astype(np.float32)
  graphdef, state = nnx.split(block)
  y = np.asarray(jax.jit(lambda s, x: nnx.merge(graphdef, s)._attend(x))(state, x))

  # Reference: every token attends to the tokens that share its shifted window and its region.
  win, shift = swin_unetr.effective_window(dims, window, (2, 2, 2))
  assert win == (4, 4, 4) and shift == (2, 0, 2)  # the 4-long axis is not shifted
  a = block.attn
  wqkv = np.asarray(a.qkv.kernel[...], np.float64)
  bqkv = np.asarray(a.qkv.bias[...], np.float64)
  table = np.asarray(a.relative_position_bias_table[...], np.float64)
  wp, bp = np.asarray(a.proj.kernel[...], np.float64), np.asarray(a.proj.bias[...], np.float64)
  hd = dim // heads
  pos = np.array(list(itertools.product(*[range(n) for n in dims])))  # original coordinates
  rolled = (pos - np.array(shift)) % np.array(dims)  # coordinates after roll(-shift)
  window_id = [tuple(r) for r in rolled // np.array(win)]
  inner = rolled % np.array(win)
  inner_flat = (inner[:, 0] * win[1] + inner[:, 1]) * win[2] + inner[:, 2]
  region = _region_labels(dims, win, shift)[tuple(rolled.T)]
  rel_index = swin_unetr.relative_position_index(tuple(window))
  tokens = x[0].reshape(-1, dim).astype(np.float64)
  qkv = tokens @ wqkv + bqkv
  q, k, v = qkv[:, :dim], qkv[:, dim:2 * dim], qkv[:, 2 * dim:]
  out = np.zeros_like(tokens)
  for p in range(len(tokens)):
    nbrs = [t for t in range(len(tokens))
            if window_id[t] == window_id[p] and region[t] == region[p]]
    for h in range(heads):
      sl = slice(h * hd, (h + 1) * hd)
      s = np.array([q[p, sl] @ k[t, sl] * hd**-0.5
                    + table[rel_index[inner_flat[p], inner_flat[t]], h] for t in nbrs])
      e = np.exp(s - s.max())
      out[p, sl] = (e / e.sum()) @ v[nbrs, sl]
  ref = (out @ wp + bp).reshape(1, *dims, dim)
  np.testing.assert_allclose(y, ref, atol=2e-5, rtol=1e-4)


def test_shifted_window_mask_is_cached_and_blocks_regions():
  m1 = swin_unetr.shifted_window_mask((8, 8, 8), (4, 4, 4), (2, 2, 2))
  m2 = swin_unetr.shifted_window_mask((8, 8, 8), (4, 4, 4), (2, 2, 2))
  assert m1 is m2 and m1.shape == (8, 64, 64)
  assert np.all(m1[0] == 0)  # the first window lies inside a single region
  assert set(np.unique(m1[-1])) == {0.0, -100.0}


def test_patch_merging_orders():
  v2 = swin_unetr.PatchMerging._ORDERS["mergingv2"]
  assert sorted(v2) == sorted(itertools.product(range(2), repeat=3))
  # MONAI's default 'merging' (and the anchor's checkpoints) repeat two sub-grids.
  v1 = swin_unetr.PatchMerging._ORDERS["merging"]
  assert len(set(v1)) == 6 and v1[5] == v1[2] and v1[6] == v1[3]
