"""DenseNet-121 (Huang et al. 2017) in Flax NNX, channels last: the chest X-ray backbone.

The anchor's COVID pipeline and CheXNet use torchvision's densenet121: a 7x7/2 stem conv, 3x3/2
max pool, four dense blocks of (6, 12, 24, 16) layers (BN-ReLU-1x1 conv to 4 x 32 channels,
BN-ReLU-3x3 conv to 32 new channels, concatenated), transitions that halve channels and size
(BN-ReLU-1x1 conv-2x2 average pool), a final BN-ReLU, global average pooling and one linear
layer. With 3 input channels and a 1000-class head that is 7,978,856 parameters, torchvision's
count (BatchNorm scale and bias included, running statistics not), the paper's 7.98 M; chest
X-rays use 1 channel and one sigmoid per class. Widths, depths and the norm are options so the
same code runs tiny on a CPU. Parameters stay float32; `dtype` sets the compute precision
(bfloat16 on accelerators). No ImageNet weights: they cannot be fetched here.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx
from flax.linen import avg_pool, max_pool

from dassemble_jax.models.classifier import make_norm
from dassemble_jax.models.upsample import flat_kernel_init

DENSENET121 = {"growth_rate": 32, "block_config": (6, 12, 24, 16), "num_init_features": 64,
               "bn_size": 4}


def _conv(in_ch: int, out_ch: int, k: int, stride: int, *, dtype, rngs: nnx.Rngs):
  # He init as torchvision; the kernel drawn 2-D (4-D threefry compiles for seconds per shape).
  return nnx.Conv(in_ch, out_ch, (k, k), strides=(stride, stride),
                  padding=[(k // 2, k // 2)] * 2, use_bias=False, dtype=dtype,
                  kernel_init=flat_kernel_init(nnx.initializers.kaiming_normal()), rngs=rngs)


class DenseLayer(nnx.Module):
  """BN-ReLU-1x1 conv (bn_size * growth) - BN-ReLU-3x3 conv (growth); returns the new maps."""

  def __init__(self, in_ch: int, growth: int, bn_size: int, *, norm: str, dtype,
               rngs: nnx.Rngs):
    self.norm1 = make_norm(norm, in_ch, dtype=dtype, rngs=rngs)
    self.conv1 = _conv(in_ch, bn_size * growth, 1, 1, dtype=dtype, rngs=rngs)
    self.norm2 = make_norm(norm, bn_size * growth, dtype=dtype, rngs=rngs)
    self.conv2 = _conv(bn_size * growth, growth, 3, 1, dtype=dtype, rngs=rngs)

  def __call__(self, x):
    y = self.conv1(jax.nn.relu(self.norm1(x)))
    return self.conv2(jax.nn.relu(self.norm2(y)))


class Transition(nnx.Module):
  """BN-ReLU-1x1 conv to `out_ch` - 2x2 average pool (halves height and width)."""

  def __init__(self, in_ch: int, out_ch: int, *, norm: str, dtype, rngs: nnx.Rngs):
    self.norm = make_norm(norm, in_ch, dtype=dtype, rngs=rngs)
    self.conv = _conv(in_ch, out_ch, 1, 1, dtype=dtype, rngs=rngs)

  def __call__(self, x):
    return avg_pool(self.conv(jax.nn.relu(self.norm(x))), (2, 2), strides=(2, 2))


class DenseNet(nnx.Module):
  """Input (batch, height, width, channels) in [0, 1]; output logits (batch, classes) float32."""

  def __init__(self, num_classes: int, *, in_channels: int = 1, growth_rate: int = 32,
               block_config: Sequence[int] = (6, 12, 24, 16), num_init_features: int = 64,
               bn_size: int = 4, norm: str = "batch", dtype=jnp.float32, rngs: nnx.Rngs):
    self.stem = _conv(in_channels, num_init_features, 7, 2, dtype=dtype, rngs=rngs)
    self.stem_norm = make_norm(norm, num_init_features, dtype=dtype, rngs=rngs)
    blocks, transitions = [], []
    ch = num_init_features
    for i, num_layers in enumerate(block_config):
      layers = []
      for _ in range(num_layers):
        layers.append(DenseLayer(ch, growth_rate, bn_size, norm=norm, dtype=dtype, rngs=rngs))
        ch += growth_rate
      blocks.append(nnx.List(layers))
      if i != len(block_config) - 1:
        transitions.append(Transition(ch, ch // 2, norm=norm, dtype=dtype, rngs=rngs))
        ch //= 2
    self.blocks = nnx.List(blocks)
    self.transitions = nnx.List(transitions)
    self.final_norm = make_norm(norm, ch, dtype=dtype, rngs=rngs)
    self.head = nnx.Linear(ch, num_classes, dtype=dtype, bias_init=nnx.initializers.zeros,
                           rngs=rngs)
    self.num_features = ch
    self.dtype = dtype

  def features(self, x: jax.Array) -> jax.Array:
    """(batch, num_features) globally pooled features."""
    x = (x.astype(jnp.float32) - 0.5) / 0.25  # roughly zero-mean, unit-scale pixels
    x = jax.nn.relu(self.stem_norm(self.stem(x.astype(self.dtype))))
    x = max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    for i, block in enumerate(self.blocks):
      for layer in block:
        # Dense connectivity: each layer sees every earlier map of its block.
        x = jnp.concatenate([x, layer(x)], axis=-1)
      if i < len(self.transitions):
        x = self.transitions[i](x)
    x = jax.nn.relu(self.final_norm(x))
    return x.mean(axis=(1, 2))

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.head(self.features(x)).astype(jnp.float32)


def densenet121(num_classes: int, *, in_channels: int = 1, norm: str = "batch",
                dtype=jnp.float32, rngs: nnx.Rngs) -> DenseNet:
  return DenseNet(num_classes, in_channels=in_channels, norm=norm, dtype=dtype, rngs=rngs,
                  **DENSENET121)


def count_params(model: nnx.Module) -> int:
  """Trainable parameters (nnx.Param leaves; BatchNorm running statistics excluded)."""
  return sum(int(x.size) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
