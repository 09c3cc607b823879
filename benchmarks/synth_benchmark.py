"""Tumors/s of the JAX tumor generator against the NumPy/SciPy baseline, in one run.

  .venv/bin/python benchmarks/synth_benchmark.py                       # crops + whole volume
  .venv/bin/python benchmarks/synth_benchmark.py --whole 256,256,150 --whole-spacing 1.56,1.56,2

Two workloads, both with the same SynthConfig (default kind: 'mix', every size in one scan):
  crops: a batch of 96^3 crops at 1 mm, each holding part of an ellipsoid liver, through
         jax.jit(jax.vmap(synthesize_tumors)) vs a Python loop over the NumPy baseline;
  whole: one 512 x 512 x 300 abdominal-size volume, through synthesize_tumors_roi (static box
         around the liver) vs the baseline (which crops to the tumors' bounding box itself).
JAX times exclude the first (compiling) call, which is reported separately. Results go to stdout
and, with --json, to a file; benchmarks/synth.md records them.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import platform
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from synth_baseline_numpy import synthesize_tumors_numpy  # noqa: E402

from dassemble_jax.synth import SynthConfig, synthesize_tumors, synthesize_tumors_roi  # noqa: E402


def _liver(shape, spacing, centre_mm, semi_mm, rng):
  grids = [(np.arange(n, dtype=np.float32) * s - c) / a
           for n, s, c, a in zip(shape, spacing, centre_mm, semi_mm)]
  liver = (grids[0][:, None, None] ** 2 + grids[1][None, :, None] ** 2
           + grids[2][None, None, :] ** 2) <= 1.0
  ct = np.where(liver, np.float32(60), np.float32(-100))
  ct += rng.standard_normal(shape, dtype=np.float32) * 8
  return ct, liver


def _crops(batch, size, rng):
  cts, livers = [], []
  for _ in range(batch):
    semi = rng.uniform(45, 70, 3)            # a liver larger than the crop, seen in part
    centre = rng.uniform(0.3, 0.7, 3) * size
    ct, liver = _liver((size,) * 3, (1.0,) * 3, centre, semi, rng)
    cts.append(ct)
    livers.append(liver)
  return np.stack(cts), np.stack(livers)


def _time(fn, reps):
  times = []
  out = None
  for i in range(reps):
    t = time.perf_counter()
    out = fn(i)
    times.append(time.perf_counter() - t)
  return float(np.median(times)), out


def bench_crops(cfg, batch, size, reps, np_reps, seed=0):
  rng = np.random.default_rng(seed)
  cts, livers = _crops(batch, size, rng)
  spacing = (1.0, 1.0, 1.0)
  f = jax.jit(jax.vmap(functools.partial(synthesize_tumors, spacing=spacing, cfg=cfg)))
  cts_d, livers_d = jax.device_put(cts), jax.device_put(livers)
  keys = [jax.random.split(jax.random.key(100 + i), batch) for i in range(reps + 1)]
  t = time.perf_counter()
  jax.block_until_ready(f(keys[0], cts_d, livers_d))
  compile_s = time.perf_counter() - t
  counts = []

  def run_jax(i):
    out = jax.block_until_ready(f(keys[i + 1], cts_d, livers_d))
    counts.append(int(np.sum(out[2]['n_tumors'])))
    return out
  jax_s, _ = _time(run_jax, reps)
  np_counts, np_times = [], []
  for r in range(np_reps):
    nrng = np.random.default_rng(1000 + r)
    t = time.perf_counter()
    n = 0
    for b in range(batch):
      n += synthesize_tumors_numpy(nrng, cts[b], livers[b], spacing, cfg)[2]
    np_times.append(time.perf_counter() - t)
    np_counts.append(n)
  np_s = float(np.median(np_times))
  return dict(workload=f'batch of {batch} crops {size}^3 @ 1 mm', compile_s=compile_s,
              jax_s_per_batch=jax_s, jax_tumors_per_batch=float(np.mean(counts)),
              jax_tumors_per_s=float(np.mean(counts)) / jax_s, jax_samples_per_s=batch / jax_s,
              numpy_s_per_batch=np_s, numpy_tumors_per_batch=float(np.mean(np_counts)),
              numpy_tumors_per_s=float(np.mean(np_counts)) / np_s,
              numpy_samples_per_s=batch / np_s)


def bench_whole(cfg, shape, spacing, roi, reps, np_reps, seed=0):
  rng = np.random.default_rng(seed)
  # An adult liver: ~19 x 16 x 15 cm, in the patient's right upper abdomen.
  extent = [n * s for n, s in zip(shape, spacing)]
  centre = (0.33 * extent[0], 0.45 * extent[1], 0.6 * extent[2])
  semi = (95.0, 80.0, 75.0)
  ct, liver = _liver(shape, spacing, centre, semi, rng)
  if roi is None:
    roi = tuple(min(n, int(np.ceil(2 * a / s / 16) * 16)) for n, a, s in zip(shape, semi, spacing))
  f = functools.partial(synthesize_tumors_roi, spacing=spacing, cfg=cfg, roi_shape=roi)
  ct_d, liver_d = jax.device_put(ct), jax.device_put(liver)
  t = time.perf_counter()
  jax.block_until_ready(f(jax.random.key(0), ct_d, liver_d))
  compile_s = time.perf_counter() - t
  counts = []

  def run_jax(i):
    out = jax.block_until_ready(f(jax.random.key(i + 1), ct_d, liver_d))
    counts.append(int(out[2]['n_tumors']))
    assert bool(out[2]['roi_covers_liver'])
    return out
  jax_s, _ = _time(run_jax, reps)
  np_counts, np_times = [], []
  for r in range(np_reps):
    nrng = np.random.default_rng(2000 + r)
    t = time.perf_counter()
    np_counts.append(synthesize_tumors_numpy(nrng, ct, liver, spacing, cfg)[2])
    np_times.append(time.perf_counter() - t)
  np_s = float(np.median(np_times))
  return dict(workload=f'whole volume {"x".join(map(str, shape))} @ {spacing} mm, ROI {roi}',
              compile_s=compile_s, jax_s_per_volume=jax_s,
              jax_tumors_per_volume=float(np.mean(counts)),
              jax_tumors_per_s=float(np.mean(counts)) / jax_s,
              numpy_s_per_volume=np_s, numpy_tumors_per_volume=float(np.mean(np_counts)),
              numpy_tumors_per_s=float(np.mean(np_counts)) / np_s)


def main():
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  p.add_argument('--kind', default='mix', help="a kind name, 'mix', or 'any' (uniform choice)")
  p.add_argument('--batch', type=int, default=8)
  p.add_argument('--crop', type=int, default=96)
  p.add_argument('--reps', type=int, default=3)
  p.add_argument('--np-reps', type=int, default=2)
  p.add_argument('--whole', default='512,512,300', help="'' to skip")
  p.add_argument('--whole-spacing', default='0.78,0.78,1.0')
  p.add_argument('--skip-crops', action='store_true')
  p.add_argument('--json', help='also write the results here')
  args = p.parse_args()
  cfg = SynthConfig()
  if args.kind != 'any':
    cfg = dataclasses.replace(cfg, kind_choices=(args.kind,))
  res = dict(device=str(jax.devices()[0].device_kind), backend=jax.default_backend(),
             cpu_count=os.cpu_count(), machine=platform.processor() or platform.machine(),
             jax=jax.__version__, kind=args.kind, command=' '.join(sys.argv), results=[])
  print(json.dumps({k: v for k, v in res.items() if k != 'results'}), flush=True)
  if not args.skip_crops:
    r = bench_crops(cfg, args.batch, args.crop, args.reps, args.np_reps)
    r['ratio_tumors_per_s'] = r['jax_tumors_per_s'] / r['numpy_tumors_per_s']
    res['results'].append(r)
    print(json.dumps(r), flush=True)
  if args.whole:
    shape = tuple(int(x) for x in args.whole.split(','))
    spacing = tuple(float(x) for x in args.whole_spacing.split(','))
    r = bench_whole(cfg, shape, spacing, None, args.reps, args.np_reps)
    r['ratio_tumors_per_s'] = r['jax_tumors_per_s'] / r['numpy_tumors_per_s']
    res['results'].append(r)
    print(json.dumps(r), flush=True)
  if args.json:
    with open(args.json + '.tmp', 'w') as f:
      json.dump(res, f, indent=1)
    os.replace(args.json + '.tmp', args.json)


if __name__ == '__main__':
  main()
