"""Swin UNETR (Hatamizadeh et al. 2022) in the layout of MONAI's SwinUNETR, channels last.

Defaults are the Universal Model's: feature size 48, depths (2, 2, 2, 2), heads (3, 6, 12, 24),
window 7, patch 2, instance norm in the convolutional encoders/decoders, no dropout/drop path
(the anchor sets all rates to 0). Returns (deepest feature (B, D/32, H/32, W/32, 16f) after
`encoder10`, decoder feature (B, D, H, W, f)); 62.2M parameters at f = 48 (MONAI's count
without its output block).

MONAI behaviours kept on purpose, so the authors' checkpoints import unchanged:
- `patch_merging='merging'` concatenates the eight 2x2x2 sub-grids in MONAI v0.9's order, which
  repeats two sub-grids and drops two (MONAI keeps it as its default 'merging' for
  compatibility); `'mergingv2'` is the correct order.
- A window axis larger than the feature map shrinks to the map size and that axis is not shifted;
  the relative position bias is then indexed with the top-left n x n block of the full 7^3 index,
  as MONAI does.
- Windows padded to a multiple of the window size hold zero tokens that are not masked out.

Everything is vectorised: windows are cut and pasted with reshapes/transposes, attention is one
einsum over (batch * windows, heads), and the shifted-window mask is a NumPy constant computed
once per (shape, window, shift) and cached.
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dassemble_jax.models import onednn_conv
from dassemble_jax.models.upsample import Upsample2x, flat_kernel_init


# ----------------------------------------------------------------------------------------------
# Windows and masks (static shapes -> NumPy, cached).
# ----------------------------------------------------------------------------------------------
def effective_window(size: Sequence[int], window: Sequence[int], shift: Sequence[int]):
  """MONAI's get_window_size: an axis no longer than the window uses the axis, unshifted."""
  win = tuple(s if s <= w else w for s, w in zip(size, window))
  sh = tuple(0 if s <= w else h for s, w, h in zip(size, window, shift))
  return win, sh


def window_partition(x: jax.Array, win: Sequence[int]) -> jax.Array:
  """(B, D, H, W, C) -> (B * nW, wd*wh*ww, C), windows in (d, h, w) raster order.

  Array methods only, so a NumPy input (the static masks) stays NumPy and costs no compile.
  """
  b, d, h, w, c = x.shape
  x = x.reshape(b, d // win[0], win[0], h // win[1], win[1], w // win[2], win[2], c)
  x = x.transpose(0, 1, 3, 5, 2, 4, 6, 7)
  return x.reshape(-1, win[0] * win[1] * win[2], c)


def window_reverse(windows: jax.Array, win: Sequence[int], b: int, d: int, h: int, w: int):
  """Inverse of `window_partition`: (B * nW, N, C) -> (B, D, H, W, C)."""
  c = windows.shape[-1]
  x = windows.reshape(b, d // win[0], h // win[1], w // win[2], win[0], win[1], win[2], c)
  x = x.transpose(0, 1, 4, 2, 5, 3, 6, 7)
  return x.reshape(b, d, h, w, c)


@functools.lru_cache(maxsize=64)
def shifted_window_mask(dims: tuple, win: tuple, shift: tuple) -> np.ndarray:
  """(nW, N, N) additive mask: -100 between tokens from different regions of a shifted map."""
  img = np.zeros((1, *dims, 1), np.float32)
  cnt = 0
  slices = [(slice(-w), slice(-w, -s), slice(-s, None)) for w, s in zip(win, shift)]
  for sd in slices[0]:
    for sh in slices[1]:
      for sw in slices[2]:
        img[:, sd, sh, sw, :] = cnt
        cnt += 1
  regions = window_partition(img, win)[..., 0]  # (nW, N), NumPy
  diff = regions[:, None, :] - regions[:, :, None]
  return np.where(diff != 0, -100.0, 0.0).astype(np.float32)


@functools.lru_cache(maxsize=8)
def relative_position_index(window: tuple) -> np.ndarray:
  """(N, N) index into the ((2wd-1)(2wh-1)(2ww-1), heads) bias table, N = wd*wh*ww."""
  coords = np.stack(np.meshgrid(*[np.arange(w) for w in window], indexing="ij")).reshape(3, -1)
  rel = (coords[:, :, None] - coords[:, None, :]).transpose(1, 2, 0)  # (N, N, 3)
  rel = rel + np.array(window) - 1
  rel[..., 0] *= (2 * window[1] - 1) * (2 * window[2] - 1)
  rel[..., 1] *= 2 * window[2] - 1
  return rel.sum(-1)


def _layer_norm_no_affine(x, eps=1e-5):
  """F.layer_norm(x, [C]) without weights: the 'normalize' step on each stage's output."""
  x32 = x.astype(jnp.float32)
  mean = x32.mean(-1, keepdims=True)
  var = jnp.square(x32 - mean).mean(-1, keepdims=True)
  return ((x32 - mean) * jax.lax.rsqrt(var + eps)).astype(x.dtype)


def _instance_norm(x, eps=1e-5):
  """InstanceNorm3d(affine=False) on (B, D, H, W, C): statistics per sample and channel."""
  x32 = x.astype(jnp.float32)
  mean = x32.mean((1, 2, 3), keepdims=True)
  var = jnp.square(x32 - mean).mean((1, 2, 3), keepdims=True)
  return ((x32 - mean) * jax.lax.rsqrt(var + eps)).astype(x.dtype)


# ----------------------------------------------------------------------------------------------
# Swin transformer.
# ----------------------------------------------------------------------------------------------
class WindowAttention(nnx.Module):
  """Multi-head self-attention inside windows with a learned relative position bias."""

  def __init__(self, dim: int, num_heads: int, window: tuple, *, dtype, rngs: nnx.Rngs):
    self.num_heads = num_heads
    self.window = window
    self.scale = (dim // num_heads) ** -0.5
    n_rel = int(np.prod([2 * w - 1 for w in window]))
    self.relative_position_bias_table = nnx.Param(
        0.02 * jax.random.truncated_normal(rngs.params(), -2.0, 2.0, (n_rel, num_heads)))
    self.qkv = nnx.Linear(dim, 3 * dim, dtype=dtype, rngs=rngs)
    self.proj = nnx.Linear(dim, dim, dtype=dtype, rngs=rngs)

  def __call__(self, x, mask):
    # x: (B*nW, N, C); mask: (nW, N, N) or None.
    bw, n, c = x.shape
    h = self.num_heads
    qkv = self.qkv(x).reshape(bw, n, 3, h, c // h)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # (B*nW, N, heads, hd)
    attn = jnp.einsum("bqhd,bkhd->bhqk", q * self.scale, k)
    # MONAI slices the full-window index for shrunken windows; see the module docstring.
    index = relative_position_index(self.window)[:n, :n].reshape(-1)
    bias = self.relative_position_bias_table[...][index].reshape(n, n, h).transpose(2, 0, 1)
    attn = attn + bias.astype(attn.dtype)
    if mask is not None:
      nw = mask.shape[0]
      attn = attn.reshape(bw // nw, nw, h, n, n) + jnp.asarray(mask, attn.dtype)[None, :, None]
      attn = attn.reshape(bw, h, n, n)
    attn = jax.nn.softmax(attn.astype(jnp.float32), axis=-1).astype(v.dtype)
    out = jnp.einsum("bhqk,bkhd->bqhd", attn, v).reshape(bw, n, c)
    return self.proj(out)


class MLP(nnx.Module):
  def __init__(self, dim: int, hidden: int, *, dtype, rngs: nnx.Rngs):
    self.linear1 = nnx.Linear(dim, hidden, dtype=dtype, rngs=rngs)
    self.linear2 = nnx.Linear(hidden, dim, dtype=dtype, rngs=rngs)

  def __call__(self, x):
    # Exact (erf) GELU, as torch.nn.GELU.
    return self.linear2(jax.nn.gelu(self.linear1(x), approximate=False))


class SwinBlock(nnx.Module):
  """LN -> (shifted) window attention -> residual; LN -> MLP -> residual."""

  def __init__(self, dim: int, num_heads: int, window: tuple, shift: tuple, *, dtype,
               rngs: nnx.Rngs):
    self.window, self.shift = window, shift
    self.norm1 = nnx.LayerNorm(dim, epsilon=1e-5, dtype=dtype, rngs=rngs)
    self.attn = WindowAttention(dim, num_heads, window, dtype=dtype, rngs=rngs)
    self.norm2 = nnx.LayerNorm(dim, epsilon=1e-5, dtype=dtype, rngs=rngs)
    self.mlp = MLP(dim, 4 * dim, dtype=dtype, rngs=rngs)

  def _attend(self, x):
    b, d, h, w, c = x.shape
    win, shift = effective_window((d, h, w), self.window, self.shift)
    pads = [(-s) % ws for s, ws in zip((d, h, w), win)]
    x = jnp.pad(x, ((0, 0), (0, pads[0]), (0, pads[1]), (0, pads[2]), (0, 0)))
    dp, hp, wp = d + pads[0], h + pads[1], w + pads[2]
    shifted = any(s > 0 for s in shift)
    if shifted:
      x = jnp.roll(x, shift=[-s for s in shift], axis=(1, 2, 3))
      mask = shifted_window_mask((dp, hp, wp), win, shift)
    else:
      mask = None
    y = self.attn(window_partition(x, win), mask)
    y = window_reverse(y, win, b, dp, hp, wp)
    if shifted:
      y = jnp.roll(y, shift=list(shift), axis=(1, 2, 3))
    return y[:, :d, :h, :w]

  def __call__(self, x):
    x = x + self._attend(self.norm1(x))
    return x + self.mlp(self.norm2(x))


class PatchMerging(nnx.Module):
  """2x2x2 space-to-depth (8C) -> LayerNorm -> Linear(8C -> 2C, no bias)."""

  # Sub-grid offsets (d, h, w) in concatenation order.
  _ORDERS = {
      "merging": ((0, 0, 0), (1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 0, 1), (0, 1, 0), (0, 0, 1),
                  (1, 1, 1)),
      "mergingv2": tuple((i, j, k) for i in range(2) for j in range(2) for k in range(2)),
  }

  def __init__(self, dim: int, *, order: str = "merging", dtype, rngs: nnx.Rngs):
    if order not in self._ORDERS:
      raise ValueError(f"patch_merging must be one of {sorted(self._ORDERS)}, got {order!r}")
    self.offsets = self._ORDERS[order]
    self.norm = nnx.LayerNorm(8 * dim, epsilon=1e-5, dtype=dtype, rngs=rngs)
    self.reduction = nnx.Linear(8 * dim, 2 * dim, use_bias=False, dtype=dtype, rngs=rngs)

  def __call__(self, x):
    x = jnp.concatenate([x[:, i::2, j::2, k::2] for i, j, k in self.offsets], axis=-1)
    return self.reduction(self.norm(x))


class SwinStage(nnx.Module):
  """`depth` Swin blocks alternating unshifted / half-window-shifted, then patch merging."""

  def __init__(self, dim: int, depth: int, num_heads: int, window: tuple, *, patch_merging: str,
               dtype, rngs: nnx.Rngs):
    half = tuple(w // 2 for w in window)
    self.blocks = nnx.List([
        SwinBlock(dim, num_heads, window, (0, 0, 0) if i % 2 == 0 else half, dtype=dtype,
                  rngs=rngs) for i in range(depth)])
    self.downsample = PatchMerging(dim, order=patch_merging, dtype=dtype, rngs=rngs)

  def __call__(self, x):
    for blk in self.blocks:
      x = blk(x)
    return self.downsample(x)


# ----------------------------------------------------------------------------------------------
# Convolutional encoders/decoders (MONAI UnetResBlock / UnetrBasicBlock / UnetrUpBlock).
# ----------------------------------------------------------------------------------------------
class ResBlock(nnx.Module):
  """conv3-IN-LReLU-conv3-IN + (1x1x1 conv-IN if channels change) -> LReLU(0.01); no biases."""

  def __init__(self, in_ch: int, out_ch: int, *, dtype, rngs: nnx.Rngs):
    conv = functools.partial(nnx.Conv, use_bias=False, padding="SAME", dtype=dtype,
                             kernel_init=flat_kernel_init(), rngs=rngs,
                             conv_general_dilated=onednn_conv.conv_general_dilated)
    self.conv1 = conv(in_ch, out_ch, kernel_size=(3, 3, 3))
    self.conv2 = conv(out_ch, out_ch, kernel_size=(3, 3, 3))
    self.conv3 = conv(in_ch, out_ch, kernel_size=(1, 1, 1)) if in_ch != out_ch else None

  def __call__(self, x):
    y = jax.nn.leaky_relu(_instance_norm(self.conv1(x)), 0.01)
    y = _instance_norm(self.conv2(y))
    res = x if self.conv3 is None else _instance_norm(self.conv3(x))
    return jax.nn.leaky_relu(y + res.astype(y.dtype), 0.01)


class UpBlock(nnx.Module):
  """2x upsample (no bias) -> concat [up, skip] -> ResBlock(2*out -> out)."""

  def __init__(self, in_ch: int, out_ch: int, *, dtype, rngs: nnx.Rngs):
    self.transp_conv = Upsample2x(in_ch, out_ch, use_bias=False, dtype=dtype, rngs=rngs)
    self.conv_block = ResBlock(2 * out_ch, out_ch, dtype=dtype, rngs=rngs)

  def __call__(self, x, skip):
    x = self.transp_conv(x)
    return self.conv_block(jnp.concatenate([x, skip.astype(x.dtype)], axis=-1))


class SwinUNETR(nnx.Module):
  """Swin UNETR backbone: (B, D, H, W, C_in) -> (deep (1/32, 16f), decoder (full, f)).

  Spatial sizes must be divisible by 32 (five 2x reductions).
  """

  def __init__(self, in_channels: int = 1, *, feature_size: int = 48,
               depths: Sequence[int] = (2, 2, 2, 2), num_heads: Sequence[int] = (3, 6, 12, 24),
               window_size: int = 7, patch_size: int = 2, patch_merging: str = "merging",
               dtype=None, rngs: nnx.Rngs):
    if patch_size != 2:
      raise ValueError("the U-shaped decoder assumes patch_size 2")
    if len(depths) != 4 or len(num_heads) != 4:
      raise ValueError("SwinUNETR has exactly four stages")
    f = feature_size
    if f % 12:
      raise ValueError(f"feature_size must be divisible by 12 (as in MONAI), got {f}")
    self.dtype = dtype
    win = (window_size,) * 3
    self.patch_embed = nnx.Conv(in_channels, f, kernel_size=(2, 2, 2), strides=(2, 2, 2),
                                padding="VALID", dtype=dtype, kernel_init=flat_kernel_init(),
                                rngs=rngs, conv_general_dilated=onednn_conv.conv_general_dilated)
    self.stages = nnx.List([
        SwinStage(f * 2**i, depths[i], num_heads[i], win, patch_merging=patch_merging,
                  dtype=dtype, rngs=rngs) for i in range(4)])
    kw = dict(dtype=dtype, rngs=rngs)
    self.encoder1 = ResBlock(in_channels, f, **kw)
    self.encoder2 = ResBlock(f, f, **kw)
    self.encoder3 = ResBlock(2 * f, 2 * f, **kw)
    self.encoder4 = ResBlock(4 * f, 4 * f, **kw)
    self.encoder10 = ResBlock(16 * f, 16 * f, **kw)
    self.decoder5 = UpBlock(16 * f, 8 * f, **kw)
    self.decoder4 = UpBlock(8 * f, 4 * f, **kw)
    self.decoder3 = UpBlock(4 * f, 2 * f, **kw)
    self.decoder2 = UpBlock(2 * f, f, **kw)
    self.decoder1 = UpBlock(f, f, **kw)
    self.deep_channels = 16 * f
    self.out_channels = f

  def __call__(self, x):
    if any(s % 32 for s in x.shape[1:4]):
      raise ValueError(f"SwinUNETR needs spatial sizes divisible by 32, got {x.shape[1:4]}")
    if self.dtype is not None:
      x = x.astype(self.dtype)
    # Swin encoder: hidden[i] at 1/2^(i+1) with f*2^i channels, each layer-normalised.
    h = self.patch_embed(x)
    hidden = [_layer_norm_no_affine(h)]
    for stage in self.stages:
      h = stage(h)
      hidden.append(_layer_norm_no_affine(h))
    enc0 = self.encoder1(x)            # (B, D, H, W, f)
    enc1 = self.encoder2(hidden[0])    # 1/2, f
    enc2 = self.encoder3(hidden[1])    # 1/4, 2f
    enc3 = self.encoder4(hidden[2])    # 1/8, 4f
    deep = self.encoder10(hidden[4])   # 1/32, 16f
    y = self.decoder5(deep, hidden[3])  # 1/16, 8f
    y = self.decoder4(y, enc3)         # 1/8, 4f
    y = self.decoder3(y, enc2)         # 1/4, 2f
    y = self.decoder2(y, enc1)         # 1/2, f
    y = self.decoder1(y, enc0)         # full, f
    return deep, y
