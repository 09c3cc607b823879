"""Whole-volume sliding-window prediction time, host vs device accumulation; per-class NIfTI I/O.

The model is a cheap stand-in (NOT the Universal Model), a 2-layer conv net, channels last:
`--model=pointwise` (default): conv 1^3 1->16, ReLU, conv 1^3 16->C; `--model=conv3`: conv 3^3
1->8, ReLU, conv 1^3 8->C (XLA's CPU 3D convolution with one input channel is slow: ~1.7 s per
96^3 window on this shared 2-core machine). It makes the window extraction, batching and
stitching costs visible; the real networks add their own convolution time on top.

  .venv/bin/python benchmarks/sliding_window.py --shape=512,512,300 --classes=4
  .venv/bin/python benchmarks/sliding_window.py --shape=128,128,96 --classes=32 --io_classes=32

Results and the commands actually run: benchmarks/sliding_window.md.
"""

import argparse
import os
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from dassemble_jax.segmentation import inference
from dassemble_jax.segmentation import sliding_window as sw


def make_model(classes: int, kind: str = "pointwise", seed: int = 0):
  k1, k2 = jax.random.split(jax.random.key(seed))
  hidden, k = (16, 1) if kind == "pointwise" else (8, 3)
  params = {"w1": jax.random.normal(k1, (k, k, k, 1, hidden)) * 0.3,
            "w2": jax.random.normal(k2, (hidden, classes)) * 0.3}

  def apply(params, x):  # (n, d, h, w, 1) -> (n, d, h, w, C)
    h = jax.lax.conv_general_dilated(x, params["w1"], (1, 1, 1), "SAME",
                                     dimension_numbers=("NDHWC", "DHWIO", "NDHWC"))
    return jnp.einsum("ndhwc,ck->ndhwk", jax.nn.relu(h), params["w2"])

  return apply, params


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--shape", default="512,512,300")
  ap.add_argument("--classes", type=int, default=4)
  ap.add_argument("--model", default="pointwise", choices=["pointwise", "conv3"])
  ap.add_argument("--window", type=int, default=96)
  ap.add_argument("--overlap", type=float, default=0.5)
  ap.add_argument("--sw_batch_size", type=int, default=4)
  ap.add_argument("--modes", default="device,host")
  ap.add_argument("--io_classes", type=int, default=0,
                  help="also time save_per_class for this many classes on the volume's grid")
  args = ap.parse_args()
  shape = tuple(int(s) for s in args.shape.split(","))
  window = (args.window,) * 3
  apply, params = make_model(args.classes, args.model)
  print(f"device: {jax.devices()[0].device_kind} ({jax.devices()[0].platform}), "
        f"{os.cpu_count()} CPUs; volume {shape}, window {window}, overlap {args.overlap}, "
        f"sw_batch_size {args.sw_batch_size}, classes {args.classes}, model {args.model}")
  starts = [sw.window_starts(s, w, args.overlap) for s, w in zip(shape, window)]
  n = int(np.prod([len(s) for s in starts]))
  print(f"windows: {n} ({' x '.join(str(len(s)) for s in starts)}), "
        f"accumulator {sw.estimate_accumulator_bytes(shape, args.classes) / 2**30:.2f} GiB "
        "(acc + output + volume)")

  # Compile the per-batch model call once on a one-window volume (shape independent).
  t0 = time.perf_counter()
  np.asarray(sw.sliding_window_inference(apply, np.zeros(window, np.float32), params=params,
                                         window=window, sw_batch_size=args.sw_batch_size,
                                         accumulate_on="host"))
  print(f"compile + one batch: {time.perf_counter() - t0:.2f} s")

  rng = np.random.default_rng(0)
  volume = rng.random(shape, dtype=np.float32)
  # One model batch, warm: the pure model cost per batch.
  windows = jnp.asarray(volume[None, :window[0], :window[1], :window[2], None]).repeat(
      args.sw_batch_size, 0)
  step = jax.jit(apply)
  step(params, windows).block_until_ready()
  t0 = time.perf_counter()
  step(params, windows).block_until_ready()
  per_batch = time.perf_counter() - t0
  batches = -(-n // args.sw_batch_size)
  print(f"model alone: {per_batch:.3f} s per batch x {batches} batches = "
        f"{per_batch * batches:.1f} s")

  for mode in filter(None, args.modes.split(",")):
    t0 = time.perf_counter()
    out = sw.sliding_window_inference(apply, volume, params=params, window=window,
                                      overlap=args.overlap, sw_batch_size=args.sw_batch_size,
                                      accumulate_on=mode)
    out = jax.block_until_ready(out)
    dt = time.perf_counter() - t0
    print(f"{mode:>6} accumulation: {dt:.1f} s total ({dt / n * 1e3:.0f} ms/window, "
          f"{(dt - per_batch * batches):.1f} s beyond the model)")
    del out

  if args.io_classes:
    masks = np.zeros(shape + (args.io_classes,), bool)
    for k in range(args.io_classes):  # a blob per class, ~1% of the volume each
      c = rng.integers(np.asarray(shape) // 4, 3 * np.asarray(shape) // 4)
      r = np.asarray(shape) // 10
      masks[c[0] - r[0]:c[0] + r[0], c[1] - r[1]:c[1] + r[1], c[2] - r[2]:c[2] + r[2], k] = True
    names = [f"class_{k + 1}" for k in range(args.io_classes)]
    with tempfile.TemporaryDirectory() as tmp:
      for compress in (True, False):
        t0 = time.perf_counter()
        inference.save_per_class(os.path.join(tmp, str(compress)), masks, np.eye(4), names,
                               compress=compress)
        dt = time.perf_counter() - t0
        print(f"save_per_class ({'gzip level 1' if compress else 'uncompressed'}): "
              f"{dt:.2f} s for {args.io_classes} files = {dt / args.io_classes:.3f} s/file")


if __name__ == "__main__":
  main()
