"""The device's measured dense matmul peak: the denominator of "achieved / peak" ratios.

  python benchmarks/matmul_peak.py [--n=8192] [--dtype=bfloat16] [--reps=20]

Times `reps` chained (n x n) @ (n x n) products in one jitted call (a `lax.fori_loop`, so Python
dispatch is not measured), after a warm-up call; FLOPs = 2 n^3 per product. Prints one JSON line.
"""

import argparse
import json
import time

import jax
import jax.numpy as jnp


def measure(n: int, dtype: str, reps: int) -> dict:
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32).astype(dtype) / n**0.5
  b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32).astype(dtype) / n**0.5

  @jax.jit
  def chain(a, b):
    # Each product depends on the last, so XLA cannot fuse or skip any of them.
    return jax.lax.fori_loop(0, reps, lambda i, x: (x @ b).astype(dtype), a)

  jax.block_until_ready(chain(a, b))
  times = []
  for _ in range(3):
    t0 = time.perf_counter()
    jax.block_until_ready(chain(a, b))
    times.append(time.perf_counter() - t0)
  best = min(times)
  return {"device": jax.devices()[0].device_kind, "n": n, "dtype": dtype, "reps": reps,
          "seconds": best, "TFLOPs": 2 * n**3 * reps / best / 1e12}


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--n", type=int, default=8192)
  p.add_argument("--dtype", default="bfloat16")
  p.add_argument("--reps", type=int, default=20)
  a = p.parse_args()
  print(json.dumps(measure(a.n, a.dtype, a.reps)), flush=True)


if __name__ == "__main__":
  main()
