"""Host-side stages of whole-scan prediction, timed on realistic masks (new vs old implementation).

    .venv/bin/python benchmarks/predict_host.py                      # new implementation only
    .venv/bin/python benchmarks/predict_host.py --reference          # also the old one: ratios
    .venv/bin/python benchmarks/predict_host.py --reference --repeats=3   # min of 3 runs each
    .venv/bin/python benchmarks/predict_host.py --file_shape=128,128,80 --reference   # quick

The stages of `segmentation.inference.predict_file` that run on the host, the model left out:
  load_resample  read a gzip NIfTI (int16, `--file_shape` at `--file_spacing` mm) and bring it to
                 the model grid (RAS, `--spacing` mm, HU window);
  postprocess    `postprocess.postprocess` on phantom organ + tumor masks of the model grid's shape
                 (`benchmarks/universal_step.phantom_masks`: what a trained model predicts);
  write          label map, nearest resampling back to the file's grid, gzip NIfTI save.
The thresholds and the device-to-host transfer of the masks are not here (universal_step.py).
The input CT is the phantom abdomen's HU stretched to the file shape plus 15 HU of noise, so
gzip sees CT-like data, not white noise.

`--reference` also runs the implementation before the host-speed rewrite (kept below, verbatim,
as `ref_*`; tests/segmentation/test_inference_speed_equivalence.py checks the new one against it) and checks
that both give the same masks and the same written file.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import nibabel as nib
import numpy as np
from scipy import ndimage

from dassemble_jax.ct import bitmask, nifti_io, preprocess, resample, scan_input, taxonomy
from dassemble_jax.segmentation import inference
from dassemble_jax.segmentation import postprocess as pp

# ---------------------------------------------------------------------------------------------
# Reference: postprocess.py and inference.py as of commit 1ca273f (before the host-speed rewrite).

_FULL = np.ones((3, 3, 3), bool)


def _ref_bbox(mask):
  slices = []
  for axis in range(mask.ndim):
    others = tuple(a for a in range(mask.ndim) if a != axis)
    nz = np.flatnonzero(mask.any(axis=others))
    if nz.size == 0:
      return None
    slices.append(slice(nz[0], nz[-1] + 1))
  return tuple(slices)


def ref_largest_components(mask, k=1):
  mask = np.asarray(mask, bool)
  out = np.zeros_like(mask)
  box = _ref_bbox(mask)
  if box is None:
    return out
  components, n = ndimage.label(mask[box], structure=_FULL)
  if n <= k:
    out[box] = mask[box]
    return out
  sizes = np.bincount(components.ravel(), minlength=n + 1)[1:]
  keep = np.zeros(n + 1, bool)
  keep[1 + np.argsort(-sizes, kind="stable")[:k]] = True
  out[box] = keep[components]
  return out


def _ref_world_x(points, affine):
  if affine is None:
    return points[:, 0]
  affine = np.asarray(affine, np.float64)
  return points @ affine[0, :3] + affine[0, 3]


def ref_keep_two_largest_by_side(mask, affine=None):
  mask = np.asarray(mask, bool)
  right, left = np.zeros_like(mask), np.zeros_like(mask)
  box = _ref_bbox(mask)
  if box is None:
    return right, left
  components, n = ndimage.label(mask[box], structure=_FULL)
  offset = np.array([s.start for s in box], np.float64)
  sizes = np.bincount(components.ravel(), minlength=n + 1)[1:]
  top = 1 + np.argsort(-sizes, kind="stable")[:2]
  centres = np.asarray(ndimage.center_of_mass(mask[box], components, top), np.float64) + offset
  x = _ref_world_x(centres.reshape(-1, 3), affine)
  if n == 1:
    middle = (np.asarray(mask.shape, np.float64) - 1) / 2
    is_right = x[0] > _ref_world_x(middle[None], affine)[0]
    (right if is_right else left)[box] = components == top[0]
    return right, left
  r, l = (top[0], top[1]) if x[0] > x[1] else (top[1], top[0])
  right[box] = components == r
  left[box] = components == l
  return right, left


def ref_split_lungs(masks, affine=None):
  masks = np.array(masks, bool, copy=True)
  r, l = pp.LUNG_RIGHT - 1, pp.LUNG_LEFT - 1
  union = masks[..., r] | masks[..., l]
  box = _ref_bbox(union)
  if box is None:
    return masks
  _, n = ndimage.label(union[box], structure=_FULL)
  if n >= 2:
    masks[..., r], masks[..., l] = ref_keep_two_largest_by_side(union, affine)
  else:
    masks[..., r] &= union
    masks[..., l] &= union
  return masks


def _ref_padded_morphology(mask, size, op):
  pad = size
  padded = np.pad(mask, pad)
  out = op(padded, structure=np.ones((size,) * 3, bool))
  return out[pad:-pad, pad:-pad, pad:-pad]


def ref_host_region(host, closing=5, dilation=5):
  host = np.asarray(host, bool)
  out = np.zeros_like(host)
  box = _ref_bbox(host)
  if box is None:
    return out
  grow = dilation // 2 + 1
  big = tuple(slice(max(s.start - grow, 0), min(s.stop + grow, n))
              for s, n in zip(box, host.shape))
  region = host[big]
  if closing > 1:
    region = _ref_padded_morphology(region, closing, ndimage.binary_closing)
  if dilation > 1:
    region = _ref_padded_morphology(region, dilation, ndimage.binary_dilation)
  out[big] = region
  return out


def ref_postprocess(masks, affine=None, *, lcc_ids=pp.LCC_IDS, lungs=True,
                    host_filter_ids=pp.HOST_FILTER_IDS, closing=5, dilation=5):
  masks = np.array(masks, bool, copy=True)
  c = masks.shape[-1]
  for i in lcc_ids:
    if i <= c:
      masks[..., i - 1] = ref_largest_components(masks[..., i - 1], 1)
  if lungs and max(pp.LUNG_RIGHT, pp.LUNG_LEFT) <= c:
    masks = ref_split_lungs(masks, affine)
  for lesion in host_filter_ids:
    hosts = [h for h in pp.host_ids(lesion) if h <= c]
    if lesion > c or not hosts or not masks[..., lesion - 1].any():
      continue
    host = np.logical_or.reduce([masks[..., h - 1] for h in hosts])
    masks[..., lesion - 1] &= ref_host_region(host, closing, dilation)
  return masks


def ref_masks_to_label_map(masks):
  masks = np.asarray(masks, bool)
  c = masks.shape[-1]
  if c > 255:
    raise ValueError(f"{c} classes do not fit a uint8 label map")
  labels = np.zeros(masks.shape[:-1], np.uint8)
  organs = [i for i in range(1, c + 1) if i not in taxonomy.TUMOR_IDS]
  lesions = [i for i in range(1, c + 1) if i in taxonomy.TUMOR_IDS]
  for i in organs + lesions:
    labels[masks[..., i - 1]] = i
  return labels


def ref_resample_to_spacing(data, affine, spacing, *, order, out_dtype=None):
  # ct/resample.py's SciPy version, before prediction's separable one replaced it there.
  spacing = np.broadcast_to(np.asarray(spacing, np.float64), (3,))
  old = nifti_io.voxel_sizes(affine)
  scale = spacing / old
  new_affine = np.array(affine, np.float64)
  new_affine[:3, :3] = affine[:3, :3] * scale[None, :]
  shape = resample.resampled_shape(data.shape, old, spacing)
  if np.allclose(scale, 1.0) and shape == data.shape:
    return data.astype(out_dtype or data.dtype, copy=False), new_affine
  out = ndimage.affine_transform(data, scale, output_shape=shape, order=order, mode="nearest",
                                 output=out_dtype or data.dtype, prefilter=False)
  return out, new_affine


def _ref_scipy_to_original_grid(data, affine, original_affine, original_shape):
  # ct/resample.py's SciPy version (mode 'constant'), before prediction's moved there.
  mapping = np.linalg.inv(affine) @ np.asarray(original_affine, np.float64)
  return ndimage.affine_transform(data, mapping[:3, :3], offset=mapping[:3, 3],
                                  output_shape=tuple(int(n) for n in original_shape),
                                  order=0, mode="constant", cval=0.0, prefilter=False)


def ref_to_model_grid(volume, affine, spacing):
  ras, ras_affine = nifti_io.reorient_to_ras(volume, affine)
  res, res_affine = ref_resample_to_spacing(ras, ras_affine, spacing, order=1,
                                            out_dtype=np.float32)
  return preprocess.scale_hu(res), inference.Grid(tuple(res.shape), res_affine)


def _ref_axis_aligned_map(mapping):
  m = mapping[:3, :3]
  nz = np.abs(m) > 1e-9 * np.abs(m).max()
  if not (np.all(nz.sum(0) == 1) and np.all(nz.sum(1) == 1)):
    return None
  return [int(np.flatnonzero(row)[0]) for row in nz]


def ref_to_original_grid(data, model, original):
  data = np.asarray(data)
  mapping = np.linalg.inv(model.affine) @ np.asarray(original.affine, np.float64)
  axes = _ref_axis_aligned_map(mapping)
  if axes is None:
    if data.ndim == 3:
      return _ref_scipy_to_original_grid(data, model.affine, original.affine, original.shape)
    return np.stack([_ref_scipy_to_original_grid(data[..., k], model.affine, original.affine,
                                                 original.shape)
                     for k in range(data.shape[-1])], -1)
  reverse = data.ndim == 3
  out_shape = tuple(original.shape[::-1]) if reverse else tuple(original.shape)
  index, valid = [], np.ones(out_shape, bool)
  for i, j in enumerate(axes):
    v = np.arange(original.shape[j], dtype=np.float64)
    coord = np.floor(mapping[i, j] * v + mapping[i, 3] + 0.5).astype(np.int64)
    ok = (coord >= 0) & (coord < data.shape[i])
    shape = [1, 1, 1]
    shape[2 - j if reverse else j] = -1
    index.append(np.clip(coord, 0, data.shape[i] - 1).reshape(shape))
    valid &= ok.reshape(shape)
  out = data[index[0], index[1], index[2]]
  if not valid.all():
    out[~valid] = 0
  return out.T if reverse else out


def ref_save_label_map(path, labels, affine):
  labels = np.asarray(labels)
  if labels.ndim != 3:
    raise ValueError(f"{path}: a label map must be 3D, got shape {labels.shape}")
  if labels.size and (labels.min() < 0 or labels.max() > 255):
    raise ValueError(f"{path}: labels outside 0..255 do not fit uint8")
  nifti_io.save(path, labels.astype(np.uint8, copy=False), affine)


def ref_load(path):
  img = nib.load(str(path))  # Python's zlib inflate (nifti_io.load now inflates with ISA-L)
  affine = np.asarray(img.affine, np.float64)
  return np.asanyarray(img.dataobj).astype(np.float32), affine, nifti_io.voxel_sizes(affine)


REFERENCE = {"load": ref_load, "to_model_grid": ref_to_model_grid,
                 "postprocess": ref_postprocess, "label_map": ref_masks_to_label_map,
                 "to_original_grid": ref_to_original_grid, "save": ref_save_label_map}

REFERENCE["prepare"] = lambda masks: masks

# What predict_file does now: the int16 scan read as is; masks packed to (X, Y, Z) uint32 (on the
# device in predict_file, so timed apart here: "pack"), post-processed and drawn packed.
NEW = {"load": lambda path: scan_input.load_for_prediction(path, dtype=None),
           "to_model_grid": inference.to_model_grid, "prepare": bitmask.pack,
           "postprocess": lambda bits, affine: pp.postprocess_bits(bits, 32, affine, copy=False),
           "label_map": pp.bits_to_label_map, "to_original_grid": inference.to_original_grid,
           "save": inference.save_label_map}


# ---------------------------------------------------------------------------------------------
# Inputs and the timed run.


def phantom_ct(shape, seed: int = 0) -> np.ndarray:
  """(X, Y, Z) int16 HU: the phantom abdomen stretched to `shape`, plus 15 HU of noise."""
  from dassemble_jax.ct import phantom
  case = phantom.make_case(np.random.default_rng(seed))
  index = np.ix_(*[np.minimum((np.arange(n) * m) // n, m - 1)
                   for n, m in zip(shape, case.hu.shape)])
  noise = np.random.default_rng(seed + 1).normal(0.0, 15.0, shape).astype(np.float32)
  return np.clip(case.hu[index] + noise, -1024, 3071).astype(np.int16)


def write_input(folder: str, shape, spacing) -> tuple[str, np.ndarray]:
  """An LPS-style gzip NIfTI of the phantom CT (as a DICOM conversion writes it)."""
  affine = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])
  affine[:3, 3] = [200.0, 180.0, -400.0]
  path = os.path.join(folder, "ct.nii.gz")
  nib.save(nib.Nifti1Image(phantom_ct(shape), affine), path)
  return path, affine


STAGES = ("load_resample", "postprocess", "write", "total")


def run_stages(impl: dict, src: str, spacing: float, masks: np.ndarray, out: str) -> dict:
  """Times the three host stages with implementation `impl`; returns timings and results."""
  t = {}
  t0 = time.perf_counter()
  volume, affine, _ = impl["load"](src)
  t["load"] = time.perf_counter() - t0
  original = inference.Grid(tuple(volume.shape), affine)
  model_volume, grid = impl["to_model_grid"](volume, affine, spacing)
  t["load_resample"] = time.perf_counter() - t0
  t["resample"] = t["load_resample"] - t["load"]
  del volume
  if masks.shape[:3] != grid.shape:
    raise ValueError(f"masks {masks.shape} do not match the model grid {grid.shape}")
  t0 = time.perf_counter()
  prepared = impl["prepare"](masks)
  t["pack"] = time.perf_counter() - t0
  t0 = time.perf_counter()
  post = impl["postprocess"](prepared, grid.affine)
  t["postprocess"] = time.perf_counter() - t0
  t0 = time.perf_counter()
  labels = impl["label_map"](post)
  t["label_map"] = time.perf_counter() - t0
  labels = impl["to_original_grid"](labels, grid, original)
  t["to_original_grid"] = time.perf_counter() - t0 - t["label_map"]
  impl["save"](out, labels, affine)
  t["write"] = time.perf_counter() - t0
  t["save"] = t["write"] - t["label_map"] - t["to_original_grid"]
  t["total"] = t["load_resample"] + t["postprocess"] + t["write"]
  return {"timings": t, "model_volume": model_volume, "post": post, "grid": grid}


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--file_shape", default="512,512,300", help="voxels of the input NIfTI")
  p.add_argument("--file_spacing", default="0.78,0.78,1.0", help="its voxel size, mm")
  p.add_argument("--spacing", type=float, default=1.5, help="the model's voxel size, mm")
  p.add_argument("--reference", action="store_true", help="also time the old implementation")
  p.add_argument("--repeats", type=int, default=1,
                 help="runs of each implementation; each stage's minimum is reported (on a "
                      "shared machine the minimum is the least disturbed run)")
  p.add_argument("--json", default="", help="write the results here too")
  a = p.parse_args()
  sys.path.insert(0, os.path.dirname(__file__))  # (only when run: tests import this module)
  from universal_step import phantom_masks

  shape = tuple(int(s) for s in a.file_shape.split(","))
  file_spacing = [float(s) for s in a.file_spacing.split(",")]
  folder = tempfile.mkdtemp(prefix="predict_host_")
  src, _ = write_input(folder, shape, file_spacing)
  model_shape = resample.resampled_shape(shape, file_spacing, [a.spacing] * 3)
  masks = phantom_masks(model_shape)
  result = {"repeats": a.repeats, "file_shape": shape, "file_spacing_mm": file_spacing,
            "model_spacing_mm": a.spacing,
            "model_grid": model_shape, "classes": masks.shape[-1],
            "mask_voxels": int(masks.sum()), "load_average": os.getloadavg(),
            "cpus": os.cpu_count()}
  runs = {"new": NEW}
  if a.reference:
    runs["reference"] = REFERENCE
  outs, best = {}, {}
  for _ in range(a.repeats):  # implementations interleaved, so both see the same machine load
    for name, impl in runs.items():
      outs[name] = run_stages(impl, src, a.spacing, masks, os.path.join(folder, f"{name}.nii.gz"))
      for k, v in outs[name]["timings"].items():
        best.setdefault(name, {})[k] = min(v, best.get(name, {}).get(k, np.inf))
  for name in runs:
    result[name] = {k: round(v, 3) for k, v in best[name].items()}
    print(f"{name:>9}: " + ", ".join(f"{k} {result[name][k]:.2f} s" for k in STAGES)
          + "  (" + ", ".join(f"{k} {v:.2f}" for k, v in result[name].items() if k not in STAGES)
          + ")", flush=True)
  if a.reference:
    new, ref = outs["new"], outs["reference"]
    result["speedup"] = {k: round(result["reference"][k] / max(result["new"][k], 1e-9), 1)
                         for k in STAGES}
    result["max_abs_diff_model_volume"] = float(np.max(np.abs(
        new["model_volume"] - ref["model_volume"])))
    result["same_masks"] = bool(np.array_equal(bitmask.unpack(new["post"], 32), ref["post"]))
    t0 = time.perf_counter()
    api = pp.postprocess(masks, new["grid"].affine)
    result["postprocess_masks_api_s"] = round(time.perf_counter() - t0, 3)
    result["same_masks_api"] = bool(np.array_equal(api, ref["post"]))
    result["same_label_file"] = bool(np.array_equal(
        np.asanyarray(nib.load(os.path.join(folder, "new.nii.gz")).dataobj),
        np.asanyarray(nib.load(os.path.join(folder, "reference.nii.gz")).dataobj)))
    print(f"  speedup: {result['speedup']}; model volume max |diff| "
          f"{result['max_abs_diff_model_volume']:.2e}; same masks {result['same_masks']} "
          f"(masks API: {result['postprocess_masks_api_s']:.2f} s, "
          f"same {result['same_masks_api']}); "
          f"same label file {result['same_label_file']}")
  result["load_average_after"] = os.getloadavg()
  print(json.dumps(result))
  if a.json:
    with open(a.json, "w") as f:
      json.dump(result, f, indent=1)
  for name in os.listdir(folder):
    os.unlink(os.path.join(folder, name))
  os.rmdir(folder)


if __name__ == "__main__":
  main()
