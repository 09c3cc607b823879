"""scan_input: which scans a path holds, their case names, and the consumers that read them
(synth overlay's --ct/--seg; predict and convert are tested in test_dicom_seg / test_convert)."""

import json
import zipfile

import nibabel as nib
import numpy as np
import pytest

from dassemble_jax.ct import nifti_io, scan_input
from dassemble_jax.ct.nifti_io import CaseError
from dassemble_jax.synth import realct
from tests.ct import fake_dicom as fd


def test_find_inputs_names_every_kind_of_scan(tmp_path):
  root = tmp_path / "inputs"
  hu = fd.tiny_volume()
  nifti_io.save(root / "case_a.nii.gz", hu, fd.lps_affine())
  nifti_io.save(root / "case_b.nii", hu, fd.lps_affine())
  (root / "notes.txt").write_text("not a scan")
  # TCIA-style nesting: the case is the top folder under the input.
  fd.write_series(root / "PANCREAS_0001" / "11-24-2015-study" / "1-1", hu, fd.lps_affine())
  # One case folder with two phases, and a third series described like the second.
  fd.write_series(root / "patient9" / "art", hu, fd.lps_affine(), description="arterial",
                  number=3)
  fd.write_series(root / "patient9" / "ven", hu, fd.lps_affine(), description="venous",
                  number=4, series_uid="1.2.3.4.500001")
  fd.write_series(root / "patient9" / "ven2", hu, fd.lps_affine(), description="venous",
                  number=5, series_uid="1.2.3.4.500002")
  files = fd.write_series(tmp_path / "z", hu, fd.lps_affine())
  with zipfile.ZipFile(root / "zipped.zip", "w") as z:
    for f in files:
      z.write(f, f.name)
  scans = scan_input.find_inputs(root)
  assert [s.name for s in scans] == [
      "case_a", "case_b", "zipped", "PANCREAS_0001", "patient9_arterial",
      "patient9_venous_4.500001", "patient9_venous_4.500002"]
  assert [s.is_dicom for s in scans] == [False, False, True, True, True, True, True]
  assert scans[3].path == root / "PANCREAS_0001" / "11-24-2015-study" / "1-1"
  assert "series 4 'venous' (1.2.3.4.500001)" in str(scans[5])
  for scan in scans:
    np.testing.assert_array_equal(scan_input.load(scan).data, hu)
  # A series folder given directly is one case named after the folder.
  assert [s.name for s in scan_input.find_inputs(root / "PANCREAS_0001")] == ["PANCREAS_0001"]
  assert [s.name for s in scan_input.find_inputs(root / "case_b.nii")] == ["case_b"]


def test_find_inputs_refusals(tmp_path):
  (tmp_path / "scan.txt").write_text("text")
  with pytest.raises(CaseError, match=r"scan.txt: not a NIfTI file .*, a DICOM series folder"):
    scan_input.find_inputs(tmp_path / "scan.txt")
  with pytest.raises(CaseError, match="missing: no such file or folder"):
    scan_input.find_inputs(tmp_path / "missing")
  with zipfile.ZipFile(tmp_path / "empty.zip", "w") as z:
    z.writestr("readme.txt", "no DICOM here")
  with pytest.raises(CaseError, match="empty.zip: no DICOM image files in this zip"):
    scan_input.find_inputs(tmp_path / "empty.zip")


def _liver_case(tmp_path):
  """An ellipsoid liver in a CT written as a DICOM series, and the same CT as NIfTI."""
  from tests.synth.toy import ellipsoid_liver
  spacing = (2.0, 2.0, 3.0)
  ct, liver = ellipsoid_liver((40, 36, 20), spacing, semi_mm=(34.0, 30.0, 27.0))
  ct = np.clip(np.rint(ct), -1000, 2000).astype(np.int16)
  affine = fd.lps_affine(spacing=spacing)
  fd.write_series(tmp_path / "ct_dicom", ct, affine)
  nifti_io.save(tmp_path / "ct.nii.gz", ct, affine)
  seg = np.where(liver, 5, 0).astype(np.uint8)
  nifti_io.save(tmp_path / "seg.nii.gz", seg, affine)
  # The segmentation as a converter may store it: RAS voxel order (x and y flipped).
  ras, ras_affine = nifti_io.reorient_to_ras(seg, affine)
  nifti_io.save(tmp_path / "seg_ras.nii.gz", ras, ras_affine)
  return ct, liver, affine


def test_synth_volume_from_dicom_is_the_volume_from_nifti(tmp_path):
  ct, liver, affine = _liver_case(tmp_path)
  a = realct.load_files(str(tmp_path / "ct.nii.gz"), str(tmp_path / "seg.nii.gz"), [5])
  b = realct.load_files(str(tmp_path / "ct_dicom"), str(tmp_path / "seg_ras.nii.gz"), [5])
  for v in (a, b):
    np.testing.assert_array_equal(v.ct, ct)
    np.testing.assert_array_equal(v.liver, liver)
    np.testing.assert_allclose(v.affine, affine, atol=1e-5)
    assert v.spacing == (2.0, 2.0, 3.0) and (v.cc_axis, v.cranial_is_high) == (2, True)
  # A segmentation of another grid is refused, naming both files.
  nifti_io.save(tmp_path / "other.nii.gz", np.zeros((40, 36, 19), np.uint8), affine)
  with pytest.raises(CaseError, match=r"other.nii.gz: not on the voxel grid of .*ct_dicom"):
    realct.load_files(str(tmp_path / "ct_dicom"), str(tmp_path / "other.nii.gz"), [5])


def test_synth_overlay_on_a_dicom_series(tmp_path):
  from dassemble_jax.jobs import synth_overlay
  ct, liver, affine = _liver_case(tmp_path)
  out = tmp_path / "out"
  assert synth_overlay.main(["--out", str(out), "--ct", str(tmp_path / "ct_dicom"), "--seg",
                             str(tmp_path / "seg_ras.nii.gz"), "--kind", "small", "--seed", "3",
                             "--max-pngs", "1"]) == 0
  summary = json.loads((out / "summary.json").read_text())
  assert summary["n_tumors"] >= 1 and summary["source"].endswith("seg_ras.nii.gz")
  new = nib.load(out / "ct_with_tumors.nii.gz")
  np.testing.assert_allclose(new.affine, affine, atol=1e-5)  # the DICOM CT's own grid
  label = np.asarray(nib.load(out / "label.nii.gz").dataobj)
  np.testing.assert_array_equal(label > 0, liver)
  diff = np.asarray(new.dataobj).astype(int) - ct
  assert np.all(diff[~liver] == 0) and diff[label == 2].mean() < -10
