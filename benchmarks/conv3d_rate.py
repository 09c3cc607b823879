"""What a single 3D convolution achieves on this device: the ceiling for a 3D U-Net step.

  python benchmarks/conv3d_rate.py [--dtype=bfloat16] [--batch=2]

For each level of the anchor's U-Net at 96^3 crops (96^3 x 64, 48^3 x 128, 24^3 x 256,
12^3 x 512 channels), times a 3x3x3 'SAME' convolution, channels last (NDHWC), forward and
forward + backward (grads for input and kernel), in one jitted call looped `reps` times
(`lax.fori_loop`, so dispatch is not measured). FLOPs = 2 * voxels * 27 * Cin * Cout (x3 with
the backward). Prints one JSON line per case.
"""

import argparse
import json
import time

import jax
import jax.numpy as jnp

LEVELS = ((96, 64), (48, 128), (24, 256), (12, 512))


def conv(x, w):
  return jax.lax.conv_general_dilated(x, w, (1, 1, 1), "SAME",
                                      dimension_numbers=("NDHWC", "DHWIO", "NDHWC"))


def time_fn(fn, *args, reps: int) -> float:
  loop = jax.jit(lambda *a: jax.lax.fori_loop(0, reps, lambda i, acc: acc + fn(*a), 0.0))
  jax.block_until_ready(loop(*args))
  best = float("inf")
  for _ in range(3):
    t0 = time.perf_counter()
    jax.block_until_ready(loop(*args))
    best = min(best, time.perf_counter() - t0)
  return best / reps


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--dtype", default="bfloat16")
  p.add_argument("--batch", type=int, default=2)
  p.add_argument("--reps", type=int, default=20)
  a = p.parse_args()
  for size, ch in LEVELS:
    kx, kw = jax.random.split(jax.random.key(0))
    x = jax.random.normal(kx, (a.batch, size, size, size, ch), jnp.float32).astype(a.dtype)
    w = (jax.random.normal(kw, (3, 3, 3, ch, ch), jnp.float32) * 0.02).astype(a.dtype)
    flops = 2 * a.batch * size**3 * 27 * ch * ch
    fwd = lambda x, w: conv(x, w).astype(jnp.float32).mean()
    # value_and_grad: the forward must run too (grad alone of a linear map needs no forward).
    vg = jax.value_and_grad(fwd, argnums=(0, 1))

    def both(x, w, vg=vg):
      v, gs = vg(x, w)
      return v + sum(g.astype(jnp.float32).mean() for g in gs)
    t_fwd = time_fn(fwd, x, w, reps=a.reps)
    t_both = time_fn(both, x, w, reps=a.reps)
    print(json.dumps({"device": jax.devices()[0].device_kind, "dtype": a.dtype,
                      "shape": [a.batch, size, size, size, ch], "kernel": [3, 3, 3, ch, ch],
                      "fwd_ms": t_fwd * 1e3, "fwd_TFLOPs": flops / t_fwd / 1e12,
                      "bwd_ms": (t_both - t_fwd) * 1e3,
                      "fwd_bwd_TFLOPs": 3 * flops / t_both / 1e12}), flush=True)


if __name__ == "__main__":
  main()
