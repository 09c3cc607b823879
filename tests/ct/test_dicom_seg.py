"""DICOM-SEG out: valid by highdicom's own reader, segments named, the source series referenced,
each frame on its source slice; and predict writes one for a DICOM input (only)."""

import json

import highdicom as hd
import jax.numpy as jnp
import numpy as np
import pydicom
import pytest

from dassemble_jax.ct import dicom_io, dicom_seg, nifti_io
from dassemble_jax.ct.nifti_io import CaseError
from dassemble_jax.segmentation import inference
from tests.ct import fake_dicom as fd


def _labels(shape):
  labels = np.zeros(shape, np.uint8)
  labels[1:6, 2:8, 3:9] = 6        # liver
  labels[2:4, 3:5, 5:7] = 27       # liver tumor inside it
  labels[6, 0:3, 0:2] = 2          # kidney_right, in slices 0 and 1 only
  return labels


def test_dicom_seg_reads_back_on_the_source_slices(tmp_path):
  fd.write_series(tmp_path / "ct", fd.tiny_volume(), fd.lps_affine())
  series = dicom_io.read_series(tmp_path / "ct")
  labels = _labels(series.volume.shape)
  path = dicom_seg.write(tmp_path / "out" / "case.seg.dcm", labels, series.headers)
  assert sorted(p.name for p in path.parent.iterdir()) == ["case.seg.dcm"]  # no temporary left

  seg = hd.seg.segread(path)
  assert seg.SOPClassUID == pydicom.uid.SegmentationStorage
  names = [seg.get_segment_description(k).segment_label for k in seg.segment_numbers]
  assert names == ["kidney_right", "liver", "liver_tumor"]  # in universal id order
  tumor = seg.get_segment_description(3)
  assert tumor.segmented_property_type.meaning == "Neoplasm"
  assert [r.meaning for r in tumor.anatomic_regions] == ["Liver"]
  src = series.headers[0]
  assert [s.SeriesInstanceUID for s in seg.ReferencedSeriesSequence] == [src.SeriesInstanceUID]
  for key in ("PatientID", "StudyInstanceUID", "FrameOfReferenceUID"):
    assert seg[key].value == src[key].value
  # Each slice's segments, looked up by the slice's own SOP instance UID: the label map's.
  uids = [h.SOPInstanceUID for h in series.headers]
  got = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, combine_segments=True,
                                          skip_overlap_checks=True)
  # (slices, rows, columns) segment numbers -> (columns, rows, slices) universal ids.
  ids = np.array([0, 2, 6, 27], np.uint8)[np.asarray(got)].transpose(2, 1, 0)
  np.testing.assert_array_equal(ids, labels)
  # The frames' positions are their source slices'.
  for frame in range(seg.number_of_frames):
    item = seg.PerFrameFunctionalGroupsSequence[frame]
    ref = item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
    ipp = item.PlanePositionSequence[0].ImagePositionPatient
    np.testing.assert_allclose(ipp, series.headers[uids.index(ref)].ImagePositionPatient)


def test_dicom_seg_refuses_what_does_not_fit(tmp_path):
  fd.write_series(tmp_path / "ct", fd.tiny_volume(), fd.lps_affine())
  series = dicom_io.read_series(tmp_path / "ct")
  with pytest.raises(CaseError, match="empty.seg.dcm: no class was found"):
    dicom_seg.write(tmp_path / "empty.seg.dcm", np.zeros((8, 10, 12), np.uint8), series.headers)
  with pytest.raises(ValueError, match="label map has 11 slices, the series 12"):
    dicom_seg.build(np.ones((8, 10, 11), np.uint8), series.headers)
  with pytest.raises(ValueError, match="label map slices are 10 x 8"):
    dicom_seg.build(np.ones((10, 8, 12), np.uint8), series.headers)
  assert not (tmp_path / "empty.seg.dcm").exists()


def _liver_model(params, x):
  """A stand-in model: liver (id 6) where the scaled intensity is bright."""
  del params
  logits = jnp.full(x.shape[:-1] + (32,), -10.0)
  return logits.at[..., 5].set(20.0 * (x[..., 0] - 0.44))


def test_predict_dicom_series_as_its_nifti_and_writes_a_dicom_seg(tmp_path):
  shape = (24, 20, 10)
  affine = fd.lps_affine(spacing=(0.8, 0.8, 2.0))
  grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1)
  blob = np.sum((grid * [0.8, 0.8, 2.0] - [9.0, 8.0, 10.0]) ** 2, -1) <= 6.0**2
  hu = np.where(blob, 200, -500).astype(np.int16)
  fd.write_series(tmp_path / "in" / "patient_a", hu, affine)
  nifti_io.save(tmp_path / "in" / "patient_b.nii.gz", hu, affine)
  results = list(inference.predict_paths(
      _liver_model, tmp_path / "in", tmp_path / "out", spacing=1.5, window=(16, 16, 16),
      sw_batch_size=2, overlap=0.25, dicom_seg=True))
  by_name = {r.label_map.name: r for r in results}
  assert sorted(by_name) == ["patient_a.nii.gz", "patient_b.nii.gz"]
  from_dicom = nifti_io.load(by_name["patient_a.nii.gz"].label_map)
  from_nifti = nifti_io.load(by_name["patient_b.nii.gz"].label_map)
  np.testing.assert_array_equal(from_dicom[0], from_nifti[0])
  np.testing.assert_allclose(from_dicom[1], from_nifti[1], atol=1e-5)
  assert (from_dicom[0] == 6).sum() > 0.8 * blob.sum()
  # The DICOM input got a DICOM-SEG whose liver segment is the label map's liver.
  seg = hd.seg.segread(by_name["patient_a.nii.gz"].dicom_seg)
  assert [seg.get_segment_description(k).segment_label for k in seg.segment_numbers] == ["liver"]
  headers = dicom_io.read_series(tmp_path / "in" / "patient_a").headers
  got = seg.get_pixels_by_source_instance([h.SOPInstanceUID for h in headers],
                                          combine_segments=True)
  np.testing.assert_array_equal(np.asarray(got).transpose(2, 1, 0) == 1, from_dicom[0] == 6)
  # The NIfTI input: no DICOM-SEG, and its sidecar says why.
  assert by_name["patient_b.nii.gz"].dicom_seg is None
  sidecar = json.loads(by_name["patient_b.nii.gz"].sidecar.read_text())
  assert any("not a DICOM series: no DICOM-SEG" in w for w in sidecar["warnings"])
