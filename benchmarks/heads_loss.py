"""The Universal Model's dynamic heads + masked BCE/Dice at full resolution, forward + backward.

  python benchmarks/heads_loss.py [--batch=2] [--crop=96] [--classes=32] [--dtype=bfloat16]
      [--impls=einsum,blockdiag,fused] [--kernels=128x8x4,64x16x4]

The step's head input f (B, 96^3, 8) and generated parameters theta (B, 32, 153) are given; each
implementation computes the loss and its gradient with respect to both (what the train step
back-propagates into the backbone and the controller):
  einsum:     `universal_head.dynamic_heads` -> logits -> `seg_losses.partial_label_loss`;
  blockdiag:  `universal_head.dynamic_heads_blockdiag` -> logits -> the same loss;
  fused:      `segmentation.fused_heads` (Pallas kernel; logits never in memory), once per
              --kernels entry (voxels per tile x tiles per program x warps).
Labels are random 32-bit masks (unpacked to float32 for the logits paths, as the step does).
Before timing, every implementation's loss and gradients are compared with the einsum path at
float32 on the same inputs. Median of --steps. Prints one JSON line per implementation.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.unet_breakdown import _median_time
from dassemble_jax.ct import bitmask
from dassemble_jax.models import universal_head as uh
from dassemble_jax.segmentation import fused_heads
from dassemble_jax.segmentation import seg_losses


def make_loss(impl: str, bits, annotated, kernel=None):
  """(f (B, D, H, W, 8), theta) -> total loss, for one implementation."""
  if impl == "fused":
    return lambda f, theta: fused_heads.partial_label_loss_from_heads(
        f, theta, bits, annotated, impl="pallas", kernel=kernel).total

  def loss(f, theta):
    logits = uh.HEAD_IMPLS[impl](f, theta)
    targets = bitmask.unpack_jax(bits)[..., : theta.shape[1]]  # (B, D, H, W, K)
    return seg_losses.partial_label_loss(logits, targets, annotated).total
  return loss


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--batch", type=int, default=2)
  p.add_argument("--crop", type=int, default=96)
  p.add_argument("--classes", type=int, default=32)
  p.add_argument("--dtype", default="bfloat16")
  p.add_argument("--impls", default="einsum,blockdiag,fused")
  p.add_argument("--kernels", default="128x8x4")
  p.add_argument("--steps", type=int, default=10)
  a = p.parse_args()
  rng = np.random.default_rng(0)
  b, n, k = a.batch, a.crop, a.classes
  f32 = jnp.asarray(rng.normal(size=(b, n, n, n, uh.HEAD_CHANNELS)).astype(np.float32))
  theta = jnp.asarray(rng.normal(size=(b, k, uh.NUM_HEAD_PARAMS)).astype(np.float32) * 0.3)
  bits = jnp.asarray(rng.integers(0, 2**32, (b, n, n, n), dtype=np.uint64).astype(np.uint32))
  annotated = jnp.asarray(rng.integers(0, 2, (b, k)).astype(np.float32))
  f = f32.astype(a.dtype)
  runs = []
  for impl in a.impls.split(","):
    kernels = a.kernels.split(",") if impl == "fused" else [None]
    runs += [(impl, None if s is None else tuple(int(v) for v in s.split("x"))) for s in kernels]

  ref = jax.jit(jax.value_and_grad(make_loss("einsum", bits, annotated), (0, 1)))(f32, theta)
  for impl, kernel in runs:
    fn = make_loss(impl, bits, annotated, kernel)
    out = {"impl": impl, "kernel": kernel, "batch": b, "crop": n, "classes": k, "dtype": a.dtype,
           "device": jax.devices()[0].device_kind}
    try:
      # Agreement with the einsum path at float32 (relative to the gradients' scale).
      val, grads = jax.jit(jax.value_and_grad(fn, (0, 1)))(f32, theta)
      out["f32_loss_rel_err"] = float(abs(val - ref[0]) / abs(ref[0]))
      out["f32_grad_rel_err"] = [float(jnp.abs(g - r).max() / jnp.abs(r).max())
                                 for g, r in zip(grads, ref[1])]
      step = jax.jit(jax.value_and_grad(fn, (0, 1)))
      t0 = time.perf_counter()
      compiled = step.lower(f, theta).compile()
      out["compile_s"] = round(time.perf_counter() - t0, 2)
      out["fwd_bwd_ms"] = _median_time(compiled, f, theta, steps=a.steps) * 1e3
      mem = compiled.memory_analysis()
      if mem is not None:
        out["temp_GB"] = round(mem.temp_size_in_bytes / 1e9, 3)
    except Exception as e:  # noqa: BLE001  (a kernel config that does not compile is a result)
      out["error"] = f"{type(e).__name__}: {str(e)[:400]}"
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
  main()
