"""DenseNet: DenseNet-121's parameter count (abstractly, no arrays), a tiny one against a float64
NumPy forward pass written from the paper's description, and the bf16 option."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dassemble_jax.models import densenet


def _count_by_formula(in_ch, classes, growth=32, blocks=(6, 12, 24, 16), init=64, bn_size=4):
  """Parameters from the architecture alone: convs without bias, BN scale + bias."""
  n = 7 * 7 * in_ch * init + 2 * init
  ch = init
  for i, layers in enumerate(blocks):
    for _ in range(layers):
      n += 2 * ch + ch * bn_size * growth + 2 * bn_size * growth + 9 * bn_size * growth * growth
      ch += growth
    if i < len(blocks) - 1:
      n += 2 * ch + ch * (ch // 2)
      ch //= 2
  return n + 2 * ch + ch * classes + classes


def test_densenet121_has_the_published_parameter_count():
  model = nnx.eval_shape(lambda: densenet.densenet121(1000, in_channels=3, rngs=nnx.Rngs(0)))
  assert densenet.count_params(model) == 7_978_856  # torchvision densenet121; the paper's 7.98 M
  assert _count_by_formula(3, 1000) == 7_978_856
  assert model.num_features == 1024


# ------------------------------------------------------------------------------------------------
# A float64 NumPy reference (NHWC), eval-mode BatchNorm from the stored statistics.

def _np_conv(x, k, stride):
  kh, kw, _, out = k.shape
  p = kh // 2
  x = np.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
  h = (x.shape[1] - kh) // stride + 1
  w = (x.shape[2] - kw) // stride + 1
  y = np.zeros((x.shape[0], h, w, out))
  for i in range(kh):
    for j in range(kw):
      patch = x[:, i:i + stride * h:stride, j:j + stride * w:stride, :]
      y += patch @ k[i, j]
  return y


def _np_bn(x, bn):
  g = lambda v: np.asarray(v[...], np.float64)
  return (x - g(bn.mean)) / np.sqrt(g(bn.var) + bn.epsilon) * g(bn.scale) + g(bn.bias)


def _np_forward(model, x):
  k = lambda conv: np.asarray(conv.kernel[...], np.float64)
  relu = lambda v: np.maximum(v, 0)
  x = (x - 0.5) / 0.25
  x = relu(_np_bn(_np_conv(x, k(model.stem), 2), model.stem_norm))
  # 3x3/2 max pool, padding 1 with -inf.
  xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-np.inf)
  h, w = (xp.shape[1] - 3) // 2 + 1, (xp.shape[2] - 3) // 2 + 1
  x = np.max([xp[:, i:i + 2 * h:2, j:j + 2 * w:2] for i in range(3) for j in range(3)], 0)
  for b, block in enumerate(model.blocks):
    for layer in block:
      y = _np_conv(relu(_np_bn(x, layer.norm1)), k(layer.conv1), 1)
      y = _np_conv(relu(_np_bn(y, layer.norm2)), k(layer.conv2), 1)
      x = np.concatenate([x, y], -1)
    if b < len(model.transitions):
      t = model.transitions[b]
      x = _np_conv(relu(_np_bn(x, t.norm)), k(t.conv), 1)
      n, hh, ww, c = x.shape
      x = x[:, :hh // 2 * 2, :ww // 2 * 2].reshape(n, hh // 2, 2, ww // 2, 2, c).mean((2, 4))
  x = relu(_np_bn(x, model.final_norm)).mean((1, 2))
  return x @ np.asarray(model.head.kernel[...], np.float64) + np.asarray(model.head.bias[...])


def _tiny(dtype=jnp.float32):
  """A small DenseNet with random parameters AND running statistics (so BatchNorm is really
  tested), filled from NumPy: building abstractly skips compiling a random draw per shape."""
  abstract = nnx.eval_shape(lambda: densenet.DenseNet(
      3, in_channels=1, growth_rate=4, block_config=(2, 3), num_init_features=8, bn_size=2,
      dtype=dtype, rngs=nnx.Rngs(1)))
  graphdef, state = nnx.split(abstract)
  rng = np.random.default_rng(0)

  def fill(path, leaf):
    # The last dict key names the variable ('kernel', 'scale', 'var', ...); '.value' follows.
    name = [p.key for p in path if hasattr(p, "key")][-1]
    shape = leaf.shape
    if name == "kernel":
      v = rng.normal(0, 1 / np.sqrt(np.prod(shape[:-1])), shape)
    elif name in ("scale", "var"):
      v = rng.uniform(0.5, 1.5, shape)
    else:  # bias, mean
      v = rng.normal(0, 0.2, shape)
    return jnp.asarray(v, jnp.float32)

  model = nnx.merge(graphdef, jax.tree_util.tree_map_with_path(fill, state))
  model.eval()
  return model


_forward = nnx.jit(lambda model, x: model(x))


def test_tiny_densenet_matches_a_numpy_float64_forward():
  model = _tiny()
  x = np.random.default_rng(1).uniform(0, 1, (2, 19, 23, 1))  # odd sizes: padding, floors
  got = np.asarray(_forward(model, jnp.asarray(x, jnp.float32)))
  want = _np_forward(model, x)
  assert got.shape == (2, 3) and got.dtype == np.float32
  assert np.isfinite(want).all() and np.abs(want).max() > 0.1
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_bfloat16_compute_keeps_float32_parameters():
  model = _tiny(jnp.bfloat16)
  x = jnp.asarray(np.random.default_rng(2).uniform(0, 1, (2, 32, 32, 1)), jnp.float32)
  logits = _forward(model, x)
  assert logits.dtype == jnp.float32
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(nnx.state(model, nnx.Param)))
  reference = _forward(_tiny(jnp.float32), x)
  np.testing.assert_allclose(np.asarray(logits), np.asarray(reference), atol=0.15, rtol=0.1)
