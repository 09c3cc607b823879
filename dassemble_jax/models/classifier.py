"""A small ResNet-style multi-label classifier for 28x28x1 (MNIST) and 32x32x3 (CIFAR) images.

One sigmoid per class of the assembled label space: classes are scored independently, because a
partially labelled example constrains only some of them. Parameters stay float32; `dtype` sets
the compute precision (bfloat16 on accelerators).
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from dassemble_jax.models.upsample import flat_kernel_init


def make_norm(kind: str, channels: int, *, dtype, rngs: nnx.Rngs, zero_scale: bool = False):
  """'batch' (running statistics, the usual ResNet) or 'group' (no state: identical in training
  and evaluation, robust for short runs and tiny batches, and trivially vmapped over runs)."""
  scale_init = nnx.initializers.zeros if zero_scale else nnx.initializers.ones
  if kind == "batch":
    return nnx.BatchNorm(channels, momentum=0.9, dtype=dtype, scale_init=scale_init, rngs=rngs)
  if kind == "group":
    return nnx.GroupNorm(channels, num_groups=min(8, channels), dtype=dtype,
                         scale_init=scale_init, rngs=rngs)
  raise ValueError(f"unknown norm {kind!r}; expected 'batch' or 'group'")


class ResidualBlock(nnx.Module):
  """Two 3x3 convolutions with normalisation and an identity (or 1x1 projection) shortcut."""

  def __init__(self, in_ch: int, out_ch: int, stride: int, *, norm: str, dtype,
               rngs: nnx.Rngs):
    conv = lambda i, o, k, s: nnx.Conv(i, o, (k, k), strides=(s, s), padding="SAME",
                                       use_bias=False, dtype=dtype, kernel_init=flat_kernel_init(),
                                       rngs=rngs)  # 2-D draw: 4-D threefry compiles ~10 s/shape
    self.conv1 = conv(in_ch, out_ch, 3, stride)
    self.bn1 = make_norm(norm, out_ch, dtype=dtype, rngs=rngs)
    self.conv2 = conv(out_ch, out_ch, 3, 1)
    # Zero-init the last scale so every block starts as the identity (stable early training).
    self.bn2 = make_norm(norm, out_ch, dtype=dtype, rngs=rngs, zero_scale=True)
    self.project = stride != 1 or in_ch != out_ch
    if self.project:
      self.proj = conv(in_ch, out_ch, 1, stride)
      self.proj_bn = make_norm(norm, out_ch, dtype=dtype, rngs=rngs)

  def __call__(self, x):
    y = jax.nn.relu(self.bn1(self.conv1(x)))
    y = self.bn2(self.conv2(y))
    shortcut = self.proj_bn(self.proj(x)) if self.project else x
    return jax.nn.relu(y + shortcut)


class ResNetClassifier(nnx.Module):
  """Stem conv -> stages of residual blocks (stride 2 between stages) -> GAP -> linear.

  Input (batch, height, width, channels) in [0, 1]; output logits (batch, num_classes) float32.
  """

  def __init__(self, num_classes: int, *, in_channels: int = 1,
               widths: Sequence[int] = (32, 64, 128), blocks_per_stage: int = 1,
               norm: str = "batch", dtype=jnp.float32, rngs: nnx.Rngs):
    self.stem = nnx.Conv(in_channels, widths[0], (3, 3), padding="SAME", use_bias=False,
                         dtype=dtype, kernel_init=flat_kernel_init(), rngs=rngs)
    self.stem_bn = make_norm(norm, widths[0], dtype=dtype, rngs=rngs)
    blocks = []
    in_ch = widths[0]
    for i, w in enumerate(widths):
      for j in range(blocks_per_stage):
        stride = 2 if (i > 0 and j == 0) else 1
        blocks.append(ResidualBlock(in_ch, w, stride, norm=norm, dtype=dtype, rngs=rngs))
        in_ch = w
    self.blocks = nnx.List(blocks)
    self.head = nnx.Linear(in_ch, num_classes, dtype=dtype, rngs=rngs)
    self.dtype = dtype

  def __call__(self, x: jax.Array) -> jax.Array:
    x = (x.astype(jnp.float32) - 0.5) / 0.25  # roughly zero-mean, unit-scale pixels
    x = jax.nn.relu(self.stem_bn(self.stem(x.astype(self.dtype))))
    for block in self.blocks:
      x = block(x)
    x = x.mean(axis=(1, 2))  # global average pool: (batch, channels)
    return self.head(x).astype(jnp.float32)
