"""DICOM series in: order by position, rescale, LPS -> RAS, several series, refusals.

Series are written by tests/ct/fake_dicom.py with pydicom (geometry derived by hand from a RAS
affine). The reader is checked against the volume and affine they were written from, against
the NIfTI of the same volume (both loaded through scan_input), and against nibabel's own DICOM
geometry (`nibabel.nicom.dicomwrappers`) slice by slice.
"""

import warnings
import zipfile

import numpy as np
import pydicom
import pytest

from dassemble_jax.ct import dicom_io, nifti_io, scan_input
from dassemble_jax.ct.nifti_io import CaseError
from tests.ct import fake_dicom as fd


def _oblique_affine():
  """An axial CT rotated 10 degrees about the table axis, anisotropic, LPS-like signs."""
  t = np.radians(10.0)
  rot = np.array([[np.cos(t), -np.sin(t), 0.0], [np.sin(t), np.cos(t), 0.0], [0.0, 0.0, 1.0]])
  a = np.eye(4)
  a[:3, :3] = rot @ np.diag([-0.7, -0.8, 2.5])
  a[:3, 3] = [120.0, 95.0, -300.0]
  return a


@pytest.mark.parametrize("affine", [fd.lps_affine(), _oblique_affine()], ids=["axial", "oblique"])
def test_series_matches_its_nifti_and_nibabel(tmp_path, affine):
  hu = fd.tiny_volume()
  files = fd.write_series(tmp_path / "series", hu, affine)
  assert sorted(p.name for p in files) != [p.name for p in files]  # names not in slice order
  series = dicom_io.read_series(tmp_path / "series")
  assert series.volume.dtype == np.int16  # slope 1, integer intercept: stays int16
  np.testing.assert_array_equal(series.volume, hu)
  np.testing.assert_allclose(series.affine, affine, atol=1e-5)
  # The NIfTI of the same volume, loaded the same way: same voxels, same affine.
  nifti_io.save(tmp_path / "same.nii.gz", hu, affine)
  from_nifti = scan_input.load(tmp_path / "same.nii.gz")
  from_dicom = scan_input.load(tmp_path / "series")
  np.testing.assert_array_equal(from_dicom.data, from_nifti.data)
  np.testing.assert_allclose(from_dicom.affine, from_nifti.affine, atol=1e-5)
  np.testing.assert_allclose(from_dicom.spacing, [0.7, 0.8, 2.5], atol=1e-6)
  # nibabel's geometry of each file: voxel (row j, column i) -> LPS; ours (i, j, k) -> RAS.
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # nibabel.nicom warns that it is experimental
    from nibabel.nicom import dicomwrappers
    for path in files:
      w = dicomwrappers.wrapper_from_data(pydicom.dcmread(path))
      k = int(np.argmin([abs(np.dot(series.affine[:3, 3] + series.affine[:3, 2] * z
                                    - fd.LPS * w.image_position, series.affine[:3, 2]))
                         for z in range(hu.shape[2])]))
      for i, j in [(0, 0), (7, 0), (0, 9), (5, 3)]:
        lps = (w.affine @ [j, i, 0, 1])[:3]
        np.testing.assert_allclose(series.affine @ [i, j, k, 1], [*(fd.LPS * lps), 1],
                                   atol=1e-4)
        assert w.get_data()[j, i] == series.volume[i, j, k]


def test_rescale_slope_and_intercept(tmp_path):
  hu = fd.tiny_volume().astype(np.float32) / 2  # half-HU steps need slope 0.5
  fd.write_series(tmp_path / "s", hu, fd.lps_affine(), slope=0.5, intercept=-1000.0)
  series = dicom_io.read_series(tmp_path / "s")
  assert series.volume.dtype == np.float32
  np.testing.assert_array_equal(series.volume, hu)
  # Slope 1 and an integer intercept, but HU beyond int16 in one slice (a metal implant):
  # float32 from there on, every slice exact.
  hu = fd.tiny_volume().astype(np.int32) + 1000
  hu[:, :, 7] += 32000
  fd.write_series(tmp_path / "metal", hu, fd.lps_affine(), intercept=0.0)
  series = dicom_io.read_series(tmp_path / "metal")
  assert series.volume.dtype == np.float32 and series.volume.flags.f_contiguous
  np.testing.assert_array_equal(series.volume, hu)


def test_two_series_in_one_folder_are_two_cases(tmp_path):
  a, b = fd.tiny_volume(seed=1), fd.tiny_volume(seed=2)
  fd.write_series(tmp_path / "study", a, fd.lps_affine(), description="arterial", number=3)
  fd.write_series(tmp_path / "study", b, fd.lps_affine(), description="venous", number=4,
                  names=lambda k: f"v{k:03d}.dcm")
  scans = scan_input.find_inputs(tmp_path / "study")
  assert [s.name for s in scans] == ["study_arterial", "study_venous"]
  np.testing.assert_array_equal(scan_input.load(scans[0]).data, a)
  np.testing.assert_array_equal(scan_input.load(scans[1]).data, b)
  # Where one scan is expected (convert's image, synth's --ct), two series are refused.
  with pytest.raises(CaseError, match=r"study: 2 DICOM series where one was expected.*venous"):
    scan_input.load(tmp_path / "study")


def test_missing_slice_is_refused(tmp_path):
  fd.write_series(tmp_path / "gap", fd.tiny_volume(), fd.lps_affine(), skip=(5,))
  with pytest.raises(CaseError, match=r"gap: uneven slice spacing: 2.500 mm .* 5.000 mm"):
    scan_input.load(tmp_path / "gap")


def test_gantry_tilt_is_refused(tmp_path):
  affine = fd.lps_affine()
  # 15 degrees: each slice 2.5 mm up the table and 2.5 * tan(15) mm towards posterior.
  positions = [fd.LPS * (affine @ [0, 0, k, 1])[:3] + [0, 2.5 * np.tan(np.radians(15)) * k, 0]
               for k in range(12)]
  fd.write_series(tmp_path / "tilt", fd.tiny_volume(), affine, positions=positions)
  with pytest.raises(CaseError, match=r"tilt: gantry tilt: the slices are sheared by 15.00 deg"):
    scan_input.load(tmp_path / "tilt")


def test_two_slices_at_one_position_are_refused(tmp_path):
  affine = fd.lps_affine()
  positions = [fd.LPS * (affine @ [0, 0, min(k, 10), 1])[:3] for k in range(12)]
  fd.write_series(tmp_path / "dup", fd.tiny_volume(), affine, positions=positions)
  with pytest.raises(CaseError, match="dup: two slices at one position"):
    scan_input.load(tmp_path / "dup")


def test_zip_of_a_series(tmp_path):
  hu = fd.tiny_volume()
  files = fd.write_series(tmp_path / "s", hu, fd.lps_affine())
  archive = tmp_path / "in" / "patient7.zip"
  archive.parent.mkdir()
  with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as z:
    for f in files:
      z.write(f, f"PATIENT7/CT/{f.name}")
    z.writestr("README.txt", "not a DICOM file")
  scans = scan_input.find_inputs(tmp_path / "in")
  assert [(s.name, s.path) for s in scans] == [("patient7", archive)]
  loaded = scan_input.load(scans[0])
  np.testing.assert_array_equal(loaded.data, hu)
  np.testing.assert_allclose(loaded.affine, fd.lps_affine(), atol=1e-5)


def test_header_claiming_more_pixels_than_the_file_holds(tmp_path):
  for path in fd.write_series(tmp_path / "s", fd.tiny_volume(), fd.lps_affine()):
    ds = pydicom.dcmread(path)
    ds.Rows = 4000  # the pixel data is still 8 x 10: refused before a 4000-row array exists
    ds.save_as(path)
  with pytest.raises(CaseError, match=r"header claims 4000 x 8 pixels \(64000 bytes\), more than"):
    scan_input.load(tmp_path / "s")


def test_what_is_not_a_series(tmp_path):
  files = fd.write_series(tmp_path / "s", fd.tiny_volume(), fd.lps_affine())
  with pytest.raises(CaseError, match="a single DICOM file; give the folder"):
    scan_input.find_inputs(files[0])
  (tmp_path / "empty").mkdir()
  (tmp_path / "empty" / "notes.txt").write_text("hello")
  with pytest.raises(CaseError, match="empty: no .nii or .nii.gz files, DICOM series or zips"):
    scan_input.find_inputs(tmp_path / "empty")
  with pytest.raises(CaseError, match="empty: no DICOM image files found"):
    scan_input.load(tmp_path / "empty")
  one = tmp_path / "one"
  fd.write_series(one, fd.tiny_volume(shape=(8, 10, 1)), fd.lps_affine())
  with pytest.raises(CaseError, match="one: series 2 'abdomen' .* has a single slice"):
    scan_input.load(one)


def test_not_ct_is_refused_and_segmentations_are_no_input(tmp_path):
  fd.write_series(tmp_path / "mr", fd.tiny_volume(), fd.lps_affine(), modality="MR")
  with pytest.raises(CaseError, match=r"mr: series 2 'abdomen' .* is MR, not CT"):
    scan_input.load(tmp_path / "mr")
  # A DICOM-SEG beside its CT (an output folder inside the input) is not a series to predict.
  from dassemble_jax.ct import dicom_seg
  fd.write_series(tmp_path / "ct", fd.tiny_volume(), fd.lps_affine())
  series = dicom_io.read_series(tmp_path / "ct")
  dicom_seg.write(tmp_path / "ct" / "ct.seg.dcm", np.ones(series.volume.shape, np.uint8),
                  series.headers)
  assert [(s.name, s.is_dicom) for s in scan_input.find_inputs(tmp_path / "ct")] == [
      ("ct", True)]
