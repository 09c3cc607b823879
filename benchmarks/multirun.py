"""Images/s of R runs as one vmapped program vs the same R runs one after another.

Same process, same compiled shapes: the sequential baseline compiles its one-run program once
and reuses it for every run; compile time is reported separately and excluded from images/s.
Timed: every epoch call (training steps + validation scoring) and the final test scoring.

  python benchmarks/multirun.py --runs=4 --num_train=512 --epochs=2          # real MNIST (hub)
  python benchmarks/multirun.py --dataset=cifar_shape --runs=2 --num_train=256 --epochs=1
      # random uint8 CIFAR-10 pickles of the real shape (32x32x3), written to a temp folder

Prints one JSON line; benchmarks/multirun.md records the results and the device.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import platform
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax
import numpy as np

from dassemble_jax.classification import (
  experiments,
  multirun,
)


def _fake_cifar(folder: str, per_batch: int) -> str:
  root = os.path.join(folder, "cifar-10-batches-py")
  os.makedirs(root)
  rng = np.random.default_rng(0)
  for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
    labels = (np.arange(per_batch) % 10).tolist()
    with open(os.path.join(root, name), "wb") as f:
      pickle.dump({b"labels": labels, b"data": rng.integers(0, 255, (per_batch, 3072),
                                                             dtype=np.uint8)}, f, protocol=2)
  return root


def configs(args):
  out = []
  for seed in range(args.runs):
    if args.dataset == "mnist":
      c = experiments.mnist_odd_even("D0")
      c.data.source = "hub"
      c.model.widths = tuple(args.widths)
      c.test_subset = args.num_test
    else:
      c = experiments.cifar_assemble("D0+D1")
      c.data.source, c.data.path = "pickle", args.data_path
      c.compute_dtype = "float32"  # CPU
      c.batch_size = 128
    c.data.sources = tuple(dict(s, num_train=args.num_train // len(c.data.sources),
                                num_validation=64) for s in c.data.sources)
    c.num_epochs = args.epochs
    c.eval_batch_size = 256
    c.seed, c.data.seed = seed, 0
    out.append(multirun.Run("bench", c))
  return out


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--dataset", default="mnist", choices=["mnist", "cifar_shape"])
  p.add_argument("--runs", type=int, default=4)
  p.add_argument("--num_train", type=int, default=512)
  p.add_argument("--num_test", type=int, default=500)
  p.add_argument("--epochs", type=int, default=2)
  p.add_argument("--widths", type=int, nargs="+", default=[8, 16, 32])
  args = p.parse_args()
  tmp = tempfile.mkdtemp()
  if args.dataset == "cifar_shape":
    from dassemble_jax.data import cifar
    per_batch = max(256, args.num_train // 2)
    args.data_path = _fake_cifar(tmp, per_batch)
    cifar.load_cifar10_pickles.__defaults__ = (per_batch,)  # validation: the 5th batch
  runs = configs(args)
  images = lambda res: (res["group_size"] * (args.num_train // runs[0].config.batch_size)
                        * runs[0].config.batch_size * args.epochs)
  vm = multirun.run_group(runs, verbose=False)[0]
  seq_time, seq_compile = 0.0, 0.0
  for r in runs:
    res = multirun.run_group([r], verbose=False)[0]
    seq_time += res["group_train_s"]
    seq_compile += res["compile_s"]
  n_img = images(vm)
  out = {"device": f"{jax.devices()[0].platform}: {platform.processor() or platform.machine()}, "
                   f"{os.cpu_count()} cores",
         "dataset": args.dataset, "runs": args.runs, "train_images_per_run":
         n_img // args.runs, "epochs": args.epochs, "batch": runs[0].config.batch_size,
         "widths": list(runs[0].config.model.widths),
         "vmapped_s": vm["group_train_s"], "vmapped_compile_s": vm["compile_s"],
         "sequential_s": seq_time, "sequential_compile_s_first_run": seq_compile,
         "vmapped_images_per_s": n_img / vm["group_train_s"],
         "sequential_images_per_s": n_img / seq_time,
         "ratio": seq_time / vm["group_train_s"],
         "load_average": os.getloadavg()}
  print(json.dumps(out))


if __name__ == "__main__":
  main()
