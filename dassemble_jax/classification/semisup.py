"""Semi-supervised partial labels: sharpened pseudo labels and weak/strong consistency.

The papers (Kang et al. 2021; Zhu et al. 2022) add two terms on the *unknown* entries of the
label matrix (mask = 1 - known), with p = sigmoid(z_weak), q = sigmoid(z_strong) and the sharpened
target

    p~ = p + (1 - p)/T  if p > tau   else   p - p/T                 (tau = 0.5, T = 4)

    L_pseudo  = sum_{b,c} u[b,c] (p - p~)^2 / max(1, sum u)
    L_consist = sum_{b,c} u[b,c] (q - p~)^2 / max(1, sum u)

"||.||^2" is taken as the mean over the unknown entries so the weight does not depend on how many
classes a source lacks. By default the target is a constant (stop-gradient): with the gradient
flowing through p~ too (the authors' code), L_pseudo only shrinks (p - p~)^2 = (p or 1-p)^2/T^2,
which pulls confident predictions back towards 0.5/1 in a way that depends on T. The target can
also come from an EMA ("mean") teacher instead of the student's own weak view.

The augmentations run on the device inside the jitted step: uint8 images in, float [0, 1] out.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from dassemble_jax.classification import augment


def default_config() -> ml_collections.ConfigDict:
  """Settings of the semi-supervised terms; attach as `config.semisup`."""
  c = ml_collections.ConfigDict()
  c.enabled = False
  c.tau = 0.5                  # sharpening threshold
  c.temperature = 4.0          # sharpening strength T (larger: milder)
  c.pseudo_weight = 1.0        # weight of L_pseudo (papers: 1)
  c.consistency_weight = 1.0   # weight of L_consist (papers: 1)
  c.rampup_steps = 0           # linear ramp of both weights from 0 over this many steps
  c.stop_gradient = True       # False: the authors' gradient-through-the-target form
  c.teacher = "self"           # 'self': target from the student's weak view; 'ema': EMA teacher
  c.ema_decay = 0.99           # EMA teacher decay per step
  c.strong_pad = 4             # strong view: translation (pixels), noise std, cutout size
  c.strong_noise = 0.1
  c.cutout = 0.35              # cutout square side as a fraction of the image side (0: none)
  c.weak_noise = 0.02
  return c


# ------------------------------------------------------------------------------------------------
# The losses.

def sharpen(p: jax.Array, tau: float = 0.5, temperature: float = 4.0) -> jax.Array:
  """p + (1-p)/T where p > tau, p - p/T elsewhere (elementwise)."""
  return jnp.where(p > tau, p + (1.0 - p) / temperature, p - p / temperature)


def masked_sq(a: jax.Array, b: jax.Array, mask: jax.Array) -> jax.Array:
  """Mean of (a - b)^2 over the entries with mask = 1 (0 if none). Shapes (B, C)."""
  return (mask * jnp.square(a - b)).sum() / jnp.maximum(1.0, mask.sum())


def semisup_losses(p_weak: jax.Array, q_strong: jax.Array, known: jax.Array, *,
                   tau: float = 0.5, temperature: float = 4.0, stop_gradient: bool = True,
                   p_target: jax.Array | None = None) -> dict[str, jax.Array]:
  """L_pseudo and L_consist on the unknown entries.

  Args:
    p_weak: (B, C) probabilities of the weak view (student).
    q_strong: (B, C) probabilities of the strong view (student).
    known: (B, C) 1 where the label is known; the terms use 1 - known.
    p_target: (B, C) probabilities the target is sharpened from (an EMA teacher's weak view);
      default: p_weak itself.
  Returns:
    {'pseudo', 'consistency'} scalars.
  """
  unknown = 1.0 - known
  base = p_weak if p_target is None else p_target
  target = sharpen(base, tau, temperature)
  if stop_gradient:
    target = jax.lax.stop_gradient(target)
  return {"pseudo": masked_sq(p_weak, target, unknown),
          "consistency": masked_sq(q_strong, target, unknown)}


def rampup(step: jax.Array, rampup_steps: int) -> jax.Array:
  """Linear ramp 0 -> 1 over `rampup_steps` steps (1 from the start when rampup_steps <= 0)."""
  if rampup_steps <= 0:
    return jnp.ones((), jnp.float32)
  return jnp.clip(step.astype(jnp.float32) / rampup_steps, 0.0, 1.0)


def ema_update(teacher, student, decay: float):
  """teacher <- decay * teacher + (1 - decay) * student, leaf by leaf."""
  return jax.tree.map(lambda t, s: decay * t + (1.0 - decay) * s, teacher, student)


# ------------------------------------------------------------------------------------------------
# Weak and strong views (on the device).

def _noise(key, x, std):
  return jnp.clip(x + std * jax.random.normal(key, x.shape, x.dtype), 0.0, 1.0)


def cutout(key: jax.Array, images: jax.Array, size: int, fill: float = 0.5) -> jax.Array:
  """Random erasing: one size x size square per image set to `fill` (it may cross the border).

  images: (B, H, W, C) float; returns the same.
  """
  b, h, w, _ = images.shape
  if size <= 0:
    return images
  centre = jax.random.randint(key, (b, 2), 0, jnp.array([h, w]))
  rows = jnp.arange(h)[None, :, None]
  cols = jnp.arange(w)[None, None, :]
  half = size // 2
  r0 = centre[:, 0, None, None] - half
  c0 = centre[:, 1, None, None] - half
  inside = (rows >= r0) & (rows < r0 + size) & (cols >= c0) & (cols < c0 + size)  # (B, H, W)
  return jnp.where(inside[..., None], fill, images)


def weak_view(key: jax.Array, images: jax.Array, *, flip: bool, noise: float) -> jax.Array:
  """uint8 (B, H, W, C) -> float [0, 1]: translation by <= 2 px, optional flip, mild noise."""
  k1, k2 = jax.random.split(key)
  x = augment.random_flip_crop(k1, images, pad=2, flip=flip).astype(jnp.float32) / 255.0
  return _noise(k2, x, noise) if noise > 0 else x


def strong_view(key: jax.Array, images: jax.Array, *, flip: bool, pad: int, noise: float,
                cutout_frac: float) -> jax.Array:
  """uint8 (B, H, W, C) -> float [0, 1]: larger translation, flip, more noise, cutout."""
  k1, k2, k3, k4 = jax.random.split(key, 4)
  x = augment.random_flip_crop(k1, images, pad=pad, flip=flip).astype(jnp.float32) / 255.0
  # Random contrast/brightness jitter, per image, in [0.7, 1.3] and [-0.1, 0.1].
  gain = jax.random.uniform(k4, (x.shape[0], 1, 1, 1), minval=0.7, maxval=1.3)
  x = jnp.clip((x - 0.5) * gain + 0.5 + 0.1 * (gain - 1.0), 0.0, 1.0)
  x = _noise(k2, x, noise) if noise > 0 else x
  return cutout(k3, x, round(cutout_frac * images.shape[1]))


def views(cfg, key: jax.Array, images: jax.Array, *, flip: bool):
  """(weak, strong) float views of a uint8 batch, from one key."""
  kw, ks = jax.random.split(key)
  return (weak_view(kw, images, flip=flip, noise=cfg.weak_noise),
          strong_view(ks, images, flip=flip, pad=cfg.strong_pad, noise=cfg.strong_noise,
                      cutout_frac=cfg.cutout))
