"""A CT as a DICOM series through `python -m dassemble_jax.predict --dicom_seg`, beside the same
CT as NIfTI: the README's DICOM example (outputs, the DICOM-SEG read back, both label maps).

  python benchmarks/dicom_example.py --workdir=RUN --ct=CT.nii.gz --out=OUT

Writes OUT/input/<case>/ (the CT as one DICOM file per slice, shuffled names, written with
pydicom by tests/ct/fake_dicom.py), runs predict on it with --dicom_seg and on the NIfTI, and
prints (and stores in OUT/summary.json) the command lines, their output, the files written, the
DICOM-SEG as highdicom reads it back, and whether the two label maps are the same voxels on the
same affine.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import highdicom as hd
import numpy as np

from dassemble_jax.ct import nifti_io, scan_input
from tests.ct import fake_dicom


def _predict(workdir, inp, out, *extra) -> dict:
  cmd = [sys.executable, "-m", "dassemble_jax.predict", f"--workdir={workdir}", f"--input={inp}",
         f"--output={out}", *extra]
  start = time.perf_counter()
  proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, check=False)
  return {"command": " ".join(["python", *cmd[1:]]), "exit": proc.returncode,
          "seconds": round(time.perf_counter() - start, 1), "stdout": proc.stdout,
          "stderr": proc.stderr}


def main() -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--workdir", required=True, help="a trained run folder")
  p.add_argument("--ct", required=True, help="a CT NIfTI")
  p.add_argument("--out", required=True)
  a = p.parse_args()
  out = pathlib.Path(a.out)
  case = scan_input.case_name(pathlib.Path(a.ct))
  hu, affine = nifti_io.load(a.ct)
  hu = np.rint(hu).astype(np.int32)
  intercept = float(min(-1024, hu.min()))
  series_dir = out / "input" / case
  fake_dicom.write_series(series_dir, hu, affine, intercept=intercept,
                          description="phantom abdomen")
  (out / "nifti").mkdir(parents=True, exist_ok=True)
  nifti_io.save(out / "nifti" / f"{case}.nii.gz", hu.astype(np.int16), affine)
  runs = {
      "dicom": _predict(a.workdir, series_dir, out / "pred", "--dicom_seg"),
      "nifti": _predict(a.workdir, out / "nifti" / f"{case}.nii.gz", out / "pred_nifti"),
  }
  summary = {"ct": a.ct, "shape": list(hu.shape),
             "spacing_mm": [round(float(s), 4) for s in nifti_io.voxel_sizes(affine)],
             "dicom_files": len(os.listdir(series_dir)), "runs": runs,
             "written": sorted(str(f.relative_to(out)) for f in (out / "pred").rglob("*")
                               if f.is_file())}
  if runs["dicom"]["exit"] == 0 and runs["nifti"]["exit"] == 0:
    from_dicom = nifti_io.load(out / "pred" / f"{case}.nii.gz")
    from_nifti = nifti_io.load(out / "pred_nifti" / f"{case}.nii.gz")
    summary["label_maps_equal"] = bool(np.array_equal(from_dicom[0], from_nifti[0]))
    summary["affines_equal"] = bool(np.allclose(from_dicom[1], from_nifti[1], atol=1e-5))
    seg_path = out / "pred" / f"{case}.seg.dcm"
    if seg_path.exists():
      seg = hd.seg.segread(seg_path)
      summary["dicom_seg"] = {
          "file": str(seg_path.relative_to(out)), "bytes": seg_path.stat().st_size,
          "sop_class": str(seg.SOPClassUID.name), "frames": int(seg.number_of_frames),
          "segments": {int(k): seg.get_segment_description(k).segment_label
                       for k in seg.segment_numbers},
          "referenced_series": [str(s.SeriesInstanceUID)
                                for s in seg.ReferencedSeriesSequence],
          "source_series": str(scan_input.load(series_dir).series.headers[0].SeriesInstanceUID),
      }
  text = json.dumps(summary, indent=1)
  (out / "summary.json").write_text(text + "\n")
  print(text)
  return 0 if all(r["exit"] == 0 for r in runs.values()) else 1


if __name__ == "__main__":
  sys.exit(main())
