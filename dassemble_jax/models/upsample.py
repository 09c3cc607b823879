"""Stride-2, kernel-2 3D upsampling as a matmul plus a depth-to-space reshape.

Why not `nnx.ConvTranspose`: XLA lowers the gradient of a 3D transposed convolution on GPU to a
path that was measured ~30x slower than PyTorch (jax-ml/jax #31662, openxla/xla #34273). With
kernel size equal to stride (2), the output windows do not overlap, so every output voxel
(2d+i, 2h+j, 2w+k) receives exactly one input voxel (d, h, w) times the kernel tap (i, j, k):

  y[b, 2d+i, 2h+j, 2w+k, o] = sum_c x[b, d, h, w, c] * K[i, j, k, c, o] + bias[o]

That is one (B*D*H*W, C) x (C, 8*O) matmul followed by a reshape/transpose that interleaves the
2x2x2 taps into space. Forward and backward are plain dot_generals, which every backend runs at
matmul speed. `tests/models/test_upsample.py` proves equality with `nnx.ConvTranspose` and with PyTorch's
ConvTranspose3d definition, forward and gradient.

Kernel layout: (2, 2, 2, in, out) indexed by the output offset (i, j, k). That is PyTorch's
ConvTranspose3d tap order: a torch weight (in, out, 2, 2, 2) imports with
`weight.transpose(2, 3, 4, 0, 1)` (see `kernel_from_torch`). A Flax/lax `conv_transpose` kernel
with `transpose_kernel=False` is the same array flipped in all three spatial axes
(`kernel_from_flax_conv_transpose`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


def flat_kernel_init(init=None):
  """Wraps a Flax initializer to draw an N-D conv kernel as 2-D (prod(shape[:-1]), out).

  Same distribution as drawing the N-D shape (Flax's fan_in for a conv kernel is already
  receptive field x in), but jax.random on 5-D shapes compiles for seconds per shape on a CPU
  (threefry over a 5-D iota), which made eager model construction take minutes.
  """
  init = init or nnx.initializers.lecun_normal()

  def kernel_init(key, shape, dtype=jnp.float32):
    return init(key, (int(np.prod(shape[:-1])), shape[-1]), dtype).reshape(shape)

  return kernel_init


def depth_to_space(y: jax.Array, out_features: int) -> jax.Array:
  """(B, D, H, W, 2*2*2*O) with taps ordered (i, j, k, o) -> (B, 2D, 2H, 2W, O)."""
  b, d, h, w, _ = y.shape
  y = y.reshape(b, d, h, w, 2, 2, 2, out_features)
  # Interleave each tap axis right after its spatial axis: (b, d, i, h, j, w, k, o).
  y = y.transpose(0, 1, 4, 2, 5, 3, 6, 7)
  return y.reshape(b, 2 * d, 2 * h, 2 * w, out_features)


def upsample2x(x: jax.Array, kernel: jax.Array, bias: jax.Array | None = None) -> jax.Array:
  """Functional form: x (B, D, H, W, C), kernel (2, 2, 2, C, O) -> (B, 2D, 2H, 2W, O)."""
  c, o = kernel.shape[-2:]
  # (C, 8*O) with columns ordered (i, j, k, o): one matmul over all voxels.
  dense = kernel.transpose(3, 0, 1, 2, 4).reshape(c, 8 * o)
  y = jnp.einsum("bdhwc,cn->bdhwn", x, dense)
  y = depth_to_space(y, o)
  if bias is not None:
    y = y + bias
  return y


class Upsample2x(nnx.Module):
  """Drop-in replacement for `ConvTranspose(in, out, kernel_size=2, strides=2)` (NDHWC).

  Parameters: `kernel` (2, 2, 2, in, out) and `bias` (out,), the same count as the transposed
  convolution it replaces. `dtype` is the compute dtype; parameters stay `param_dtype`.
  """

  def __init__(self, in_features: int, out_features: int, *, use_bias: bool = True,
               dtype=None, param_dtype=jnp.float32, rngs: nnx.Rngs):
    self.in_features = in_features
    self.out_features = out_features
    self.dtype = dtype
    # Lecun-normal with fan_in = in: each output voxel sums exactly `in` products (one tap), so
    # this keeps the activation variance. Drawn as 2-D (in, 8*out) and rearranged: see
    # `flat_kernel_init` for why not 5-D.
    flat = nnx.initializers.lecun_normal()(rngs.params(), (in_features, 8 * out_features),
                                           param_dtype)
    self.kernel = nnx.Param(
        flat.reshape(in_features, 2, 2, 2, out_features).transpose(1, 2, 3, 0, 4))
    self.bias = (nnx.Param(jnp.zeros((out_features,), param_dtype)) if use_bias else None)

  def __call__(self, x: jax.Array) -> jax.Array:
    # (B, D, H, W, in) -> (B, 2D, 2H, 2W, out)
    kernel = self.kernel[...]
    bias = None if self.bias is None else self.bias[...]
    if self.dtype is not None:
      x = x.astype(self.dtype)
      kernel = kernel.astype(self.dtype)
      bias = None if bias is None else bias.astype(self.dtype)
    return upsample2x(x, kernel, bias)


def kernel_from_torch(weight: np.ndarray) -> np.ndarray:
  """PyTorch ConvTranspose3d weight (in, out, 2, 2, 2) -> our kernel (2, 2, 2, in, out)."""
  weight = np.asarray(weight)
  if weight.ndim != 5 or weight.shape[2:] != (2, 2, 2):
    raise ValueError(f"expected a (in, out, 2, 2, 2) ConvTranspose3d weight, got {weight.shape}")
  return weight.transpose(2, 3, 4, 0, 1)


def kernel_from_flax_conv_transpose(kernel: np.ndarray) -> np.ndarray:
  """`nnx.ConvTranspose` kernel (2, 2, 2, in, out), transpose_kernel=False -> ours."""
  return jnp.flip(jnp.asarray(kernel), axis=(0, 1, 2))
