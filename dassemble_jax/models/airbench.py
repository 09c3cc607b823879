"""airbench94's CIFAR-10 network (Keller Jordan, "94% on CIFAR-10 in 3.29 seconds"), in Flax NNX.

  whiten: 2x2 conv 3 -> 24, VALID (32 -> 31), bias; filters = the +-eigenvectors of the 2x2x3
          patch covariance of training images scaled by 1/sqrt(eigenvalue + 5e-4); frozen
  GELU
  3 x ConvGroup(w): 3x3 conv (no bias) -> 2x2 max pool (31 -> 15 -> 7 -> 3) -> BN -> GELU
                    -> 3x3 conv (no bias) -> BN -> GELU;  widths (64, 256, 256)
  global max pool (3x3) -> linear (no bias) -> x 1/9

Our own code from the published architecture, not a port of theirs. BatchNorm as airbench's:
running averages move 40% towards each batch (PyTorch momentum 0.4, i.e. flax momentum 0.6),
eps 1e-12, scale fixed at 1 (only the shift is a parameter). The first `in` filters of every 3x3
conv start as the identity (airbench's partial Dirac init). Inputs are normalised with the
CIFAR-10 channel mean / std, as airbench does; the whitening statistics use the same
normalisation (`normalize`).

The whitening kernel is a `Frozen` variable, a subclass of `nnx.BatchStat`: it travels with the
batch statistics (state['batch_stats']: replicated, checkpointed, never differentiated), so the
optimiser never sees it: no gradient and no weight decay. Its bias is an ordinary parameter.
Until `set_whitening` gives it the data's filters it holds [I, -I] (pixels passed through).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dassemble_jax.models.upsample import flat_kernel_init

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
WHITEN_PATCH = 2                     # 2x2 patches: 2*2*3 = 12 dimensions, 24 filters (+-)
WHITEN_EPS = 5e-4
BN_MOMENTUM = 0.6                    # flax convention: running = 0.6 running + 0.4 batch
BN_EPS = 1e-12
OUTPUT_SCALE = 1.0 / 9.0
INPUT_SHAPE = (32, 32, 3)


class Frozen(nnx.BatchStat):
  """A fixed, data-derived weight: kept with the batch statistics, never trained or decayed."""


def normalize(x):
  """[0, 1] pixels (..., 3) -> CIFAR-10 standardised; NumPy in, NumPy out; JAX likewise."""
  xp = np if isinstance(x, np.ndarray) else jnp
  return (x - xp.asarray(CIFAR_MEAN, x.dtype)) / xp.asarray(CIFAR_STD, x.dtype)


def _unit_float64(images) -> np.ndarray:
  images = np.asarray(images)
  if images.ndim != 4 or images.shape[1:] != INPUT_SHAPE:
    raise ValueError(f"whitening needs (N, 32, 32, 3) images, got shape {images.shape}")
  if images.dtype == np.uint8:
    return images.astype(np.float64) / 255.0
  if not np.issubdtype(images.dtype, np.floating):
    raise ValueError(f"whitening needs uint8 or float images, got {images.dtype}")
  if images.size and (images.min() < 0.0 or images.max() > 1.0):
    raise ValueError("float images must be in [0, 1] (the model's input range), got "
                     f"[{images.min()}, {images.max()}]")
  return images.astype(np.float64)


def patch_covariance(images, chunk: int = 500) -> np.ndarray:
  """(12, 12) float64 second moment of the normalised 2x2x3 patches, in (kh, kw, c) order.

  Uncentred, as airbench's (the normalised pixels are ~zero-mean). Chunked: 5,000 images hold
  4.8 M patches, 460 MB at once in float64.
  """
  x = _unit_float64(images)
  k = WHITEN_PATCH
  dim = k * k * INPUT_SHAPE[2]
  total, count = np.zeros((dim, dim)), 0
  for start in range(0, x.shape[0], chunk):
    z = normalize(x[start:start + chunk])
    win = np.lib.stride_tricks.sliding_window_view(z, (k, k), axis=(1, 2))  # (n,31,31,c,kh,kw)
    p = win.transpose(0, 1, 2, 4, 5, 3).reshape(-1, dim)  # rows in the conv kernel's order
    total += p.T @ p
    count += p.shape[0]
  if count == 0:
    raise ValueError("whitening needs at least one image")
  return total / count


def whitening_kernel(images, eps: float = WHITEN_EPS) -> np.ndarray:
  """(2, 2, 3, 24) float32 filters [V, -V], V = eigenvectors / sqrt(eigenvalues + eps).

  `images`: (N, 32, 32, 3) uint8, or float in [0, 1]; airbench uses the first 5,000 training
  images. The first 12 outputs of the conv are then decorrelated with second moment
  diag(lambda / (lambda + eps)).
  """
  eigval, eigvec = np.linalg.eigh(patch_covariance(images))
  v = eigvec / np.sqrt(eigval + eps)  # (12, 12): column j is filter j
  k = WHITEN_PATCH
  kernel = np.concatenate([v, -v], axis=1).reshape(k, k, INPUT_SHAPE[2], 2 * v.shape[1])
  return kernel.astype(np.float32)


def set_whitening(batch_stats, kernel):
  """`state['batch_stats']` with the whitening kernel replaced (same sharding as before)."""
  old = batch_stats["whiten_kernel"].get_value()
  if tuple(kernel.shape) != tuple(old.shape):
    raise ValueError(f"whitening kernel shape {kernel.shape}, expected {old.shape}")
  new = jnp.asarray(kernel, old.dtype)
  sharding = getattr(old, "sharding", None)
  if sharding is not None:
    new = jax.device_put(new, sharding)
  out = jax.tree.map(lambda x: x, batch_stats)  # fresh Variables: the input stays untouched
  out["whiten_kernel"] = out["whiten_kernel"].replace(new)
  return out


def partial_dirac_init(base=None):
  """Kernel (kh, kw, in, out): filter i < in passes input channel i through unchanged."""
  base = base or flat_kernel_init()

  def init(key, shape, dtype=jnp.float32):
    kh, kw, cin, cout = shape
    w = base(key, shape, dtype)
    n = min(cin, cout)
    eye = jnp.zeros((kh, kw, cin, n), dtype).at[kh // 2, kw // 2].set(jnp.eye(cin, n, dtype=dtype))
    return w.at[..., :n].set(eye)

  return init


def _batch_norm(ch: int, *, dtype, rngs: nnx.Rngs):
  return nnx.BatchNorm(ch, momentum=BN_MOMENTUM, epsilon=BN_EPS, use_scale=False, dtype=dtype,
                       rngs=rngs)


class ConvGroup(nnx.Module):
  """conv3x3 -> maxpool 2 -> BN -> GELU -> conv3x3 -> BN -> GELU: (B,H,W,in) -> (B,H//2,W//2,out)."""

  def __init__(self, in_ch: int, out_ch: int, *, dtype, rngs: nnx.Rngs):
    conv = lambda i, o: nnx.Conv(i, o, (3, 3), padding="SAME", use_bias=False, dtype=dtype,
                                 kernel_init=partial_dirac_init(), rngs=rngs)
    self.conv1 = conv(in_ch, out_ch)
    self.norm1 = _batch_norm(out_ch, dtype=dtype, rngs=rngs)
    self.conv2 = conv(out_ch, out_ch)
    self.norm2 = _batch_norm(out_ch, dtype=dtype, rngs=rngs)

  def __call__(self, x):
    x = nnx.max_pool(self.conv1(x), (2, 2), strides=(2, 2), padding="VALID")
    x = jax.nn.gelu(self.norm1(x), approximate=False)
    return jax.nn.gelu(self.norm2(self.conv2(x)), approximate=False)


class AirbenchClassifier(nnx.Module):
  """Input (B, 32, 32, 3) in [0, 1]; output logits (B, num_classes) float32.

  Same interface as `classifier.ResNetClassifier`. Parameters float32, compute in `dtype`.
  """

  def __init__(self, num_classes: int, *, in_channels: int = 3,
               widths: Sequence[int] = (64, 256, 256), dtype=jnp.float32, rngs: nnx.Rngs):
    if in_channels != INPUT_SHAPE[2] or len(widths) != 3:
      raise ValueError("airbench's network is for 32x32x3 (CIFAR-10) images with three "
                       f"conv groups; got in_channels={in_channels}, widths={tuple(widths)}")
    k, c = WHITEN_PATCH, INPUT_SHAPE[2]
    dim = k * k * c
    eye = np.eye(dim, dtype=np.float32)
    self.whiten_kernel = Frozen(jnp.asarray(
        np.concatenate([eye, -eye], axis=1).reshape(k, k, c, 2 * dim)))
    self.whiten_bias = nnx.Param(jnp.zeros((2 * dim,), jnp.float32))
    groups, in_ch = [], 2 * dim
    for w in widths:
      groups.append(ConvGroup(in_ch, w, dtype=dtype, rngs=rngs))
      in_ch = w
    self.groups = nnx.List(groups)
    self.head = nnx.Linear(in_ch, num_classes, use_bias=False, dtype=dtype,
                           kernel_init=flat_kernel_init(), rngs=rngs)
    self.dtype = dtype

  def __call__(self, x: jax.Array) -> jax.Array:
    if tuple(x.shape[1:]) != INPUT_SHAPE:
      raise ValueError(f"airbench's network takes (B, 32, 32, 3) images, got {x.shape}")
    x = normalize(x.astype(jnp.float32)).astype(self.dtype)
    # The kernel is not a Param (never differentiated); stop_gradient states it here too.
    kernel = jax.lax.stop_gradient(self.whiten_kernel[...]).astype(self.dtype)
    x = jax.lax.conv_general_dilated(x, kernel, (1, 1), "VALID",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    x = jax.nn.gelu(x + self.whiten_bias[...].astype(self.dtype), approximate=False)
    for group in self.groups:  # (B,31,31,24) -> (B,15,15,w0) -> (B,7,7,w1) -> (B,3,3,w2)
      x = group(x)
    x = x.max(axis=(1, 2))  # global max pool: (B, w2)
    return (self.head(x) * OUTPUT_SCALE).astype(jnp.float32)


def forward_flops(widths: Sequence[int] = (64, 256, 256), num_classes: int = 10) -> int:
  """Forward FLOPs per image of the convolutions and the head (2 per multiply-add).

  Normalisation, GELU and pooling (~1% more) are not counted, as in the ResNet's count.
  """
  k, c = WHITEN_PATCH, INPUT_SHAPE[2]
  side = INPUT_SHAPE[0] - k + 1  # 31
  in_ch = 2 * k * k * c
  macs = side * side * in_ch * k * k * c  # whiten
  for w in widths:
    macs += side * side * 9 * in_ch * w  # conv1 at the group's input size
    side //= 2
    macs += side * side * 9 * w * w      # conv2 after the pool
    in_ch = w
  macs += in_ch * num_classes
  return 2 * macs
