"""Masked partial-label BCE + Dice for multi-channel 3D segmentation.

Each sample comes from a source that annotates only some classes; `annotated` (B, C) says which.
Both terms average over exactly the annotated (sample, class) pairs, so a class a source does not
label contributes neither a positive nor a negative signal for that sample.

The Dice sums run over the whole 3D crop of one (sample, class) pair. The anchor summed per slice
by mistake (its loss stalled near 0.8); the test checks the whole-crop value by hand.

Everything is computed in float32 whatever the logits' dtype (bf16 logits from a mixed-precision
model are upcast first), and BCE uses the log-sum-exp form, so large logits cannot overflow.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp

_SPATIAL_AXES = (1, 2, 3)  # (batch, depth, height, width, channels): D, H, W


class SegLoss(NamedTuple):
  """The total loss and its parts (scalars, float32)."""
  total: jax.Array
  bce: jax.Array
  dice: jax.Array
  num_pairs: jax.Array  # number of annotated (sample, class) pairs in the batch


def masked_mean(per_pair: jax.Array, mask: jax.Array) -> jax.Array:
  """Mean of (B, C) values over mask; 0 (with zero gradient) when nothing is annotated."""
  # max(count, 1) keeps the all-unannotated batch finite: the numerator is then exactly 0 and
  # every gradient path is multiplied by mask == 0.
  return jnp.sum(per_pair * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def bce_per_pair(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """Voxel-mean BCE-with-logits per (sample, class): (B, D, H, W, C) -> (B, C), float32."""
  z = logits.astype(jnp.float32)
  y = targets.astype(jnp.float32)
  # max(z, 0) - z*y + log(1 + exp(-|z|)): the stable form of -y log s(z) - (1-y) log(1-s(z)).
  per_voxel = jnp.maximum(z, 0.0) - z * y + jnp.log1p(jnp.exp(-jnp.abs(z)))
  return jnp.mean(per_voxel, axis=_SPATIAL_AXES)


def dice_per_pair(logits: jax.Array, targets: jax.Array, smooth: float = 1.0) -> jax.Array:
  """Soft Dice loss per (sample, class) over the whole 3D crop: (B, D, H, W, C) -> (B, C)."""
  s = jax.nn.sigmoid(logits.astype(jnp.float32))
  y = targets.astype(jnp.float32)
  intersection = jnp.sum(s * y, axis=_SPATIAL_AXES)
  denominator = jnp.sum(s, axis=_SPATIAL_AXES) + jnp.sum(y, axis=_SPATIAL_AXES) + smooth
  return 1.0 - 2.0 * intersection / denominator


def partial_label_loss(logits: jax.Array, targets: jax.Array, annotated: jax.Array, *,
                       smooth: float = 1.0, bce_weight: float = 1.0,
                       dice_weight: float = 1.0) -> SegLoss:
  """Masked BCE + Dice over the annotated (sample, class) pairs.

  Args:
    logits: (B, D, H, W, C) any float dtype.
    targets: (B, D, H, W, C) binary (bool, int or float); classes overlap (a tumor voxel is also
      its organ), so channels are independent sigmoids, not a softmax.
    annotated: (B, C) bool or {0, 1}: which classes each sample's source labels.
    smooth: the +1 in the Dice denominator.
    bce_weight, dice_weight: total = bce_weight * bce + dice_weight * dice.

  Returns:
    SegLoss of float32 scalars. A batch with no annotated pair gives 0 and a zero gradient.
  """
  if logits.shape != targets.shape:
    raise ValueError(f"logits {logits.shape} and targets {targets.shape} differ in shape")
  if logits.ndim != 5:
    raise ValueError(f"expected (B, D, H, W, C) logits, got shape {logits.shape}")
  b, c = logits.shape[0], logits.shape[-1]
  if annotated.shape != (b, c):
    raise ValueError(f"annotated must be (B, C) = {(b, c)}, got {annotated.shape}")
  mask = annotated.astype(jnp.float32)
  bce = masked_mean(bce_per_pair(logits, targets), mask)
  dice = masked_mean(dice_per_pair(logits, targets, smooth), mask)
  return SegLoss(total=bce_weight * bce + dice_weight * dice, bce=bce, dice=dice,
                 num_pairs=jnp.sum(mask))
