"""Universal Model train step and whole-volume prediction: time, XLA FLOPs, peak memory.

  .venv/bin/python benchmarks/universal_step.py --backbone=unet --crop=32 --batch=2 \
      --base_channels=8 --steps=3 [--analyse_only] [--volume=96,96,64]

The step is the job's real one (`segmentation.train.Compiled`: on-device crop/augmentation of a
host window, forward, masked BCE + Dice over 32 classes, clipped AdamW), built from
configs/universal.py:full with the sizes overridden by the flags. Reported per configuration:
  FLOPs per step   compiled.cost_analysis()['flops'] (XLA's count for the whole step)
  memory           compiled.memory_analysis(): arguments + outputs + temporaries - aliased
  step time        median wall time of `--steps` steps after a warm-up step
  achieved         FLOPs / step time
With --analyse_only the step is compiled but not run (for sizes too big to time on a CPU).
--volume times `predict_volume` (sliding window + thresholds + post-processing) on a random
volume of that many voxels, windows = the crop.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from configs import universal  # noqa: E402
from dassemble_jax import sharding  # noqa: E402
from dassemble_jax.segmentation import evaluate  # noqa: E402
from dassemble_jax.segmentation import predict as seg_predict  # noqa: E402
from dassemble_jax.segmentation import train as seg_train  # noqa: E402


def _config(a):
  c = universal.get_config("full,swin" if a.backbone == "swin" else "full")
  c.crop_size, c.batch_size = a.crop, a.batch
  c.model.base_channels, c.model.feature_size = a.base_channels, a.feature_size
  c.model.class_code = "onehot" if a.embed_dim == 0 else "text"
  c.compute_dtype = a.dtype
  c.data.jitter = 2
  return c


def _host_batch(c, rng):
  w = c.crop_size + 2 * c.data.jitter
  b = c.batch_size
  return {"image": rng.random((b, w, w, w), np.float32).astype(np.float16),
          "label": rng.integers(0, 2**20, (b, w, w, w), dtype=np.uint32),
          "annotated": np.ones((b, 32), np.uint8), "source": np.zeros((b,), np.int32),
          "zoom_ok": np.ones((b,), np.uint8)}


def run(a) -> dict:
  c = _config(a)
  embed = max(a.embed_dim, 1)
  rng = np.random.default_rng(0)
  mesh = sharding.make_mesh()
  table = sharding.put_replicated(rng.normal(size=(32, embed)).astype(np.float32), mesh)
  t0 = time.perf_counter()
  comp = seg_train.compiled_for(c, embed)
  state = comp.init_state()
  jax.block_until_ready(state)
  init_s = time.perf_counter() - t0
  batch = sharding.put_batch(_host_batch(c, rng), mesh, c.batch_size)
  t0 = time.perf_counter()
  compiled = comp.step.lower(state, batch, table).compile()
  compile_s = time.perf_counter() - t0
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  mem = compiled.memory_analysis()
  peak = (mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes
          - mem.alias_size_in_bytes)
  n_params = sum(x.size for x in jax.tree.leaves(state["params"]))
  out = {"backbone": a.backbone, "crop": a.crop, "batch": a.batch, "classes": 32,
         "params_M": n_params / 1e6, "dtype": a.dtype, "device": str(jax.devices()[0]),
         "flops_per_step_G": cost.get("flops", float("nan")) / 1e9,
         "peak_memory_GB": peak / 1e9, "temp_GB": mem.temp_size_in_bytes / 1e9,
         "init_s": init_s, "compile_s": compile_s}
  if not a.analyse_only:
    times = []
    for i in range(a.steps + 1):
      t0 = time.perf_counter()
      state, m = compiled(state, batch, table)
      jax.block_until_ready(m)
      if i:  # the first call also allocates; leave it out
        times.append(time.perf_counter() - t0)
    out["step_s"] = statistics.median(times)
    out["achieved_GFLOPs"] = out["flops_per_step_G"] / out["step_s"]
  if a.volume:
    shape = tuple(int(s) for s in a.volume.split(","))
    apply_fn = evaluate.apply_fn_for(comp.eval_def, str(jnp.dtype(c.compute_dtype)))
    variables = evaluate.host_variables(state, np.asarray(table))
    vol = rng.random(shape, np.float32)
    kw = dict(params=variables, window=(a.crop,) * 3, overlap=0.5, sw_batch_size=a.sw_batch)
    seg_predict.predict_volume(apply_fn, vol, **kw)  # compile
    t0 = time.perf_counter()
    seg_predict.predict_volume(apply_fn, vol, **kw)
    out["volume"] = shape
    out["predict_volume_s"] = time.perf_counter() - t0
  return out


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--backbone", choices=("unet", "swin"), default="unet")
  p.add_argument("--crop", type=int, default=96)
  p.add_argument("--batch", type=int, default=2)
  p.add_argument("--base_channels", type=int, default=32)
  p.add_argument("--feature_size", type=int, default=48)
  p.add_argument("--embed_dim", type=int, default=384, help="0: one-hot codes")
  p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  p.add_argument("--steps", type=int, default=3)
  p.add_argument("--analyse_only", action="store_true")
  p.add_argument("--volume", default="", help="X,Y,Z for a whole-volume prediction timing")
  p.add_argument("--sw_batch", type=int, default=4)
  print(json.dumps(run(p.parse_args())), flush=True)


if __name__ == "__main__":
  main()
