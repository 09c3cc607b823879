"""Seconds per CIFAR-10 epoch of the fast fully labelled recipe (configs/cifar_assemble.py:full).

  python benchmarks/cifar_epoch.py [--num_train=50000] [--epochs=3] [--batch=0 (the config's, 1024)] [--arch=airbench]

CIFAR-10 cannot be fetched on the development machines, so the data are random uint8 images of
the real shape (32 x 32 x 3, 10 classes, every label known): the arithmetic, memory traffic and
program are those of a real epoch; the accuracy is meaningless and not reported. Measured on the
device JAX finds, one process:
  scan:  the whole epoch as one compiled call (`trainer.ResidentEpoch`, mode scan: permutation +
         `lax.scan` over steps, data resident on the device, flip + translate inside the step);
  loop:  the same epoch as a Python loop of jitted steps (`trainer.ResidentEpoch`, mode loop).
The network is the config's (`--arch`: 'airbench', the `full` setting's, or 'resnet', the
project's ResNet (64, 128, 256) it replaced); the JSON gives its forward MFLOP per image counted
by hand (every conv tap and the head, 2 FLOP per multiply-add). The issue-6 target: <= 0.2 s per 50,000-image epoch on an H100 (airbench: ~10 epochs in 3.3 s on
an A100). Prints one JSON line.
"""

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import jax
import numpy as np

from dassemble_jax import sharding
from dassemble_jax.classification import experiments, trainer
from dassemble_jax.models import airbench


def resnet_forward_flops(widths, num_classes=10, side=32, in_ch=3):
  """`ResNetClassifier` with one block per stage: stem, 2 convs (+ 1x1 projection) per stage."""
  macs = side * side * 9 * in_ch * widths[0]
  cin = widths[0]
  for i, w in enumerate(widths):
    side = side // 2 if i else side
    macs += side * side * (9 * cin * w + 9 * w * w + (cin * w if cin != w or i else 0))
    cin = w
  return 2 * (macs + cin * num_classes)


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--num_train", type=int, default=50000)
  p.add_argument("--epochs", type=int, default=3)
  p.add_argument("--batch", type=int, default=0, help="0: the config's batch size")
  p.add_argument("--dtype", default="bfloat16")
  p.add_argument("--arch", default="", help="'airbench' or 'resnet' (default: the config's)")
  p.add_argument("--widths", default="",
                 help="widths, e.g. 64,256,256 (default: the config's; 64,128,256 for resnet)")
  p.add_argument("--modes", default="scan,loop")
  a = p.parse_args()

  c = experiments.cifar_assemble("full")
  a.batch = a.batch or int(c.batch_size)
  c.batch_size, c.compute_dtype = a.batch, a.dtype
  if a.arch and a.arch != c.model.arch:
    c.model.arch = a.arch
    c.model.widths = {"resnet": (64, 128, 256), "airbench": (64, 256, 256)}[a.arch]
  if a.widths:
    c.model.widths = tuple(int(w) for w in a.widths.split(","))
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 10, a.num_train)
  data = {"image": rng.integers(0, 256, (a.num_train, 32, 32, 3), dtype=np.uint8),
          "targets": np.eye(10, dtype=np.float32)[labels],
          "known": np.ones((a.num_train, 10), np.float32)}
  mesh = sharding.make_mesh()
  resident = sharding.put_replicated(data, mesh)
  steps = a.num_train // a.batch
  tx = trainer.build_optimizer(c, steps * (a.epochs + 1) * 2)
  state, train_def, _ = trainer.init_state(c, 10, 3, tx, mesh)
  state = trainer.init_from_data(c, state, data["image"])  # airbench's whitening; else a no-op
  step = trainer.make_train_step(c, train_def, tx, mesh)
  flops = airbench.forward_flops if c.model.arch == "airbench" else resnet_forward_flops
  n_params = sum(x.size for x in jax.tree.leaves(state["params"]))
  out = {"device": f"{jax.devices()[0].device_kind} x{jax.device_count()}",
         "images_per_epoch": steps * a.batch, "batch": a.batch, "dtype": a.dtype,
         "arch": c.model.arch, "widths": list(c.model.widths), "params_M": n_params / 1e6,
         "forward_MFLOP_per_image": flops(tuple(c.model.widths)) / 1e6, "augment": c.augment}
  for mode in a.modes.split(","):
    fn = trainer.ResidentEpoch(c, step, steps, a.batch, mode=mode)
    if mode == "scan":
      t0 = time.perf_counter()
      fn.compile(state, resident, c.seed, 0)
      out["scan_compile_s"] = time.perf_counter() - t0
      cost = fn.compiled_epoch().cost_analysis()
      cost = cost[0] if isinstance(cost, (list, tuple)) else cost
      out["scan_epoch_GFLOP"] = cost.get("flops", float("nan")) / 1e9
    state, _ = fn(state, resident, c.seed, 0)  # warm-up (and the loop's compile)
    jax.block_until_ready(state)
    times = []
    for e in range(1, a.epochs + 1):
      t0 = time.perf_counter()
      state, _ = fn(state, resident, c.seed, e)
      jax.block_until_ready(state)
      times.append(time.perf_counter() - t0)
    out[f"{mode}_epoch_s"] = min(times)
    out[f"{mode}_images_per_s"] = steps * a.batch / min(times)
    print(f"{mode}: {min(times):.3f} s/epoch ({times})", file=sys.stderr, flush=True)
  if "scan_epoch_s" in out:
    out["scan_achieved_TFLOPs"] = out["scan_epoch_GFLOP"] / out["scan_epoch_s"] / 1e3
  print(json.dumps(out), flush=True)


if __name__ == "__main__":
  main()
