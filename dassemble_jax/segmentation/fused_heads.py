"""The 32-class dynamic heads and the loss's per-class sums in one GPU kernel (Pallas/Triton).

At full resolution the dynamic heads (`universal_head.dynamic_heads`) turn the 8-channel head
input into K x 8 hidden channels twice: for 2 x 96^3 voxels and 32 classes every hidden layer is
~0.9 GB in bfloat16, written and read again by the forward and backward passes (2.9 GB of
temporaries for the heads + loss with `dynamic_heads_blockdiag`, 4.5 GB with the einsums). Here a
kernel walks tiles of voxels, runs all classes' three-layer MLPs on the tile with tensor-core
matmuls (16 classes x 8 channels = 128-wide block-diagonal products), and keeps only what the
loss needs: per (sample, class) sums

  stats[b, k] = (sum_s bce(z, y), sum_s sigmoid(z) * y, sum_s sigmoid(z), sum_s y)

where z are the logits and y the class's bit of the packed uint32 label. The Masked BCE + Dice
(`seg_losses.partial_label_loss`) is a function of these sums alone, so it is computed from them in
plain JAX. The backward kernel recomputes the tile's activations, turns d(loss)/d(stats) into
d(loss)/dz per voxel, and back-propagates through the three layers, accumulating the generated
weights' gradients per program. Nothing of size voxels x classes ever reaches memory.

Measured on an H100 (`benchmarks/universal_step.md`): 0.2 GB instead of 2.9 GB, but 11.4 ms
against the block-diagonal XLA form's 8.0 ms (the backward recomputes the layers, and the
128-wide block-diagonal dots waste 15/16 of their multiply-adds), so `model.head_impl='fused'`
is for memory-bound settings; the default stays 'blockdiag'.

`head_loss_stats` is the op (custom VJP); `partial_label_loss_from_heads` the training loss.
On other backends (and with `impl='reference'`) the same function runs as plain XLA
(`reference_stats`), so a config that asks for the fused heads trains anywhere; tests compare
the kernel (in Pallas interpret mode) with the reference in value and gradient.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import pallas as pl

from dassemble_jax.ct import bitmask
from dassemble_jax.models import universal_head as uh
from dassemble_jax.segmentation import seg_losses

GROUP = 16          # classes per kernel group: 16 x 8 hidden channels = 128-wide tiles
WIDTH = GROUP * uh.HEAD_CHANNELS  # 128
IN_PAD = 16         # head input channels 8, padded to the smallest tensor-core dot size
NUM_STATS = 4       # bce sum, sum(s * y), sum(s), sum(y)
MAX_LABEL_BITS = 32  # classes come from one uint32 bitmask per voxel


# ------------------------------------------------------------------------------------------------
# Reference: the same sums from the plain heads (any backend; the tests' ground truth).

def stats_from_logits(logits: jax.Array, y: jax.Array) -> jax.Array:
  """logits, y (B, S, K) -> (B, K, 4) float32 sums over the voxels."""
  z = logits.astype(jnp.float32)
  s = jax.nn.sigmoid(z)
  bce = jnp.maximum(z, 0.0) - z * y + jnp.log1p(jnp.exp(-jnp.abs(z)))
  return jnp.stack([bce.sum(1), (s * y).sum(1), s.sum(1), y.sum(1)], axis=-1)


def reference_stats(features: jax.Array, theta: jax.Array, bits: jax.Array) -> jax.Array:
  """features (B, S, 8), theta (B, K, 153), bits (B, S) uint32 -> (B, K, 4), plain XLA."""
  b, s, c = features.shape
  logits = uh.dynamic_heads_blockdiag(features.reshape(b, s, 1, 1, c), theta)
  return stats_from_logits(logits.reshape(b, s, -1), bitmask.unpack_jax(bits, theta.shape[1]))


# ------------------------------------------------------------------------------------------------
# Generated weights, laid out for the kernel: G groups of 16 classes.

def _group_weights(theta: jax.Array, dtype):
  """theta (B, K, 153) -> per-group matrices for 128-wide tiles (K padded to G * 16 classes).

  w1 (B, G, 16, 128): [i, (c, o)] = W1_k[o, i] (rows i >= 8 zero: the input padding);
  w2 (B, G, 128, 128): block diagonal, [(c, i), (c, o)] = W2_k[o, i];
  w3 (B, G, 128, 16): [(c, i), c] = W3_k[0, i]; biases b1, b2 (B, G, 128), b3 (B, G, 16);
  with k = g * 16 + c. Padded classes have all-zero weights.
  """
  b, k = theta.shape[:2]
  g = -(-k // GROUP)
  theta = jnp.pad(theta.astype(jnp.float32), ((0, 0), (0, g * GROUP - k), (0, 0)))
  w1, w2, w3, b1, b2, b3 = uh.split_head_params(theta)         # (B, Kp, 8, 8) ... (B, Kp, 1)
  c = uh.HEAD_CHANNELS
  w1 = w1.reshape(b, g, GROUP, c, c).transpose(0, 1, 4, 2, 3).reshape(b, g, c, WIDTH)
  w1 = jnp.pad(w1, ((0, 0), (0, 0), (0, IN_PAD - c), (0, 0)))
  eye = jnp.eye(GROUP, dtype=jnp.float32)
  w2 = jnp.einsum("cd,bgcoi->bgcido", eye, w2.reshape(b, g, GROUP, c, c))
  w2 = w2.reshape(b, g, WIDTH, WIDTH)
  w3 = jnp.einsum("cd,bgci->bgcid", eye, w3.reshape(b, g, GROUP, c)).reshape(b, g, WIDTH, GROUP)
  cast = lambda x: x.astype(dtype)
  return (cast(w1), cast(w2), cast(w3), b1.reshape(b, g, WIDTH), b2.reshape(b, g, WIDTH),
          b3.reshape(b, g, GROUP))


def _theta_grad(dw1, dw2, dw3, db1, db2, db3, num_classes: int) -> jax.Array:
  """The kernel's per-group weight gradients (summed over programs) -> (B, K, 153)."""
  b, g = dw1.shape[:2]
  c = uh.HEAD_CHANNELS
  kp = g * GROUP
  # dw1 (B, G, 16, 128) [i, (c, o)] -> (B, Kp, o, i).
  gw1 = dw1[:, :, :c].reshape(b, g, c, GROUP, c).transpose(0, 1, 3, 4, 2).reshape(b, kp, c * c)
  # dw2 (B, G, 128, 16) [(c, i), o] (o < 8) -> (B, Kp, o, i).
  gw2 = dw2[..., :c].reshape(b, g, GROUP, c, c).transpose(0, 1, 2, 4, 3).reshape(b, kp, c * c)
  gw3 = dw3.reshape(b, kp, c)
  parts = (gw1, gw2, gw3, db1.reshape(b, kp, c), db2.reshape(b, kp, c), db3.reshape(b, kp, 1))
  return jnp.concatenate(parts, axis=-1)[:, :num_classes]


# ------------------------------------------------------------------------------------------------
# The kernels. One program: one sample, `tiles` consecutive tiles of `tile` voxels.

def _class_bits(bits, g: int, num_classes: int):
  """(T,) int32 label bits -> (T, 16) float32 targets of group g's classes."""
  cls = g * GROUP + jnp.arange(GROUP, dtype=jnp.int32)
  shift = jnp.minimum(cls, MAX_LABEL_BITS - 1)
  y = jnp.right_shift(bits[:, None], shift[None, :]) & 1
  return jnp.where((cls < num_classes)[None, :], y, 0).astype(jnp.float32)


def _forward_tile(f, w1, w2, w3, b1, b2, b3, dtype):
  """The 16 classes' heads on one tile: f (T, 16) -> pre-activations and logits (T, 16)."""
  dot = functools.partial(jnp.dot, preferred_element_type=jnp.float32)
  a1 = dot(f, w1) + b1[None, :]                        # (T, 128)
  h1 = jnp.maximum(a1, 0.0).astype(dtype)
  a2 = dot(h1, w2) + b2[None, :]                       # (T, 128)
  h2 = jnp.maximum(a2, 0.0).astype(dtype)
  z = dot(h2, w3) + b3[None, :]                        # (T, 16)
  return a1, h1, a2, h2, z


def _load_tile(f_ref, bits_ref, program, start, tile: int, tiles: int, num_voxels: int):
  """Tile `start` of this program: features (T, 16), label bits (T,), in-volume mask (T, 1)."""
  f = f_ref[pl.ds(start, tile), :]
  bits = bits_ref[pl.ds(start, tile)]
  voxel = program * tile * tiles + start + jnp.arange(tile, dtype=jnp.int32)
  return f, bits, (voxel < num_voxels)[:, None]


def _stats_kernel(f_ref, bits_ref, w1_ref, w2_ref, w3_ref, b1_ref, b2_ref, b3_ref, out_ref, *,
                  tile, tiles, groups, num_voxels, num_classes, dtype):
  p = pl.program_id(1)
  zeros = jnp.zeros((GROUP,), jnp.float32)

  def body(t, acc):
    start = t * tile
    f, bits, valid = _load_tile(f_ref, bits_ref, p, start, tile, tiles, num_voxels)
    acc = list(acc)
    for g in range(groups):
      _, _, _, _, z = _forward_tile(f, w1_ref[g], w2_ref[g], w3_ref[g], b1_ref[g], b2_ref[g],
                                    b3_ref[g], dtype)
      y = _class_bits(bits, g, num_classes)
      s = jax.nn.sigmoid(z)
      bce = jnp.maximum(z, 0.0) - z * y + jnp.log1p(jnp.exp(-jnp.abs(z)))
      for j, v in enumerate((bce, s * y, s, y)):
        acc[g * NUM_STATS + j] = acc[g * NUM_STATS + j] + jnp.sum(jnp.where(valid, v, 0.0), 0)
    return tuple(acc)

  acc = jax.lax.fori_loop(0, tiles, body, (zeros,) * (groups * NUM_STATS))
  for g in range(groups):
    for j in range(NUM_STATS):
      out_ref[g, j, :] = acc[g * NUM_STATS + j]


def _grad_kernel(f_ref, bits_ref, w1_ref, w2_ref, w3_ref, b1_ref, b2_ref, b3_ref, dstats_ref,
                 df_ref, dw1_ref, dw2_ref, dw3_ref, db1_ref, db2_ref, db3_ref, *,
                 tile, tiles, groups, num_voxels, num_classes, dtype):
  p = pl.program_id(1)
  dot = functools.partial(jnp.dot, preferred_element_type=jnp.float32)
  c = uh.HEAD_CHANNELS
  row = jnp.arange(WIDTH, dtype=jnp.int32)
  # Keeps the diagonal blocks of a (128, 128) product and folds each onto 8 columns: (128, 16).
  fold = ((row[:, None] % c) == jnp.arange(GROUP, dtype=jnp.int32)[None, :]).astype(jnp.float32)
  same_class = (row[:, None] // c) == (row[None, :] // c)                        # (128, 128)
  own_class = (row[:, None] // c) == jnp.arange(GROUP, dtype=jnp.int32)[None, :]  # (128, 16)

  def body(t, acc):
    start = t * tile
    f, bits, valid = _load_tile(f_ref, bits_ref, p, start, tile, tiles, num_voxels)
    acc = list(acc)
    df = jnp.zeros((tile, IN_PAD), jnp.float32)
    for g in range(groups):
      w1, w2, w3 = w1_ref[g], w2_ref[g], w3_ref[g]
      a1, h1, a2, h2, z = _forward_tile(f, w1, w2, w3, b1_ref[g], b2_ref[g], b3_ref[g], dtype)
      y = _class_bits(bits, g, num_classes)
      s = jax.nn.sigmoid(z)
      # d(stats)/dz: bce' = s - y; d(s y) = s(1-s) y; d(s) = s(1-s); sum(y) does not depend on z.
      d_bce, d_sy, d_s = dstats_ref[g, 0, :], dstats_ref[g, 1, :], dstats_ref[g, 2, :]
      dz = d_bce[None, :] * (s - y) + (d_sy[None, :] * y + d_s[None, :]) * (s * (1.0 - s))
      dz = jnp.where(valid, dz, 0.0)
      dzc = dz.astype(dtype)
      da2 = jnp.where(a2 > 0, dot(dzc, w3.T), 0.0)     # (T, 128)
      da2c = da2.astype(dtype)
      da1 = jnp.where(a1 > 0, dot(da2c, w2.T), 0.0)    # (T, 128)
      da1c = da1.astype(dtype)
      df = df + dot(da1c, w1.T)                        # (T, 16)
      k = g * 6
      acc[k] = acc[k] + dot(f.T, da1c)                 # (16, 128)
      acc[k + 1] = acc[k + 1] + dot(jnp.where(same_class, dot(h1.T, da2c), 0.0), fold)
      acc[k + 2] = acc[k + 2] + jnp.sum(jnp.where(own_class, dot(h2.T, dzc), 0.0), axis=1)
      acc[k + 3] = acc[k + 3] + jnp.sum(da1, axis=0)
      acc[k + 4] = acc[k + 4] + jnp.sum(da2, axis=0)
      acc[k + 5] = acc[k + 5] + jnp.sum(dz, axis=0)
    df_ref[pl.ds(start, tile), :] = df.astype(df_ref.dtype)
    return tuple(acc)

  init = []
  for _ in range(groups):
    init += [jnp.zeros((IN_PAD, WIDTH), jnp.float32), jnp.zeros((WIDTH, GROUP), jnp.float32),
             jnp.zeros((WIDTH,), jnp.float32), jnp.zeros((WIDTH,), jnp.float32),
             jnp.zeros((WIDTH,), jnp.float32), jnp.zeros((GROUP,), jnp.float32)]
  acc = jax.lax.fori_loop(0, tiles, body, tuple(init))
  for g in range(groups):
    for j, ref in enumerate((dw1_ref, dw2_ref, dw3_ref, db1_ref, db2_ref, db3_ref)):
      ref[g] = acc[g * 6 + j]


# ------------------------------------------------------------------------------------------------
# pallas_call wrappers.

# (voxels per tile, tiles per program, Triton warps); benchmarks/heads_loss.py compares others.
DEFAULT_KERNEL = (128, 8, 8)


def _layout(features, bits, tile: int, tiles: int):
  """Pads the voxel axis to whole programs; features to 16 channels; bits to int32."""
  _, s, c = features.shape
  chunk = tile * tiles
  programs = -(-s // chunk)
  pad = programs * chunk - s
  f = jnp.pad(features, ((0, 0), (0, pad), (0, IN_PAD - c)))
  bits = jnp.pad(jax.lax.bitcast_convert_type(bits.astype(jnp.uint32), jnp.int32),
                 ((0, 0), (0, pad)))
  return f, bits, programs, chunk


def _specs(groups: int, chunk: int):
  per_program = lambda *shape: pl.BlockSpec((None, *shape), lambda b, p: (b,) + (0,) * len(shape))
  return [
      pl.BlockSpec((None, chunk, IN_PAD), lambda b, p: (b, p, 0)),
      pl.BlockSpec((None, chunk), lambda b, p: (b, p)),
      per_program(groups, IN_PAD, WIDTH), per_program(groups, WIDTH, WIDTH),
      per_program(groups, WIDTH, GROUP), per_program(groups, WIDTH), per_program(groups, WIDTH),
      per_program(groups, GROUP),
  ]


def _partial_spec(*shape):
  """A per-(sample, program) output block of `shape`, summed over programs afterwards."""
  return pl.BlockSpec((None, None, *shape), lambda b, p: (b, p) + (0,) * len(shape))


def _compiler_params(num_warps: int, interpret: bool):
  if interpret:
    return None
  from jax.experimental.pallas import triton as plgpu
  return plgpu.CompilerParams(num_warps=num_warps, num_stages=1)


def _prepare(kernel_fn, features, theta, bits, tile: int, tiles: int):
  """What both kernels take: the bound kernel body, its array inputs, groups, programs, chunk."""
  k = theta.shape[1]
  weights = _group_weights(theta, features.dtype)
  groups = weights[0].shape[1]
  f, ibits, programs, chunk = _layout(features, bits, tile, tiles)
  body = functools.partial(kernel_fn, tile=tile, tiles=tiles, groups=groups,
                           num_voxels=features.shape[1], num_classes=k, dtype=features.dtype)
  return body, (f, ibits, *weights), groups, programs, chunk


def _pallas_stats(features, theta, bits, *, kernel, interpret):
  tile, tiles, warps = kernel
  b, k = theta.shape[:2]
  body, inputs, groups, programs, chunk = _prepare(_stats_kernel, features, theta, bits, tile,
                                                   tiles)
  out = pl.pallas_call(
      body, grid=(b, programs), in_specs=_specs(groups, chunk),
      out_specs=_partial_spec(groups, NUM_STATS, GROUP),
      out_shape=jax.ShapeDtypeStruct((b, programs, groups, NUM_STATS, GROUP), jnp.float32),
      compiler_params=_compiler_params(warps, interpret), interpret=interpret,
      name="dynamic_heads_loss_stats")(*inputs)
  # (B, G, 4, 16) -> (B, K, 4)
  return out.sum(1).transpose(0, 1, 3, 2).reshape(b, groups * GROUP, NUM_STATS)[:, :k]


def _pallas_grads(features, theta, bits, dstats, *, kernel, interpret):
  tile, tiles, warps = kernel
  b, s, c = features.shape
  k = theta.shape[1]
  body, inputs, groups, programs, chunk = _prepare(_grad_kernel, features, theta, bits, tile,
                                                   tiles)
  # (B, K, 4) -> (B, G, 4, 16), padded classes with zero cotangent.
  ds = jnp.pad(dstats.astype(jnp.float32), ((0, 0), (0, groups * GROUP - k), (0, 0)))
  ds = ds.reshape(b, groups, GROUP, NUM_STATS).transpose(0, 1, 3, 2)
  shapes = ((groups, IN_PAD, WIDTH), (groups, WIDTH, GROUP), (groups, WIDTH), (groups, WIDTH),
            (groups, WIDTH), (groups, GROUP))
  out = pl.pallas_call(
      body, grid=(b, programs),
      in_specs=_specs(groups, chunk) + [pl.BlockSpec((None, groups, NUM_STATS, GROUP),
                                                     lambda b, p: (b, 0, 0, 0))],
      out_specs=[pl.BlockSpec((None, chunk, IN_PAD), lambda b, p: (b, p, 0))]
      + [_partial_spec(*shape) for shape in shapes],
      out_shape=[jax.ShapeDtypeStruct((b, programs * chunk, IN_PAD), jnp.float32)]
      + [jax.ShapeDtypeStruct((b, programs, *shape), jnp.float32) for shape in shapes],
      compiler_params=_compiler_params(warps, interpret), interpret=interpret,
      name="dynamic_heads_loss_grads")(*inputs, ds)
  df, partials = out[0], [x.sum(1) for x in out[1:]]
  dtheta = _theta_grad(*partials, num_classes=k)
  return df[:, :s, :c].astype(features.dtype), dtheta.astype(theta.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _kernel_stats(features, theta, bits, kernel, interpret):
  return _pallas_stats(features, theta, bits, kernel=kernel, interpret=interpret)


def _kernel_stats_fwd(features, theta, bits, kernel, interpret):
  return _kernel_stats(features, theta, bits, kernel, interpret), (features, theta, bits)


def _kernel_stats_bwd(kernel, interpret, residuals, dstats):
  features, theta, bits = residuals
  df, dtheta = _pallas_grads(features, theta, bits, dstats, kernel=kernel, interpret=interpret)
  return df, dtheta, None  # integer labels: no cotangent


_kernel_stats.defvjp(_kernel_stats_fwd, _kernel_stats_bwd)


# ------------------------------------------------------------------------------------------------
# Public API.

IMPLS = ("auto", "pallas", "interpret", "reference")


def head_loss_stats(features: jax.Array, theta: jax.Array, bits: jax.Array, *,
                    impl: str = "auto", kernel: tuple[int, int, int] = DEFAULT_KERNEL,
                    mesh: jax.sharding.Mesh | None = None) -> jax.Array:
  """Per-(sample, class) loss sums of the dynamic heads, differentiable in features and theta.

  Args:
    features: (B, D, H, W, 8) or (B, S, 8) head input (its dtype is the matmul dtype).
    theta: (B, K, 153) generated head parameters (K <= 32 classes have a label bit).
    bits: (B, D, H, W) or (B, S) uint32 labels, bit k = class k.
    impl: 'pallas' (the GPU kernel), 'interpret' (the kernel in Pallas' interpreter: tests),
      'reference' (plain XLA), 'auto' (pallas on GPU, reference elsewhere).
    kernel: (voxels per tile, tiles per program, Triton warps).
    mesh: with a multi-device mesh the op runs per shard of the 'data' (batch) axis.

  Returns:
    (B, K, 4) float32: sum_s BCE(z, y), sum_s sigmoid(z) y, sum_s sigmoid(z), sum_s y.
  """
  if impl not in IMPLS:
    raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
  b = features.shape[0]
  f = features.reshape(b, -1, features.shape[-1])
  bits = bits.reshape(b, -1)
  if f.shape[1] != bits.shape[1]:
    raise ValueError(f"features {features.shape} and label bits {bits.shape} differ in voxels")
  if impl == "auto":
    impl = "pallas" if jax.default_backend() == "gpu" else "reference"
  if impl == "reference":
    return reference_stats(f, theta, bits)
  fn = functools.partial(_kernel_stats, kernel=tuple(kernel), interpret=impl == "interpret")
  if mesh is not None and mesh.size > 1:
    # The kernel is per sample: run it on each device's share of the batch.
    spec = jax.sharding.PartitionSpec("data")
    # check_vma=False: pallas_call outputs carry no varying-axis annotation.
    fn = jax.shard_map(fn, mesh=mesh, in_specs=(spec, spec, spec), out_specs=spec,
                       check_vma=False)
  return fn(f, theta, bits)


def loss_from_stats(stats: jax.Array, annotated: jax.Array, num_voxels: int, *,
                    smooth: float = 1.0, bce_weight: float = 1.0,
                    dice_weight: float = 1.0) -> seg_losses.SegLoss:
  """`seg_losses.partial_label_loss` from the per-pair sums: the same numbers (tested)."""
  mask = annotated.astype(jnp.float32)
  bce_sum, inter, prob_sum, label_sum = (stats[..., j] for j in range(NUM_STATS))
  bce = seg_losses.masked_mean(bce_sum / num_voxels, mask)
  dice = seg_losses.masked_mean(1.0 - 2.0 * inter / (prob_sum + label_sum + smooth), mask)
  return seg_losses.SegLoss(total=bce_weight * bce + dice_weight * dice, bce=bce, dice=dice,
                        num_pairs=jnp.sum(mask))


def partial_label_loss_from_heads(features, theta, bits, annotated, *, impl: str = "auto",
                                  kernel=DEFAULT_KERNEL, mesh=None) -> seg_losses.SegLoss:
  """Masked BCE + Dice of the dynamic heads' logits without materialising them."""
  stats = head_loss_stats(features, theta, bits, impl=impl, kernel=kernel, mesh=mesh)
  num_voxels = int(np.prod(features.shape[1:-1]))
  return loss_from_stats(stats, annotated, num_voxels)
