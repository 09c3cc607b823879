"""One NIfTI file per class (`predict --per_class`): the current writer vs the previous one.

  .venv/bin/python benchmarks/per_class_write.py [--shape=512,512,300] [--classes=32]
      [--organs=20] [--repeats=3]

Packed masks (X, Y, Z) uint32 of a synthetic scan: `--organs` boxes of 20-120 voxels a side at
random places (some overlapping, as lesions in organs), the other classes empty. Both writers
produce the same files (checked here); times are medians over `--repeats`, in one process.

  previous  per class: bit k of the whole array, a Fortran-ordered uint8 copy, nibabel's zlib
            gzip (the code before this benchmark, kept here as the baseline);
  current   `segmentation.inference.save_per_class`: per-class bounding boxes from two passes
            (`ct.bitmask.class_boxes`), only the box copied into one reused zero volume,
            ISA-L gzip.

Also the label map alone (`nifti_io.save` vs `nib.save`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time

import nibabel as nib
import numpy as np

from dassemble_jax.ct import nifti_io
from dassemble_jax.segmentation import inference


def synthetic_bits(shape, organs: int, seed: int = 0) -> np.ndarray:
  rng = np.random.default_rng(seed)
  bits = np.zeros(shape, np.uint32)
  for k in range(organs):
    half = rng.integers(10, 60, 3)
    centre = [rng.integers(h, max(h + 1, s - h)) for h, s in zip(half, shape)]
    box = tuple(slice(max(0, c - h), c + h) for c, h in zip(centre, half))
    bits[box] |= np.uint32(1) << np.uint32(k)
  return bits


def previous_save_per_class(directory, masks, affine, class_names):
  """The writer before the rewrite (baseline): whole-array bit extraction per class."""
  os.makedirs(directory, exist_ok=True)
  paths = []
  for k, name in enumerate(class_names):
    channel = (masks >> masks.dtype.type(k)) & 1
    img = nib.Nifti1Image(np.array(channel, dtype=np.uint8, order="F"), affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    path = os.path.join(directory, f"{name}.nii.gz")
    nib.save(img, path)
    paths.append(path)
  return paths


def _median_time(fn, repeats: int) -> float:
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return statistics.median(times)


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--shape", default="512,512,300")
  p.add_argument("--classes", type=int, default=32)
  p.add_argument("--organs", type=int, default=20)
  p.add_argument("--repeats", type=int, default=3)
  a = p.parse_args()
  shape = tuple(int(s) for s in a.shape.split(","))
  bits = synthetic_bits(shape, min(a.organs, a.classes))
  names = [f"class_{k:02d}" for k in range(a.classes)]
  affine = np.diag([0.78, 0.78, 1.0, 1.0])
  labels = np.asfortranarray(np.where(bits > 0, np.log2(np.maximum(bits, 1)).astype(np.uint8) + 1,
                                      0).astype(np.uint8))
  out = {"device": f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)",
         "shape": shape, "classes": a.classes, "non_empty": min(a.organs, a.classes)}
  with tempfile.TemporaryDirectory() as tmp:
    prev = _median_time(lambda: previous_save_per_class(os.path.join(tmp, "prev"), bits, affine,
                                                        names), a.repeats)
    cur = _median_time(lambda: inference.save_per_class(os.path.join(tmp, "cur"), bits, affine,
                                                      names), a.repeats)
    for name in names:  # same files (same voxels, same header)
      x = nib.load(os.path.join(tmp, "prev", f"{name}.nii.gz"))
      y = nib.load(os.path.join(tmp, "cur", f"{name}.nii.gz"))
      assert x.header.binaryblock == y.header.binaryblock, name
      assert np.array_equal(np.asanyarray(x.dataobj), np.asanyarray(y.dataobj)), name
    size = lambda d: sum(os.path.getsize(os.path.join(tmp, d, f)) for f in os.listdir(
        os.path.join(tmp, d)))
    out.update(previous_s=prev, current_s=cur, previous_s_per_file=prev / a.classes,
               current_s_per_file=cur / a.classes, speedup=prev / cur,
               previous_MB=size("prev") / 1e6, current_MB=size("cur") / 1e6)

    def nib_label_map():
      img = nib.Nifti1Image(labels, affine)
      img.set_qform(affine, code=1)
      img.set_sform(affine, code=1)
      nib.save(img, os.path.join(tmp, "labels_nib.nii.gz"))

    lm_prev = _median_time(nib_label_map, a.repeats)
    lm_cur = _median_time(lambda: nifti_io.save(os.path.join(tmp, "labels.nii.gz"), labels,
                                                affine), a.repeats)
    out.update(label_map_nib_s=lm_prev, label_map_current_s=lm_cur,
               label_map_speedup=lm_prev / lm_cur)
  print(json.dumps(out, indent=1, default=str))


if __name__ == "__main__":
  main()
