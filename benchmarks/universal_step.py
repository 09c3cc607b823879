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
--volume times whole-volume prediction in the model grid, stage by stage: the sliding window
(windows = the crop, overlap 0.5, Gaussian weights, sigmoid) on a random volume of that many
voxels, thresholds + transfer to the host, and post-processing on phantom organ masks of that
size (a random-weight model's masks are noise, unlike any real prediction). --file_spacing adds
the user's path for a NIfTI of that many voxels at that spacing (read, resample to the model's
spacing, predict, post-process, resample back, write), again with phantom masks after the model.
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
from dassemble_jax.ct import bitmask, phantom, scan_input, taxonomy  # noqa: E402
from dassemble_jax.segmentation import trained_run  # noqa: E402
from dassemble_jax.segmentation import postprocess as pp  # noqa: E402
from dassemble_jax.segmentation import inference as seg_predict  # noqa: E402
from dassemble_jax.segmentation import sliding_window as sw  # noqa: E402
from dassemble_jax.segmentation import train_step  # noqa: E402


def _config(a):
  c = universal.get_config("full,swin" if a.backbone == "swin" else "full")
  c.crop_size, c.batch_size = a.crop, a.batch
  c.model.base_channels, c.model.feature_size = a.base_channels, a.feature_size
  c.model.class_code = "onehot" if a.embed_dim == 0 else "text"
  c.compute_dtype = a.dtype
  if a.norm:
    c.model.norm = a.norm
  c.model.head_impl = a.head_impl
  c.data.jitter = 2
  return c


def _host_batch(c, rng):
  w = c.crop_size + 2 * c.data.jitter
  b = c.batch_size
  return {"image": rng.random((b, w, w, w), np.float32).astype(np.float16),
          "label": rng.integers(0, 2**20, (b, w, w, w), dtype=np.uint32),
          "annotated": np.ones((b, 32), np.uint8), "source": np.zeros((b,), np.int32),
          "zoom_ok": np.ones((b,), np.uint8)}


def _log(msg: str) -> None:
  print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def phantom_masks(shape, seed: int = 0) -> np.ndarray:
  """(X, Y, Z, 32) bool organ + tumor masks of a phantom abdomen stretched to `shape`.

  What a trained model predicts: compact organs, a few lesions. (A random-weight model's masks
  are noise, which no real scan produces and which post-processing would spend minutes on.)
  """
  case = phantom.make_case(np.random.default_rng(seed), tumors=("liver_tumor", "kidney_tumor"))
  index = np.ix_(*[np.minimum((np.arange(n) * m) // n, m - 1)
                   for n, m in zip(shape, case.hu.shape)])
  masks = np.zeros(tuple(shape) + (32,), bool)
  for name, m in case.masks.items():
    if name != "body":
      masks[..., taxonomy.class_by_name(name).id - 1] = m[index]
  return masks


def time_volume(a, c, comp, state, table, rng) -> dict:
  """Whole-volume prediction, stage by stage (each after a compiling/warm-up call)."""
  shape = tuple(int(s) for s in a.volume.split(","))
  apply_fn = trained_run.apply_fn_for(comp.eval_def, str(jnp.dtype(c.compute_dtype)))
  variables = trained_run.host_variables(state, np.asarray(table))
  vol = rng.random(shape, np.float32)
  kw = dict(params=variables, window=(a.crop,) * 3, overlap=0.5, sw_batch_size=a.sw_batch)
  out = {"volume": shape}
  if not a.skip_grid:
    out.update(_time_grid(a, apply_fn, kw, vol, shape))
  if a.file_spacing:
    out.update(_time_file(a, c, apply_fn, kw, shape, rng))
  return out


def _time_grid(a, apply_fn, kw, vol, shape) -> dict:
  """Sliding window, thresholds and post-processing in a model grid of `shape` voxels."""
  out = {"windows": int(np.prod([len(sw.window_starts(n, a.crop, 0.5)) for n in shape]))}
  # 1. Sliding window: windows batched through the model, Gaussian-weighted stitching, sigmoid.
  _log(f"sliding window over {shape}: {out['windows']} windows (first call compiles)")
  jax.block_until_ready(sw.sliding_window_inference(apply_fn, vol, output="probs", **kw))
  t0 = time.perf_counter()
  probs = sw.sliding_window_inference(apply_fn, vol, output="probs", **kw)
  jax.block_until_ready(probs)
  out["sliding_window_s"] = time.perf_counter() - t0
  out["accumulated_on"] = "device" if isinstance(probs, jax.Array) else "host"
  # 2. Thresholds and packing where the probabilities are: a uint32 per voxel to the host.
  thresholds = jnp.full((probs.shape[-1],), 0.5, jnp.float32)
  np.array(seg_predict._threshold_bits_on_device(probs, thresholds))
  t0 = time.perf_counter()
  np.array(seg_predict._threshold_bits_on_device(probs, thresholds))
  out["threshold_to_host_s"] = time.perf_counter() - t0
  del probs
  # 3. Post-processing (host) of organ-like masks of this size, packed as predict_file has them.
  _log(f"sliding window {out['sliding_window_s']:.2f} s; post-processing phantom masks")
  bits = bitmask.pack(phantom_masks(shape))
  t0 = time.perf_counter()
  pp.postprocess_bits(bits, 32, copy=False)
  out["postprocess_s"] = time.perf_counter() - t0
  out["predict_volume_s"] = (out["sliding_window_s"] + out["threshold_to_host_s"]
                             + out["postprocess_s"])
  _log(f"post-processing {out['postprocess_s']:.2f} s")
  return out


def _time_file(a, c, apply_fn, kw, shape, rng) -> dict:
  """The user's path for a NIfTI of `volume` voxels at `file_spacing` mm, stage by stage.

  The stages of `segmentation.predict.predict_file` in its order, with one swap: the random-
  weight model's masks are replaced by phantom organ masks before post-processing and writing
  (noise masks would make both unrealistically slow). A full `predict_file` call first compiles
  everything for these shapes.
  """
  import tempfile

  import nibabel as nib
  spacing = [float(s) for s in a.file_spacing.split(",")]
  folder = tempfile.mkdtemp(prefix="bench_predict_")
  src = os.path.join(folder, "ct.nii.gz")
  hu = (rng.random(shape, np.float32) * 1000 - 500).astype(np.int16)
  nib.save(nib.Nifti1Image(hu, np.diag(spacing + [1.0])), src)
  _log("file path: warm-up call (compiles)")
  seg_predict.predict_file(apply_fn, src, os.path.join(folder, "warm.nii.gz"),
                           spacing=c.data.spacing, postprocess=False, **kw)
  stages = {}
  t0 = time.perf_counter()
  volume, affine, _ = scan_input.load_for_prediction(src, dtype=None)
  original = seg_predict.Grid(tuple(volume.shape), affine)
  model_volume, model_grid = seg_predict.to_model_grid(volume, affine, c.data.spacing)
  del volume
  stages["load_resample"] = time.perf_counter() - t0
  t0 = time.perf_counter()
  probs = sw.sliding_window_inference(apply_fn, model_volume, output="probs", **kw)
  bits = np.array(seg_predict._threshold_bits_on_device(probs, jnp.full((32,), 0.5)))
  stages["model_threshold"] = time.perf_counter() - t0
  del probs
  bits = bitmask.pack(phantom_masks(bits.shape))  # the swap (untimed)
  t0 = time.perf_counter()
  bits = pp.postprocess_bits(bits, 32, model_grid.affine, copy=False)
  stages["postprocess"] = time.perf_counter() - t0
  t0 = time.perf_counter()
  labels = pp.bits_to_label_map(bits)
  seg_predict.save_label_map(os.path.join(folder, "out.nii.gz"),
                             seg_predict.to_original_grid(labels, model_grid, original), affine)
  stages["write"] = time.perf_counter() - t0
  out = {"file_spacing_mm": spacing, "file_model_grid": list(model_volume.shape),
         "file_stages_s": stages, "file_total_s": sum(stages.values())}
  _log(f"file path {out['file_total_s']:.2f} s: {stages}")
  return out


def _time_step(a, c, comp, state, table, rng, out: dict):
  """Compiles the train step (FLOPs, memory) and, unless --analyse_only, times it."""
  batch = sharding.put_batch(_host_batch(c, rng), comp.mesh, c.batch_size)
  t0 = time.perf_counter()
  compiled = comp.step.lower(state, batch, table).compile()
  out["compile_s"] = time.perf_counter() - t0
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  mem = compiled.memory_analysis()
  peak = (mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes
          - mem.alias_size_in_bytes)
  out.update(flops_per_step_G=cost.get("flops", float("nan")) / 1e9, peak_memory_GB=peak / 1e9,
             temp_GB=mem.temp_size_in_bytes / 1e9)
  if a.analyse_only:
    return state
  times = []
  for i in range(a.steps + 1):
    t0 = time.perf_counter()
    state, m = compiled(state, batch, table)
    jax.block_until_ready(m)
    if i:  # the first call also allocates; leave it out
      times.append(time.perf_counter() - t0)
  out["step_s"] = statistics.median(times)
  out["achieved_GFLOPs"] = out["flops_per_step_G"] / out["step_s"]
  if a.flops_G:
    out["achieved_GFLOPs_at_given_flops"] = a.flops_G / out["step_s"]
  _log(f"step {out['step_s'] * 1e3:.1f} ms (median of {a.steps})")
  return state


def run(a) -> dict:
  c = _config(a)
  embed = max(a.embed_dim, 1)
  rng = np.random.default_rng(0)
  mesh = sharding.make_mesh()
  table = sharding.put_replicated(rng.normal(size=(32, embed)).astype(np.float32), mesh)
  t0 = time.perf_counter()
  comp = train_step.compiled_for(c, embed)
  state = comp.init_state()
  jax.block_until_ready(state)
  init_s = time.perf_counter() - t0
  n_params = sum(x.size for x in jax.tree.leaves(state["params"]))
  out = {"backbone": a.backbone, "norm": c.model.norm, "crop": a.crop, "batch": a.batch,
         "classes": 32, "params_M": n_params / 1e6, "dtype": a.dtype,
         "device": str(jax.devices()[0]), "init_s": init_s}
  if a.steps > 0 or a.analyse_only:
    state = _time_step(a, c, comp, state, table, rng, out)
  if a.volume:
    out.update(time_volume(a, c, comp, state, table, rng))
  return out


def add_model_args(p: argparse.ArgumentParser, dtype: str = "float32") -> None:
  """The model-size flags `_config` reads (shared with unet_breakdown.py)."""
  p.add_argument("--backbone", choices=("unet", "swin"), default="unet")
  p.add_argument("--crop", type=int, default=96)
  p.add_argument("--batch", type=int, default=2)
  p.add_argument("--base_channels", type=int, default=32)
  p.add_argument("--feature_size", type=int, default=48)
  p.add_argument("--embed_dim", type=int, default=384, help="0: one-hot codes")
  p.add_argument("--dtype", default=dtype, choices=("float32", "bfloat16"))
  p.add_argument("--norm", default="", choices=("", "batch", "group"),
                 help="U-Net normalisation ('' = the config's: batch)")
  p.add_argument("--head_impl", default="blockdiag", choices=("einsum", "blockdiag", "fused"),
                 help="dynamic heads (models/universal_head.py: HEAD_IMPLS; the config's "
                      "default: blockdiag)")


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  add_model_args(p)
  p.add_argument("--steps", type=int, default=3, help="0: no train step (prediction only)")
  p.add_argument("--analyse_only", action="store_true")
  p.add_argument("--volume", default="", help="X,Y,Z for a whole-volume prediction timing")
  p.add_argument("--sw_batch", type=int, default=4)
  p.add_argument("--flops_G", type=float, default=0.0,
                 help="FLOPs per step for the 'achieved' rate: XLA:GPU's cost analysis leaves "
                      "out cuDNN convolutions, so pass XLA:CPU's count (--analyse_only on a CPU)")
  p.add_argument("--skip_grid", action="store_true",
                 help="with --file_spacing: time only the file path, not the model-grid stages")
  p.add_argument("--file_spacing", default="",
                 help="X,Y,Z mm: also time NIfTI -> model grid -> predict -> file grid -> NIfTI")
  print(json.dumps(run(p.parse_args())), flush=True)


if __name__ == "__main__":
  main()
