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


def _mix32(x: jax.Array) -> jax.Array:
  """lowbias32 (C. Wellons' integer hash search): a bijective, well-mixed uint32 -> uint32."""
  x = x ^ (x >> 16)
  x = x * jnp.uint32(0x7FEB352D)
  x = x ^ (x >> 15)
  x = x * jnp.uint32(0x846CA68B)
  return x ^ (x >> 16)


def field_uniform(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  """Uniform [0, 1) float32 noise for whole volumes: a counter hash seeded from the key.

  Threefry (jax.random's default) costs ~50 ns per number on the CPU: 0.1 s for the two noise
  fields of a 96^3 crop, more than the rest of the generator. The texture only needs white
  noise, so the volume fields use a counter-based integer hash (two rounds of lowbias32 keyed by
  64 bits from threefry): one fused elementwise pass, a pure function of the key and the shape.
  """
  # 24 high bits -> float32 in [0, 1) without rounding up to 1.
  x = field_bits(key, shape)
  return (x >> 8).astype(jnp.float32) * (1.0 / (1 << 24))


def field_bits(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  """Uniform uint32 bits of `shape` from the counter hash (see field_uniform)."""
  seed = jax.random.bits(key, (2,), jnp.uint32)
  idx = jax.lax.iota(jnp.uint32, math.prod(shape))
  x = _mix32(idx ^ seed[0])
  return _mix32(x + seed[1]).reshape(shape)
