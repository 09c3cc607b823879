"""Image augmentation on the device, inside the jitted train step.

Done on the accelerator so the host only ever ships uint8 pixels; each example draws from its own
key (folded from the step key), so a batch is reproducible whatever its sharding.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from dassemble_jax.cli import ConfigError


def random_flip_crop(key: jax.Array, images: jax.Array, *, pad: int, flip: bool) -> jax.Array:
  """Random translation by up to `pad` pixels (reflect padding) and horizontal flip.

  images: (batch, height, width, channels); returns the same shape and dtype.
  """
  b, h, w, c = images.shape
  k_off, k_flip = jax.random.split(key)
  padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="reflect")
  offsets = jax.random.randint(k_off, (b, 2), 0, 2 * pad + 1)
  crop = jax.vmap(lambda im, o: jax.lax.dynamic_slice(im, (o[0], o[1], 0), (h, w, c)))
  out = crop(padded, offsets)
  if flip:
    do_flip = jax.random.bernoulli(k_flip, 0.5, (b, 1, 1, 1))
    out = jnp.where(do_flip, out[:, :, ::-1, :], out)
  return out


def apply(name: str, key: jax.Array, images: jax.Array) -> jax.Array:
  """Augmentations by config name: 'none', 'translate' (MNIST), 'flip_translate' (CIFAR)."""
  if name == "none":
    return images
  if name == "translate":
    return random_flip_crop(key, images, pad=2, flip=False)
  if name == "flip_translate":
    return random_flip_crop(key, images, pad=4, flip=True)
  raise ConfigError(f"unknown augmentation {name!r}; expected none|translate|flip_translate")
