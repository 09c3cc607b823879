"""The matmul + depth-to-space upsampling equals a stride-2 kernel-2 transposed convolution."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dassemble_jax.models import upsample

jax.config.update("jax_default_matmul_precision", "highest")


def _normal(seed, shape):
  # NumPy, not jax.random: threefry on 5-D shapes compiles for seconds on a CPU.
  return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def _torch_conv_transpose_reference(x, weight, bias):
  """PyTorch's ConvTranspose3d(k=2, s=2) by its definition, float64, NDHWC in and out.

  out[s*d + i, s*h + j, s*w + k, o] += x[d, h, w, c] * weight[c, o, i, j, k]
  """
  x = np.asarray(x, np.float64)
  b, d, h, w, _ = x.shape
  out = np.zeros((b, 2 * d, 2 * h, 2 * w, weight.shape[1]))
  for i, j, k in itertools.product(range(2), repeat=3):
    out[:, i::2, j::2, k::2, :] += np.einsum("bdhwc,co->bdhwo", x, weight[:, :, i, j, k])
  return out + bias


def _abstract(ctor):
  """Builds a module without running its random initialisers (each would compile a program)."""
  graphdef, state = nnx.split(nnx.eval_shape(ctor))
  return nnx.merge(graphdef, jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), state))


def _flax_pair(cin, cout, seed=0):
  rng = np.random.default_rng(seed)
  ct = _abstract(lambda: nnx.ConvTranspose(cin, cout, kernel_size=(2, 2, 2), strides=(2, 2, 2),
                                           rngs=nnx.Rngs(0)))
  up = _abstract(lambda: upsample.Upsample2x(cin, cout, rngs=nnx.Rngs(0)))
  ct.kernel[...] = rng.normal(size=ct.kernel.shape).astype(np.float32)
  ct.bias[...] = rng.normal(size=(cout,)).astype(np.float32)
  up.kernel[...] = upsample.kernel_from_flax_conv_transpose(ct.kernel[...])
  up.bias[...] = ct.bias[...]
  return ct, up


def test_forward_equals_nnx_conv_transpose():
  ct, up = _flax_pair(3, 5)
  # Odd spatial sizes catch a mixed-up axis order.
  x = _normal(7, (2, 3, 4, 5, 3))
  y_ref, y = nnx.jit(lambda a, b, x: (a(x), b(x)))(ct, up, x)
  assert y.shape == (2, 6, 8, 10, 5)
  np.testing.assert_allclose(y, y_ref, rtol=1e-6, atol=1e-6)


def test_forward_equals_lax_conv_transpose_torch_semantics():
  # lax.conv_transpose with transpose_kernel=True is the gradient of a conv, i.e. PyTorch's
  # ConvTranspose; check both against the scatter definition in float64.
  rng = np.random.default_rng(0)
  x = rng.normal(size=(1, 2, 3, 4, 4)).astype(np.float32)
  w_torch = rng.normal(size=(4, 6, 2, 2, 2)).astype(np.float32)  # (in, out, kd, kh, kw)
  bias = rng.normal(size=(6,)).astype(np.float32)
  ref = _torch_conv_transpose_reference(x, w_torch, bias)
  y = upsample.upsample2x(jnp.asarray(x), jnp.asarray(upsample.kernel_from_torch(w_torch)),
                          jnp.asarray(bias))
  np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)
  # lax: kernel (kd, kh, kw, out, in) under transpose_kernel=True is the forward conv's kernel.
  y_lax = jax.lax.conv_transpose(x, w_torch.transpose(2, 3, 4, 1, 0), (2, 2, 2), "VALID",
                                 dimension_numbers=("NDHWC", "DHWIO", "NDHWC"),
                                 transpose_kernel=True) + bias
  np.testing.assert_allclose(y_lax, ref, rtol=1e-5, atol=1e-5)


def test_gradients_equal_nnx_conv_transpose():
  ct, up = _flax_pair(4, 3, seed=3)
  x = _normal(8, (2, 3, 2, 5, 4))
  target = _normal(9, (2, 6, 4, 10, 3))

  def loss(kernel, bias, x, use_ct):
    y = (jax.lax.conv_transpose(x, kernel, (2, 2, 2), "SAME",
                                dimension_numbers=("NDHWC", "DHWIO", "NDHWC")) + bias
         if use_ct else upsample.upsample2x(
             x, upsample.kernel_from_flax_conv_transpose(kernel), bias))
    return jnp.sum(jnp.sin(y) * target)

  args = (ct.kernel[...], ct.bias[...], x)
  grads = jax.jit(lambda *a: (jax.grad(loss, argnums=(0, 1, 2))(*a, True),
                              jax.grad(loss, argnums=(0, 1, 2))(*a, False)))
  g_ref, g = grads(*args)
  for a, b in zip(g, g_ref):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
  # Sanity: the reference path really is the module's own transposed conv.
  np.testing.assert_allclose(
      nnx.jit(lambda m, x: m(x))(ct, x),
      jax.lax.conv_transpose(x, ct.kernel[...], (2, 2, 2), "SAME",
                             dimension_numbers=("NDHWC", "DHWIO", "NDHWC")) + ct.bias[...],
      rtol=1e-6, atol=1e-6)


def test_no_transposed_conv_in_gradient():
  # The point of the module: its backward pass holds no convolution at all.
  kernel = jax.ShapeDtypeStruct((2, 2, 2, 4, 2), jnp.float32)
  x = jax.ShapeDtypeStruct((1, 2, 2, 2, 4), jnp.float32)
  grad_fn = jax.jit(jax.grad(lambda k, x: jnp.sum(upsample.upsample2x(x, k) ** 2),
                             argnums=(0, 1)))
  hlo = grad_fn.lower(kernel, x).as_text()
  assert "convolution" not in hlo
  assert "dot_general" in hlo


def test_param_count_and_dtype():
  up = upsample.Upsample2x(8, 4, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
  n = sum(p.size for p in jax.tree.leaves(nnx.state(up, nnx.Param)))
  assert n == 8 * 4 * 8 + 4  # = ConvTranspose3d(8, 4, 2, 2) parameters
  assert up.kernel[...].dtype == jnp.float32
  # Initialised like a transposed conv: zero bias, kernel spread ~ 1/sqrt(in).
  assert np.all(np.asarray(up.bias[...]) == 0) and 0.1 < float(jnp.std(up.kernel[...])) < 1
  y = jax.eval_shape(up, jax.ShapeDtypeStruct((1, 1, 1, 1, 8), jnp.float32))
  assert y.dtype == jnp.bfloat16 and y.shape == (1, 2, 2, 2, 4)
