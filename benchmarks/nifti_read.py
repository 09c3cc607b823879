"""Reading a gzip NIfTI CT: nibabel's zlib inflate vs `ct.nifti_io.load` (ISA-L inflate).

    .venv/bin/python benchmarks/nifti_read.py                       # 512 x 512 x 300 int16
    .venv/bin/python benchmarks/nifti_read.py --file_shape=128,128,80 --repeats=3

The input is `predict_host.phantom_ct` (the phantom abdomen's HU stretched to the shape plus
15 HU of noise, so gzip sees CT-like data), saved by nibabel (gzip level 1, as nibabel writes
and as most converters do). Each reader runs `--repeats` times, interleaved so both see the same
machine load; the minimum is reported, and both must return the same array.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(__file__))

import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
from predict_host import write_input  # noqa: E402

from dassemble_jax.ct import nifti_io  # noqa: E402


def read_nibabel(path: str) -> np.ndarray:
  """What nifti_io.load did before: nib.load (Python's zlib inflate) and the full array."""
  return np.asanyarray(nib.load(path).dataobj)


def read_ours(path: str) -> np.ndarray:
  return nifti_io.load(path)[0]


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--file_shape", default="512,512,300")
  p.add_argument("--repeats", type=int, default=5)
  a = p.parse_args()
  shape = tuple(int(s) for s in a.file_shape.split(","))
  folder = tempfile.mkdtemp(prefix="nifti_read_")
  path, _ = write_input(folder, shape, (0.78, 0.78, 1.0))
  readers = {"nibabel_zlib": read_nibabel, "nifti_io_isal": read_ours}
  best, arrays = {}, {}
  load_before = os.getloadavg()
  for _ in range(a.repeats):
    for name, read in readers.items():
      t0 = time.perf_counter()
      arrays[name] = read(path)
      best[name] = min(best.get(name, np.inf), time.perf_counter() - t0)
  raw_mb = int(np.prod(shape)) * 2 / 1e6
  result = {"file_shape": shape, "file_MB": round(os.path.getsize(path) / 1e6, 1),
            "raw_MB": round(raw_mb, 1), "repeats": a.repeats, "cpus": os.cpu_count(),
            "load_average_before": load_before, "load_average_after": os.getloadavg(),
            "same_array": bool(np.array_equal(*arrays.values())),
            **{f"{k}_s": round(v, 3) for k, v in best.items()},
            **{f"{k}_MB_per_s": round(raw_mb / v) for k, v in best.items()},
            "speedup": round(best["nibabel_zlib"] / best["nifti_io_isal"], 2)}
  os.remove(path)
  print(json.dumps(result))


if __name__ == "__main__":
  main()
