"""The published-size U-Net Universal Model predicting a real-size CT, file to file, through the
shipped commands.

    .venv/bin/python benchmarks/predict_published_size.py --out=benchmarks/raw/2026-12-05_published_model
    .venv/bin/python benchmarks/predict_published_size.py --slices=300 --slice_mm=1.0   # full size

What it does, all through the package's own entry points (subprocesses):
  1. writes the anchor's U-Net checkpoint layout at full width (19.07 M backbone parameters,
     19.42 M with the heads; key/shape table tests/models/anchor_reference/unet_full.json) with
     seeded random weights, as `{'net': {'module.backbone...': ...}}` (tests/models/pth_writer.py:
     a torch.save-format archive) and a (32, 512) float16 class table like txt_encoding.pth;
  2. `python -m dassemble_jax.import_checkpoint` (timed);
  3. a synthetic CT NIfTI of `--shape` voxels (int16 HU, LPS affine, `--pixel_mm` in-plane,
     `--slice_mm` slices: a body ellipse of soft tissue with organs, spine and lungs in air),
  4. `python -m dassemble_jax.predict --workdir=RUN --input=CT --output=OUT` (timed wall clock;
     its per-stage line is kept), twice: the first run includes the compilation.
Baseline, same process, same device: the model alone (one jitted forward of a 96^3 window at
the run's sw_batch_size, after compilation) times the number of windows predict runs; the
ratio says what the rest of the pipeline (reading, resampling, stitching, writing) adds.
Random weights: the timing does not depend on them, the predicted masks do (meaningless).
Output: `--out`/result.json and the commands' raw outputs.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.join(os.path.dirname(__file__), "..")
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests", "models"))

import anchor_weights
import jax
import nibabel as nib
import numpy as np
import pth_writer


def synthetic_ct(shape, pixel_mm, slice_mm, seed=0) -> nib.Nifti1Image:
  """int16 HU: air, an elliptic body (soft tissue 40 HU), a liver-like and a kidney-like blob,
  a spine (400 HU) and two lungs (-800 HU) in the upper third, 15 HU noise. LPS affine."""
  rng = np.random.default_rng(seed)
  x, y, z = shape
  xx, yy = np.meshgrid(np.arange(x) - x / 2, np.arange(y) - y / 2, indexing="ij")
  body = (xx / (0.36 * x)) ** 2 + (yy / (0.26 * y)) ** 2 <= 1
  vol = np.full(shape, -1000, np.int16)
  for k in range(z):
    sl = np.where(body, 40, -1000).astype(np.int16)
    sl[((xx + 0.12 * x) / (0.12 * x)) ** 2 + ((yy + 0.02 * y) / (0.1 * y)) ** 2 <= 1] = 60
    sl[((xx - 0.1 * x) / (0.04 * x)) ** 2 + ((yy - 0.08 * y) / (0.05 * y)) ** 2 <= 1] = 30
    sl[(xx / (0.03 * x)) ** 2 + ((yy - 0.18 * y) / (0.03 * y)) ** 2 <= 1] = 400
    if k > 2 * z // 3:
      for sx in (-1, 1):
        sl[((xx - sx * 0.15 * x) / (0.1 * x)) ** 2 + (yy / (0.15 * y)) ** 2 <= 1] = -800
    vol[:, :, k] = sl
  vol = (vol + rng.normal(0, 15, shape)).astype(np.int16)
  affine = np.diag([-pixel_mm, -pixel_mm, slice_mm, 1.0])
  affine[:3, 3] = [pixel_mm * x / 2, pixel_mm * y / 2, -slice_mm * z / 2]
  return nib.Nifti1Image(vol, affine)


def write_anchor_files(folder: str) -> tuple[str, str]:
  with open(os.path.join(ROOT, "tests/models/anchor_reference/unet_full.json")) as f:
    table = json.load(f)
  weights = anchor_weights.random_state_dict(table["keys"], seed=0)
  rng = np.random.default_rng(1)
  clip = (rng.standard_normal((32, 512)) * 0.3).astype(np.float16)
  state = collections.OrderedDict()
  for key in table["keys"]:
    if key.endswith("num_batches_tracked"):
      value = np.zeros((), np.int64)
    elif key == "organ_embedding":
      value = clip.astype(np.float32)
    else:
      value = weights[key]
    state["module." + key] = value
  ckpt, txt = os.path.join(folder, "unet.pth"), os.path.join(folder, "txt_encoding.pth")
  pth_writer.save({"net": state, "epoch": 0}, ckpt)
  pth_writer.save(clip, txt)
  return ckpt, txt


def run(cmd, log_path):
  start = time.perf_counter()
  proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, check=False)
  seconds = time.perf_counter() - start
  with open(log_path, "w") as f:
    f.write("$ " + " ".join(cmd) + f"\n# exit {proc.returncode}, {seconds:.1f} s\n")
    f.write(proc.stdout + proc.stderr)
  if proc.returncode:
    raise SystemExit(f"failed: {' '.join(cmd)}\n{proc.stderr[-2000:]}")
  return seconds, proc.stdout


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--out", default="benchmarks/raw/2026-12-05_published_model")
  parser.add_argument("--shape", default="512,512,40")
  parser.add_argument("--pixel_mm", type=float, default=0.8)
  parser.add_argument("--slice_mm", type=float, default=2.5)
  parser.add_argument("--repeats", type=int, default=2)
  args = parser.parse_args()
  os.makedirs(args.out, exist_ok=True)
  shape = tuple(int(s) for s in args.shape.split(","))
  result = {"device": str(jax.devices()[0]), "cpu_count": os.cpu_count(), "ct_shape": shape,
            "pixel_mm": args.pixel_mm, "slice_mm": args.slice_mm}
  with tempfile.TemporaryDirectory() as tmp:
    ckpt, txt = write_anchor_files(tmp)
    result["checkpoint_bytes"] = os.path.getsize(ckpt)
    run_dir = os.path.join(tmp, "run")
    py = sys.executable
    result["import_s"], _ = run([py, "-m", "dassemble_jax.import_checkpoint",
                                   f"--checkpoint={ckpt}", f"--class_table={txt}",
                                   f"--out={run_dir}"], os.path.join(args.out, "import.txt"))
    ct = os.path.join(tmp, "ct.nii.gz")
    nib.save(synthetic_ct(shape, args.pixel_mm, args.slice_mm), ct)
    result["ct_file_bytes"] = os.path.getsize(ct)
    times = []
    for r in range(args.repeats):
      seconds, _out = run([py, "-m", "dassemble_jax.predict", f"--workdir={run_dir}",
                          f"--input={ct}", f"--output={os.path.join(tmp, 'pred')}"],
                         os.path.join(args.out, f"predict_{r}.txt"))
      times.append(seconds)
      print(f"predict run {r}: {seconds:.1f} s", flush=True)
    result["predict_s"] = times

    # Baseline: the model alone on windows of the run's batch size, and how many windows the
    # scan needs (the same code path's geometry).
    from dassemble_jax.ct import scan_input
    from dassemble_jax.segmentation import inference, trained_run
    from dassemble_jax.segmentation import sliding_window as sw
    model = trained_run.load_model(run_dir)
    vol, affine, _ = scan_input.load_for_prediction(ct, dtype=None)
    grid_vol, grid = inference.to_model_grid_monai(vol, affine, model.spec.spacing)
    box = inference.foreground_box(grid_vol)
    cropped = grid_vol[box].shape
    padded = [max(s, w) for s, w in zip(cropped, model.spec.window)]
    n_windows = int(np.prod([len(sw.monai_window_starts(s, w, model.spec.overlap))
                             for s, w in zip(padded, model.spec.window)]))
    b = model.spec.sw_batch_size
    x = np.random.default_rng(0).uniform(0, 1, (b, *model.spec.window, 1)).astype(np.float32)
    fwd = jax.jit(model.apply_fn)
    jax.block_until_ready(fwd(model.variables, x))
    start = time.perf_counter()
    jax.block_until_ready(fwd(model.variables, x))
    per_batch = time.perf_counter() - start
    baseline = per_batch * -(-n_windows // b)
    result.update(model_grid=list(grid.shape), cropped_grid=list(cropped), windows=n_windows,
                  sw_batch_size=b, model_forward_s_per_batch=per_batch,
                  baseline_model_only_s=baseline,
                  ratio_predict_to_model_only=min(times) / baseline,
                  windows_per_s=n_windows / min(times))
  with open(os.path.join(args.out, "result.json"), "w") as f:
    json.dump(result, f, indent=1)
  print(json.dumps(result, indent=1))


if __name__ == "__main__":
  main()
