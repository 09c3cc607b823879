"""One PRNG call per sample: every random number of the generator is a slice of one uniform draw.

Each `jax.random` call compiles to its own threefry graph; a sample needs a dozen kinds of random
numbers, and compiling a dozen threefry graphs dominated the compile time (seconds each on a
loaded CPU). Drawing one flat uniform vector and slicing it statically costs one graph, keeps the
result a pure function of the key, and lets tests feed the same uniforms to a NumPy reference.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.scipy import special


def draw(key: jax.Array, layout: dict[str, tuple[int, ...]]) -> dict[str, jax.Array]:
  """Uniform [0, 1) float32 arrays of the given static shapes, from one PRNG call."""
  sizes = [math.prod(s) for s in layout.values()]
  flat = jax.random.uniform(key, (sum(sizes),), jnp.float32)
  out, pos = {}, 0
  for (name, shape), size in zip(layout.items(), sizes):
    out[name] = flat[pos:pos + size].reshape(shape)
    pos += size
  return out


def between(u: jax.Array, lo, hi) -> jax.Array:
  """Maps uniform [0, 1) to [lo, hi)."""
  return lo + (hi - lo) * u


def randint(u: jax.Array, lo, hi_inclusive) -> jax.Array:
  """Maps uniform [0, 1) to integers in [lo, hi_inclusive], uniformly."""
  lo = jnp.asarray(lo, jnp.int32)
  n = jnp.asarray(hi_inclusive, jnp.int32) - lo + 1
  return lo + jnp.minimum(jnp.floor(u * n).astype(jnp.int32), n - 1)


def normal(u: jax.Array) -> jax.Array:
  """Standard normal by inverse CDF."""
  return special.ndtri(jnp.clip(u, 1e-7, 1.0 - 1e-7))


def gumbel(u: jax.Array) -> jax.Array:
  """Standard Gumbel: argmax(logits + gumbel) samples the categorical of the logits."""
  return -jnp.log(-jnp.log(jnp.clip(u, 1e-12, 1.0 - 1e-7)))
