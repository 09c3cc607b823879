"""`predict --classes`: what computing only the asked classes' heads saves, file to file.

    .venv/bin/python benchmarks/predict_classes.py --config=full --out=benchmarks/raw/2026-12-05_predict_classes

For a model built from `configs/universal.py:<config>` (seeded random weights: the timing does
not depend on them; the predicted masks are meaningless), written as a run folder and loaded
through `trained_run.load_model` as the predict command does, on one synthetic CT:
  1. the model alone: one jitted call on (sw_batch_size, W, W, W, 1) windows, all 32 classes'
     heads vs only those of `--classes` (`trained_run.apply_fn_for(..., channels)`);
  2. `LoadedModel.predict_file` end to end (read, resample, sliding window, thresholds,
     post-processing, back to the file's grid, write the label map), all classes vs
     `classes=--classes`, each after one warm-up call (compilation), `--repeats` times,
     alternating, the median reported.
Baseline: the all-classes run, same process, same device, same scan. Device, shapes, items/s
and the ratios go to `--out`/result.json; the printed lines are the raw output.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

ROOT = os.path.join(os.path.dirname(__file__), "..")
sys.path.insert(0, ROOT)

import jax
import nibabel as nib
import numpy as np

from configs import universal
from dassemble_jax import checkpointing
from dassemble_jax.segmentation import train_step, trained_run


def synthetic_ct(shape, mm) -> nib.Nifti1Image:
  """int16 HU: air, an elliptic body (40 HU) with two brighter blobs, 15 HU noise; LPS affine."""
  g = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"), -1)
  hu = np.full(shape, -1000.0)
  hu[(g[..., 0] / 0.8) ** 2 + (g[..., 1] / 0.6) ** 2 <= 1] = 40.0
  hu[((g - [-0.3, 0.0, 0.0]) ** 2).sum(-1) < 0.1] = 60.0
  hu[((g - [0.35, 0.1, 0.0]) ** 2).sum(-1) < 0.03] = 30.0
  hu += np.random.default_rng(0).normal(0, 15, shape)
  affine = np.diag([-mm[0], -mm[1], mm[2], 1.0])
  return nib.Nifti1Image(hu.astype(np.int16), affine)


def make_run(config, folder: str) -> None:
  comp = train_step.compiled_for(config, 384)
  trained_run.write_run_files(folder, config, np.ones(32, bool))
  table = np.random.default_rng(1).normal(0, 1, (32, 384)).astype(np.float32)
  trained_run.write_class_table(folder, table)
  ckpts = checkpointing.Checkpoints(folder)
  ckpts.save(0, comp.init_state(), {"step": 0}, is_best=True)
  ckpts.close()


def timed(fn, repeats):
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return times


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--config", default="full", help="configs/universal.py variant")
  p.add_argument("--classes", default="liver,spleen")
  p.add_argument("--shape", default="200,200,64", help="CT voxels")
  p.add_argument("--mm", default="0.8,0.8,2.5", help="CT voxel size")
  p.add_argument("--repeats", type=int, default=2)
  p.add_argument("--model_repeats", type=int, default=3)
  p.add_argument("--model_batch", type=int, default=0, help="windows per model call (0: the "
                 "config's sw_batch_size)")
  p.add_argument("--out", default=None)
  a = p.parse_args()
  classes = a.classes.split(",")
  shape = tuple(int(v) for v in a.shape.split(","))
  mm = tuple(float(v) for v in a.mm.split(","))
  config = universal.get_config(a.config)
  result = {"device": str(jax.devices()[0]), "device_count": jax.device_count(),
            "config": a.config, "classes": classes, "ct_shape": shape, "ct_mm": mm,
            "backbone": config.model.backbone, "crop": int(config.crop_size),
            "spacing_mm": float(config.data.spacing), "weights": "seeded random"}
  print(json.dumps(result), flush=True)
  with tempfile.TemporaryDirectory() as tmp:
    run = os.path.join(tmp, "run")
    os.makedirs(run)
    make_run(config, run)
    model = trained_run.load_model(run)
    spec = model.spec
    _, computed = trained_run.select_classes(classes, spec.trained_mask)
    channels = tuple(i - 1 for i in computed)
    # 1. The model alone.
    w = spec.window
    x = np.random.default_rng(2).random((a.model_batch or spec.sw_batch_size, *w, 1)
                                        ).astype(np.float32)
    sub_fn = trained_run.apply_fn_for(model.eval_def, spec.dtype, channels)
    model_times = {}
    for name, fn in (("all", model.apply_fn), ("subset", sub_fn)):
      f = jax.jit(fn)
      jax.block_until_ready(f(model.variables, x))  # compile
      model_times[name] = timed(lambda f=f: jax.block_until_ready(f(model.variables, x)),
                                a.model_repeats)
      print(f"model {name}: {len(channels) if name == 'subset' else 32} classes, windows "
            f"{x.shape}: {[round(t, 3) for t in model_times[name]]} s", flush=True)
    m_all, m_sub = (statistics.median(model_times[k]) for k in ("all", "subset"))
    result["model"] = {"windows_shape": list(x.shape), "seconds_all": model_times["all"],
                       "seconds_subset": model_times["subset"],
                       "windows_per_s_all": x.shape[0] / m_all,
                       "windows_per_s_subset": x.shape[0] / m_sub, "speedup": m_all / m_sub}
    print(f"model alone: {x.shape[0] / m_all:.2f} vs {x.shape[0] / m_sub:.2f} windows/s, "
          f"speed-up {m_all / m_sub:.2f}x", flush=True)
    # 2. File to file.
    ct = os.path.join(tmp, "ct.nii.gz")
    nib.save(synthetic_ct(shape, mm), ct)
    out = os.path.join(tmp, "out")
    calls = {"all": lambda: model.predict_file(ct, os.path.join(out, "all.nii.gz")),
             "subset": lambda: model.predict_file(ct, os.path.join(out, "sub.nii.gz"),
                                                  classes=classes)}
    stages = {}
    for name, fn in calls.items():  # warm-up (compilation)
      start = time.perf_counter()
      r = fn()
      print(f"warm-up {name}: {time.perf_counter() - start:.2f} s", flush=True)
    file_times = {"all": [], "subset": []}
    for i in range(a.repeats):
      for name, fn in calls.items():
        start = time.perf_counter()
        r = fn()
        file_times[name].append(time.perf_counter() - start)
        stages[name] = r.timings
        print(f"predict_file {name} #{i + 1}: {file_times[name][-1]:.2f} s "
              + ", ".join(f"{k} {v:.2f} s" for k, v in r.timings.items()), flush=True)
    f_all, f_sub = (statistics.median(file_times[k]) for k in ("all", "subset"))
    result["predict_file"] = {"seconds_all": file_times["all"],
                              "seconds_subset": file_times["subset"],
                              "stages_last_all": stages["all"],
                              "stages_last_subset": stages["subset"],
                              "scans_per_s_all": 1 / f_all, "scans_per_s_subset": 1 / f_sub,
                              "speedup": f_all / f_sub}
    print(f"predict_file: {f_all:.2f} s vs {f_sub:.2f} s per scan, speed-up "
          f"{f_all / f_sub:.2f}x", flush=True)
  if a.out:
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, f"result_{a.config}.json"), "w") as f:
      json.dump(result, f, indent=1)


if __name__ == "__main__":
  main()
