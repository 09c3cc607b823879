"""Masked partial-label losses for multi-label classification.

    L_sup = sum_{b,c} m[b,c] * BCE(z[b,c], y[b,c]) / max(1, sum_{b,c} m[b,c])

Only the (example, class) pairs the example's source annotates (m = 1) count; an all-unknown batch
gives zero loss and zero gradient instead of NaN.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def bce_with_logits(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """Elementwise binary cross-entropy on logits, stable for large |z|."""
  logits = logits.astype(jnp.float32)
  # max(z, 0) - z*y + log(1 + exp(-|z|)) is the standard overflow-free form.
  return jnp.maximum(logits, 0) - logits * targets + jnp.log1p(jnp.exp(-jnp.abs(logits)))


def masked_bce(logits: jax.Array, targets: jax.Array, known: jax.Array) -> jax.Array:
  """Mean BCE over the known (example, class) pairs. Shapes: (B, C) each; returns a scalar."""
  per_entry = bce_with_logits(logits, targets) * known
  return per_entry.sum() / jnp.maximum(1.0, known.sum())
