"""Throughput of the CT data path: conversion time per case, host crops/s, device augmentation.

  .venv/bin/python benchmarks/ct_pipeline.py [--cases 3] [--crop 96] [--batch 2]
      [--workers 0,1,2] [--batches 20] [--out /tmp/ct_bench]

1. Writes the four phantom sources (default size: 96 x 80 x 64 voxels at 1.875 x 1.875 x 2.5 mm,
   about 115 x 100 x 107 after resampling to 1.5 mm) and converts them: seconds per case.
2. Host pipeline (`crop_pipeline.make_ct_dataset`): crops/s of `--crop`^3 windows with 0, 1, N
   worker processes, after a warm-up batch.
3. Device side (`volume_augment.make_augment_fn`, on whatever JAX backend is default): crops/s.
Results are printed as one Markdown table; copy them into benchmarks/ct_pipeline.md.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import shutil
import time

from absl import flags

flags.FLAGS.mark_as_parsed()  # Grain's worker processes read absl flags.

import jax  # noqa: E402

from dassemble_jax.ct import crop_pipeline, phantom, volume_augment  # noqa: E402


def _host_rate(dirs, crop, batch, workers, batches):
  ds = crop_pipeline.make_ct_dataset(dirs, batch_size=batch, seed=0, crop=crop, shard_index=0,
                                shard_count=1, num_workers=workers)
  it = iter(ds)
  next(it)  # warm-up: worker start, first reads
  start = time.perf_counter()
  for _ in range(batches):
    next(it)
  return batch * batches / (time.perf_counter() - start)


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--cases", type=int, default=3, help="cases per phantom source")
  p.add_argument("--crop", type=int, default=96)
  p.add_argument("--batch", type=int, default=2)
  p.add_argument("--workers", default="0,1,2")
  p.add_argument("--batches", type=int, default=20)
  p.add_argument("--crops-per-record", type=int, default=2)
  p.add_argument("--out", default="/tmp/ct_bench")
  a = p.parse_args()
  shutil.rmtree(a.out, ignore_errors=True)

  start = time.perf_counter()
  dirs = phantom.write_phantom_sources(a.out, a.cases, seed=0)
  total = time.perf_counter() - start
  n_cases = a.cases * len(dirs)
  convert_s = sum(json.loads(pathlib.Path(d, "manifest.json").read_text())["seconds"]
                  for d in dirs.values())
  rows = [("phantom generate + write NIfTI + convert", f"{total / n_cases:.2f} s/case"),
          ("conversion only (read, RAS, 1.5 mm, map, crop, shard)",
           f"{convert_s / n_cases:.2f} s/case")]

  crop = crop_pipeline.CropConfig(crop_size=(a.crop,) * 3)
  for k in sorted({1, a.crops_per_record}):
    many = crop_pipeline.CropConfig(crop_size=(a.crop,) * 3, crops_per_record=k)
    for workers in [int(w) for w in a.workers.split(",")]:
      rate = _host_rate(list(dirs.values()), many, a.batch, workers, a.batches)
      rows.append((f"host pipeline, {workers} worker(s), {a.crop}^3 crops, {k} crop(s)/record",
                   f"{rate:.1f} crops/s"))

  fn = volume_augment.make_augment_fn(volume_augment.AugmentConfig(crop_size=(a.crop,) * 3))
  it = iter(crop_pipeline.make_ct_dataset(list(dirs.values()), batch_size=a.batch, seed=0, crop=crop,
                                     shard_index=0, shard_count=1))
  batches = [volume_augment.host_to_device_fields(next(it)) for _ in range(3)]
  jax.block_until_ready(fn(jax.random.key(0), batches[0]))
  start = time.perf_counter()
  for i in range(a.batches // 2):
    out = fn(jax.random.key(i), batches[i % 3])
  jax.block_until_ready(out)
  rate = a.batch * (a.batches // 2) / (time.perf_counter() - start)
  rows.append((f"device augment ({jax.default_backend()}), {a.crop}^3", f"{rate:.1f} crops/s"))

  print(f"\nhost: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"load avg {os.getloadavg()[0]:.1f}; jax backend {jax.default_backend()}")
  print("| measurement | result |\n|---|---|")
  for name, value in rows:
    print(f"| {name} | {value} |")


if __name__ == "__main__":
  main()
