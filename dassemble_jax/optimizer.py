"""The project's optimiser: AdamW under a warm-up cosine schedule, with global-norm clipping.

One recipe for every trainer (classification and the Universal Model), so a change to it (a new
schedule, which parameters decay) reaches both. Shared infrastructure: imports nothing from the
package.
"""

from __future__ import annotations

import jax
import optax


def adamw_cosine(*, learning_rate: float, total_steps: int, warmup_steps: int,
                 weight_decay: float, grad_clip_norm: float) -> optax.GradientTransformation:
  """clip_by_global_norm -> AdamW, the rate warming up linearly from 0 over `warmup_steps` and
  decaying by a cosine to 1% of the peak at `total_steps`.

  Args:
    warmup_steps: the warm-up takes at least 1 step (optax needs one); the decay ends at
      `total_steps`, or one step after `warmup_steps` if that is later.
  """
  schedule = optax.warmup_cosine_decay_schedule(
      0.0, learning_rate, warmup_steps=max(1, warmup_steps),
      decay_steps=max(total_steps, warmup_steps + 1), end_value=learning_rate * 1e-2)
  # No weight decay on biases and norm scales (1-D parameters).
  decay_mask = lambda params: jax.tree.map(lambda p: p.ndim > 1, params)
  return optax.chain(optax.clip_by_global_norm(grad_clip_norm),
                     optax.adamw(schedule, weight_decay=weight_decay, mask=decay_mask))
