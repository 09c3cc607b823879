"""Throughput of the Grain loader on MNIST-shaped ArrayRecords (host side only, no device).

Writes `--num_records` random 28x28x1 uint8 images with int32 labels into ArrayRecord shards in a
temporary directory (or `--data_dir`, reused if it exists), then times one pass of `make_loader`
(shuffle, CastImage, RandomFlipHorizontal, batch) for each worker count and read setting, and the
`load_split_arrays` path used to keep small datasets resident on the device.

  .venv/bin/python benchmarks/loader_throughput.py
  .venv/bin/python benchmarks/loader_throughput.py --num_records=60000 --batch_size=256 \
      --worker_counts=0,1 --num_batches=100 --read_settings=4:16,16:500

The numbers depend heavily on the host's free cores: quote them with the machine they ran on.
"""

import pathlib
import tempfile
import time

from absl import app
from absl import flags
import numpy as np

from dassemble_jax.data import arrayrecord_io as ario
from dassemble_jax.data import pipeline as pl

_NUM_RECORDS = flags.DEFINE_integer("num_records", 60_000, "records to write (MNIST train: 60k)")
_BATCH = flags.DEFINE_integer("batch_size", 256, "global batch size")
_WORKERS = flags.DEFINE_list("worker_counts", ["0", "1"], "Grain worker counts to time")
_NUM_BATCHES = flags.DEFINE_integer("num_batches", 100, "batches timed per setting")
_READ = flags.DEFINE_list("read_settings", ["4:16", "16:500"],
                          "read_threads:read_buffer_size pairs to time (16:500 = Grain defaults)")
_SHARDS = flags.DEFINE_integer("shards", 4, "shards of the train split")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "dataset dir (default: a temporary one)")


def _write(out: pathlib.Path) -> float:
  rng = np.random.default_rng(0)
  start = time.perf_counter()
  with ario.DatasetWriter(out, shards_per_split=_SHARDS.value) as writer:
    for i in range(_NUM_RECORDS.value):
      writer.add("train", {"image": rng.integers(0, 256, (28, 28, 1), dtype=np.uint8),
                           "label": np.int32(i % 10)})
    writer.close({"benchmark": "loader_throughput"})
  return time.perf_counter() - start


def _time_loader(out: pathlib.Path, workers: int, threads: int,
                 buffer: int) -> tuple[float, float]:
  loader = pl.make_loader(out, "train", global_batch_size=_BATCH.value, seed=0,
                          worker_count=workers, read_threads=threads, read_buffer_size=buffer,
                          transforms=[pl.CastImage(), pl.RandomFlipHorizontal(0.5)])
  it = iter(loader)
  start = time.perf_counter()
  next(it)  # First batch separately: worker start-up and reader opening.
  first = time.perf_counter() - start
  start = time.perf_counter()
  for _ in range(_NUM_BATCHES.value):
    batch = next(it)
  elapsed = time.perf_counter() - start
  assert batch["image"].shape == (_BATCH.value, 28, 28, 1), batch["image"].shape
  return first, _NUM_BATCHES.value * _BATCH.value / elapsed


def main(argv):
  del argv
  with tempfile.TemporaryDirectory() as tmp:
    out = pathlib.Path(_DATA_DIR.value or pathlib.Path(tmp) / "mnist_like")
    if not (out / ario.MANIFEST_NAME).exists():
      seconds = _write(out)
      print(f"write: {_NUM_RECORDS.value} records in {seconds:.1f} s "
            f"({_NUM_RECORDS.value / seconds:,.0f} records/s)")
    size = sum(p.stat().st_size for p in out.glob("*.array_record"))
    print(f"dataset: {out} ({size / 2**20:.1f} MiB in {_SHARDS.value} shards)")
    for workers in map(int, _WORKERS.value):
      for setting in _READ.value:
        threads, buffer = map(int, setting.split(":"))
        first, rate = _time_loader(out, workers, threads, buffer)
        print(f"make_loader worker_count={workers} read_threads={threads} "
              f"read_buffer_size={buffer}: first batch {first:.2f} s, then "
              f"{rate:,.0f} records/s ({rate / _BATCH.value:,.1f} batches/s of {_BATCH.value})")
    start = time.perf_counter()
    arrays = ario.load_split_arrays(out, "train")
    seconds = time.perf_counter() - start
    print(f"load_split_arrays (verify + decode + stack): {arrays['image'].shape} in "
          f"{seconds:.2f} s ({len(arrays['image']) / seconds:,.0f} records/s)")


if __name__ == "__main__":
  app.run(main)
