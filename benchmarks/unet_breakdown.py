"""Where the Universal Model's train step spends its time: backbone, heads + loss, the rest.

  python benchmarks/unet_breakdown.py [--backbone=unet] [--dtype=bfloat16] [--crop=96] [--batch=2]

Times three jitted programs on the same inputs (median of `--steps` after a warm-up):
  backbone:      forward + backward of the backbone alone (loss = mean of its two outputs);
  model + loss:  forward + backward of backbone + text-conditioned heads + masked BCE + Dice;
  train step:    the job's whole step (`segmentation.train.Compiled.step`: device-side crop and
                 augmentation, the above, gradient clipping, AdamW).
The differences are the heads + loss and the augmentation + optimiser. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from benchmarks.universal_step import _config, _host_batch, add_model_args
from dassemble_jax import sharding
from dassemble_jax.ct import bitmask
from dassemble_jax.segmentation import fused_heads
from dassemble_jax.segmentation import seg_losses
from dassemble_jax.segmentation import train_step  # noqa: E402


def _median_time(fn, *args, steps: int) -> float:
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(steps):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t0)
  return statistics.median(times)


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  add_model_args(p, dtype="bfloat16")
  p.add_argument("--steps", type=int, default=5)
  a = p.parse_args()
  c = _config(a)
  dtype = jnp.dtype(a.dtype)
  rng = np.random.default_rng(0)
  b, n = a.batch, a.crop
  embed = max(a.embed_dim, 1)  # 0: one-hot codes (the table is then ignored)
  table = jnp.asarray(rng.normal(size=(32, embed)).astype(np.float32))
  model = train_step.build_model(c, embed, rngs=nnx.Rngs(0))
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  x = jnp.asarray(rng.random((b, n, n, n, 1), np.float32)).astype(dtype)
  raw_bits = jnp.asarray(rng.integers(0, 2**20, (b, n, n, n), dtype=np.uint32))
  labels = bitmask.unpack_jax(raw_bits)  # (B, X, Y, Z, 32) float32, as the step gets them
  annotated = jnp.ones((b, 32), jnp.uint8)

  def backbone_loss(params, rest, x):
    # Fresh Variables at this trace level: BatchNorm updates its statistics in training mode.
    m = nnx.merge(graphdef, params, jax.tree.map(lambda v: v, rest))
    deep, dec = m.backbone(x)
    return deep.astype(jnp.float32).mean() + dec.astype(jnp.float32).mean()

  def model_loss(params, rest, x):
    m = nnx.merge(graphdef, params, jax.tree.map(lambda v: v, rest))
    if a.head_impl == "fused":
      f, theta = m.head_inputs(x, table)
      return fused_heads.partial_label_loss_from_heads(f, theta, raw_bits, annotated).total
    logits = m(x, table)
    return seg_losses.partial_label_loss(logits, labels, annotated).total

  out = {"backbone": a.backbone, "head_impl": a.head_impl, "norm": c.model.norm, "dtype": a.dtype, "batch": b, "crop": n,
         "device": jax.devices()[0].device_kind}
  for name, f in (("backbone", backbone_loss), ("model_loss", model_loss)):
    g = jax.jit(jax.value_and_grad(f))
    out[f"{name}_ms"] = _median_time(g, params, rest, x, steps=a.steps) * 1e3
    print(f"{name}: {out[f'{name}_ms']:.1f} ms", file=sys.stderr, flush=True)
  comp = train_step.compiled_for(c, embed)
  state = comp.init_state()
  mesh = comp.mesh
  batch = sharding.put_batch(_host_batch(c, rng), mesh, b)
  table_dev = sharding.put_replicated(np.asarray(table), mesh)
  step = comp.step.lower(state, batch, table_dev).compile()
  holder = {"state": state}

  def run_step():
    holder["state"], m = step(holder["state"], batch, table_dev)
    return m

  out["train_step_ms"] = _median_time(run_step, steps=a.steps) * 1e3
  out["heads_and_loss_ms"] = out["model_loss_ms"] - out["backbone_ms"]
  out["augment_and_optimiser_ms"] = out["train_step_ms"] - out["model_loss_ms"]
  print(json.dumps(out), flush=True)


if __name__ == "__main__":
  main()
