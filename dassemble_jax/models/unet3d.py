"""The anchor's 3D U-Net (Models Genesis layout), channels last (NDHWC).

Layout (base_channels b = 32 in the anchor; 19.07M parameters with one input channel):
  encoder depth d in 0..3: two LUConvs (conv3x3x3 + norm + ReLU), b*2^d then b*2^(d+1)
    channels, a 2x2x2 max pool after depths 0..2  ->  64, 128, 256, 512 channels.
  decoder depth d in 2..0: 2x upsampling (same channels), concat with the encoder's pre-pool
    feature of depth d, two LUConvs to b*2^(d+1) channels  ->  256, 128, 64.
Returns (deepest feature (B, D/8, H/8, W/8, 16b), decoder feature (B, D, H, W, 2b)).

Normalisation: BatchNorm, as the anchor (its `ContBatchNorm3d`, momentum 0.1, eps 1e-5). The
anchor's ContBatchNorm3d *always* uses batch statistics, even in eval mode, and its inference
feeds one window at a time, so each window is normalised by its own statistics. By default
`model.eval()` switches to running averages as ordinary BatchNorm does; `eval_batch_stats=True`
reproduces the anchor (imported checkpoints: its running averages were never used): in eval mode
every sample is normalised by its own mean and (biased) variance, whatever the batch size. Pass
`norm='group'` for GroupNorm (8 groups), which is independent of the batch size (useful for
batch 1-2 per device). Upsampling is `Upsample2x` (a matmul, not a transposed convolution; see
`upsample.py`) with exactly the parameters of the anchor's ConvTranspose3d(k=2, s=2).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from dassemble_jax.models import onednn_conv
from dassemble_jax.models.upsample import Upsample2x, flat_kernel_init


class LUConv(nnx.Module):
  """conv3x3x3 (with bias) -> norm -> ReLU."""

  def __init__(self, in_ch: int, out_ch: int, *, norm: str = "batch", dtype=None,
               eval_batch_stats: bool = False, rngs: nnx.Rngs):
    self.eval_batch_stats = eval_batch_stats and norm == "batch"
    # On the CPU the convolution runs through oneDNN (3x XLA:CPU's; see onednn_conv.py).
    self.conv = nnx.Conv(in_ch, out_ch, kernel_size=(3, 3, 3), padding="SAME", dtype=dtype,
                         kernel_init=flat_kernel_init(), rngs=rngs,
                         conv_general_dilated=onednn_conv.conv_general_dilated)
    if norm == "batch":
      # PyTorch momentum 0.1 == Flax momentum 0.9 (weight of the old running value).
      self.norm = nnx.BatchNorm(out_ch, momentum=0.9, epsilon=1e-5, dtype=dtype, rngs=rngs)
    elif norm == "group":
      self.norm = nnx.GroupNorm(out_ch, num_groups=min(8, out_ch), epsilon=1e-5, dtype=dtype,
                                rngs=rngs)
    else:
      raise ValueError(f"norm must be 'batch' or 'group', got {norm!r}")

  def __call__(self, x):
    y = self.conv(x)
    if self.eval_batch_stats and self.norm.use_running_average:
      return jax.nn.relu(per_sample_batch_norm(y, self.norm))
    return jax.nn.relu(self.norm(y))


def per_sample_batch_norm(x: jax.Array, norm: nnx.BatchNorm) -> jax.Array:
  """What torch's batch_norm(training=True) computes on each sample alone: (B, D, H, W, C)
  normalised over (D, H, W) per sample and channel (biased variance), then scale and bias."""
  x32 = x.astype(jnp.float32)
  mean = x32.mean(axis=(1, 2, 3), keepdims=True)
  var = jnp.square(x32 - mean).mean(axis=(1, 2, 3), keepdims=True)
  y = (x32 - mean) * jax.lax.rsqrt(var + norm.epsilon)
  y = y * norm.scale[...].astype(jnp.float32) + norm.bias[...].astype(jnp.float32)
  return y.astype(x.dtype)


class DownTransition(nnx.Module):
  """Two LUConvs: in -> b*2^d -> b*2^(d+1); max pool after unless it is the deepest level."""

  def __init__(self, in_ch: int, depth: int, base: int, *, pool: bool, norm: str, dtype,
               eval_batch_stats: bool = False, rngs: nnx.Rngs):
    mid, out = base * 2**depth, base * 2**(depth + 1)
    kw = {"norm": norm, "dtype": dtype, "eval_batch_stats": eval_batch_stats, "rngs": rngs}
    self.conv1 = LUConv(in_ch, mid, **kw)
    self.conv2 = LUConv(mid, out, **kw)
    self.pool = pool
    self.out_channels = out

  def __call__(self, x):
    skip = self.conv2(self.conv1(x))
    out = nnx.max_pool(skip, (2, 2, 2), strides=(2, 2, 2)) if self.pool else skip
    return out, skip


class UpTransition(nnx.Module):
  """2x upsample (in -> in channels), concat skip, two LUConvs to b*2^(d+1) channels."""

  def __init__(self, in_ch: int, skip_ch: int, depth: int, base: int, *, norm: str, dtype,
               eval_batch_stats: bool = False, rngs: nnx.Rngs):
    out = base * 2**(depth + 1)
    kw = {"norm": norm, "dtype": dtype, "eval_batch_stats": eval_batch_stats, "rngs": rngs}
    self.up = Upsample2x(in_ch, in_ch, dtype=dtype, rngs=rngs)
    self.conv1 = LUConv(in_ch + skip_ch, out, **kw)
    self.conv2 = LUConv(out, out, **kw)
    self.out_channels = out

  def __call__(self, x, skip):
    # Anchor order: upsampled features first, then the skip (matters for checkpoint import).
    x = self.up(x)
    x = jnp.concatenate([x, skip.astype(x.dtype)], axis=-1)
    return self.conv2(self.conv1(x))


class UNet3D(nnx.Module):
  """Models-Genesis 3D U-Net returning (deepest feature, full-resolution decoder feature).

  Input (B, D, H, W, in_channels) with D, H, W divisible by 8.
  """

  def __init__(self, in_channels: int = 1, *, base_channels: int = 32, norm: str = "batch",
               eval_batch_stats: bool = False, dtype=None, rngs: nnx.Rngs):
    b = base_channels
    kw = {"norm": norm, "dtype": dtype, "eval_batch_stats": eval_batch_stats, "rngs": rngs}
    self.down0 = DownTransition(in_channels, 0, b, pool=True, **kw)   # -> 2b
    self.down1 = DownTransition(2 * b, 1, b, pool=True, **kw)         # -> 4b
    self.down2 = DownTransition(4 * b, 2, b, pool=True, **kw)         # -> 8b
    self.down3 = DownTransition(8 * b, 3, b, pool=False, **kw)        # -> 16b
    self.up2 = UpTransition(16 * b, 8 * b, 2, b, **kw)                # -> 8b
    self.up1 = UpTransition(8 * b, 4 * b, 1, b, **kw)                 # -> 4b
    self.up0 = UpTransition(4 * b, 2 * b, 0, b, **kw)                 # -> 2b
    self.deep_channels = 16 * b
    self.out_channels = 2 * b

  def __call__(self, x):
    # x: (B, D, H, W, C); D, H, W multiples of 8 (three 2x pools).
    if any(s % 8 for s in x.shape[1:4]):
      raise ValueError(f"UNet3D needs spatial sizes divisible by 8, got {x.shape[1:4]}")
    x, s0 = self.down0(x)   # s0: (B, D, H, W, 2b)
    x, s1 = self.down1(x)   # s1: 1/2, 4b
    x, s2 = self.down2(x)   # s2: 1/4, 8b
    deep, _ = self.down3(x)  # (B, D/8, H/8, W/8, 16b)
    y = self.up2(deep, s2)
    y = self.up1(y, s1)
    y = self.up0(y, s0)     # (B, D, H, W, 2b)
    return deep, y
