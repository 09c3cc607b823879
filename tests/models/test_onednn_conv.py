"""The oneDNN CPU convolution equals XLA's, forward and backward, sharded or not, and the switch
turns it off."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax import lax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from dassemble_jax.models import onednn_conv
from dassemble_jax.models.unet3d import UNet3D

DN = ("NDHWC", "DHWIO", "NDHWC")


def _loss(conv, strides, padding):
  def loss(x, w):
    y = conv(x, w, strides, padding, dimension_numbers=DN)
    return jnp.sum(jnp.sin(y)), y  # a nonlinear loss: dy differs per voxel
  return jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)


def _hlo(fn, *args) -> str:
  return jax.jit(fn).lower(*args).as_text()


@pytest.fixture(autouse=True)
def _fresh_switch():
  onednn_conv.available.cache_clear()
  yield
  onednn_conv.available.cache_clear()


@pytest.mark.parametrize("x_shape,k_shape,strides,padding", [
    ((2, 6, 8, 10, 3), (3, 3, 3, 3, 5), (1, 1, 1), "SAME"),      # the U-Net's convolution
    ((1, 8, 8, 8, 1), (3, 3, 3, 1, 4), (1, 1, 1), "SAME"),       # its first (1 channel)
    ((2, 8, 8, 8, 4), (2, 2, 2, 4, 6), (2, 2, 2), "VALID"),      # Swin UNETR's patch embedding
    ((1, 4, 6, 8, 6), (1, 1, 1, 6, 3), (1, 1, 1), "SAME"),       # its 1x1x1 residual
    ((1, 7, 9, 8, 2), (3, 3, 3, 2, 3), (2, 1, 2), ((1, 0), (2, 1), (0, 1))),  # odd geometry
])
def test_forward_and_gradients_match_xla(x_shape, k_shape, strides, padding):
  assert onednn_conv.available(), "the oneDNN convolution must build in the test environment"
  kx, kw = jax.random.split(jax.random.key(0))
  x = jax.random.normal(kx, x_shape)
  w = jax.random.normal(kw, k_shape) * 0.3
  ours = _loss(onednn_conv.conv_general_dilated, strides, padding)
  assert "dassemble_conv3d_backward_weights" in _hlo(ours, x, w)
  (_, y), (dx, dw) = jax.jit(ours)(x, w)
  (_, y_ref), (dx_ref, dw_ref) = jax.jit(_loss(lax.conv_general_dilated, strides, padding))(x, w)
  for got, want in ((y, y_ref), (dx, dx_ref), (dw, dw_ref)):
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * float(jnp.abs(want).max()))


def test_batch_sharded_over_a_mesh_matches_one_device():
  mesh = jax.make_mesh((8,), ("data",))
  x = jax.random.normal(jax.random.key(1), (8, 6, 6, 6, 3))
  w = jax.random.normal(jax.random.key(2), (3, 3, 3, 3, 4)) * 0.3
  grad = jax.jit(_loss(onednn_conv.conv_general_dilated, (1, 1, 1), "SAME"))
  (_, y), (dx, dw) = grad(x, w)
  xs = jax.device_put(x, NamedSharding(mesh, P("data")))
  ws = jax.device_put(w, NamedSharding(mesh, P()))
  compiled = grad.lower(xs, ws).compile().as_text()
  # Each device convolves its own batch shard: the activations are never gathered.
  assert "dassemble_conv3d_forward" in compiled and "all-gather" not in compiled
  (_, ys), (dxs, dws) = grad(xs, ws)
  assert dxs.sharding.spec[0] == "data"
  np.testing.assert_allclose(ys, y, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(dxs, dx, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(dws, dw, rtol=1e-5, atol=1e-4)


def test_many_devices_run_one_primitive_at_once():
  """Eight devices execute the same (gemm-based, few-channel) primitives concurrently: each
  execution needs its own scratchpad (a shared one crashed the process in the universal job)."""
  mesh = jax.make_mesh((8,), ("data",))
  x = jax.device_put(jax.random.normal(jax.random.key(4), (8, 16, 16, 16, 1)),
                     NamedSharding(mesh, P("data")))
  w = jax.device_put(jax.random.normal(jax.random.key(5), (3, 3, 3, 1, 2)),
                     NamedSharding(mesh, P()))
  grad = jax.jit(_loss(onednn_conv.conv_general_dilated, (1, 1, 1), "SAME"))
  _, (_, dw_ref) = jax.jit(_loss(lax.conv_general_dilated, (1, 1, 1), "SAME"))(x, w)
  for _ in range(5):
    _, (_, dw) = grad(x, w)
    np.testing.assert_allclose(dw, dw_ref, rtol=1e-4, atol=1e-4)


def test_switch_and_unsupported_cases_use_xla(monkeypatch):
  x = jnp.ones((1, 4, 4, 4, 2))
  w = jnp.ones((3, 3, 3, 2, 2))
  conv = lambda x, w, **kw: onednn_conv.conv_general_dilated(x, w, (1, 1, 1), "SAME",
                                                             dimension_numbers=DN, **kw)
  assert "dassemble_conv3d" in _hlo(conv, x, w)
  # Not float32, dilated, grouped: XLA's convolution.
  assert "dassemble_conv3d" not in _hlo(conv, x.astype(jnp.bfloat16), w.astype(jnp.bfloat16))
  assert "dassemble_conv3d" not in _hlo(lambda x, w: conv(x, w, rhs_dilation=(2, 2, 2)), x, w)
  monkeypatch.setenv("DASSEMBLE_CPU_CONV", "xla")
  onednn_conv.available.cache_clear()
  assert "dassemble_conv3d" not in _hlo(lambda x, w: conv(x, w), x, w)  # (a new trace)
  monkeypatch.setenv("DASSEMBLE_CPU_CONV", "fast")
  with pytest.raises(ValueError, match="DASSEMBLE_CPU_CONV must be auto, onednn or xla"):
    onednn_conv.mode()


def test_unet_training_gradients_unchanged(monkeypatch):
  """A whole U-Net step's gradients equal those of the XLA convolution (float32 tolerance)."""
  model = UNet3D(1, base_channels=4, norm="group", rngs=nnx.Rngs(0))  # no mutable stats
  graph, params, rest = nnx.split(model, nnx.Param, ...)
  x = jax.random.normal(jax.random.key(3), (2, 16, 16, 16, 1))

  def loss(params):
    m = nnx.merge(graph, params, rest)
    deep, y = m(x)
    return jnp.mean(jnp.square(y)) + jnp.mean(jnp.square(deep))

  def grads():
    return jax.jit(jax.value_and_grad(loss))(params)

  assert "dassemble_conv3d" in _hlo(jax.grad(loss), params)
  value, g = grads()
  monkeypatch.setattr(onednn_conv, "available", lambda: False)
  value_ref, g_ref = grads()
  np.testing.assert_allclose(value, value_ref, rtol=1e-5)
  # (Biases before a normalisation have zero gradient up to rounding: one tolerance for all.)
  scale = max(float(jnp.abs(leaf).max()) for leaf in jax.tree.leaves(g_ref))
  for got, want in zip(jax.tree.leaves(g), jax.tree.leaves(g_ref)):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * scale)
