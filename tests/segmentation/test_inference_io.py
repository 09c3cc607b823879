"""Prediction I/O: NIfTI round trips keep the affine, bad files give clear errors, atomic writes."""

import gzip
import os

import jax.numpy as jnp
import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from dassemble_jax.ct import bitmask, nifti_io, resample, scan_input
from dassemble_jax.ct.nifti_io import CaseError
from dassemble_jax.segmentation import inference, seg_metrics

# An LPS-like, slightly anisotropic affine with an offset: what a DICOM conversion gives.
AFFINE = np.array([[-0.8, 0.0, 0.0, 120.0],
                   [0.0, -0.8, 0.0, 95.5],
                   [0.0, 0.0, 2.0, -310.0],
                   [0.0, 0.0, 0.0, 1.0]])


def _write(path, data, affine=AFFINE):
  nib.save(nib.Nifti1Image(data, affine), str(path))
  return path


def test_label_map_round_trip_keeps_affine(tmp_path):
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 33, (11, 9, 7)).astype(np.uint8)
  out = tmp_path / "case.nii.gz"
  inference.save_label_map(out, labels, AFFINE)
  img = nib.load(str(out))
  assert img.get_data_dtype() == np.uint8
  np.testing.assert_array_equal(np.asanyarray(img.dataobj), labels)
  np.testing.assert_allclose(img.affine, AFFINE, atol=1e-5)
  # Both qform and sform carry the affine, so viewers agree on the alignment.
  assert int(img.header["qform_code"]) == 1 and int(img.header["sform_code"]) == 1
  np.testing.assert_allclose(img.get_qform(), AFFINE, atol=1e-5)
  vol, _, spacing = scan_input.load_for_prediction(out)
  assert vol.dtype == np.float32 and vol.shape == labels.shape
  np.testing.assert_allclose(spacing, [0.8, 0.8, 2.0], rtol=1e-6)
  assert sorted(os.listdir(tmp_path)) == ["case.nii.gz"]  # no temporary left over
  with pytest.raises(ValueError, match="uint8"):
    inference.save_label_map(tmp_path / "bad.nii.gz", labels.astype(np.int32) + 300, AFFINE)


def test_bad_inputs_give_clear_errors(tmp_path):
  garbage = tmp_path / "garbage.nii.gz"
  garbage.write_bytes(b"this is not a nifti file at all" * 10)
  noise = np.random.default_rng(0).integers(-1000, 1000, (20, 20, 20)).astype(np.int16)
  good = _write(tmp_path / "good.nii.gz", noise)
  truncated = tmp_path / "truncated.nii.gz"
  truncated.write_bytes(good.read_bytes()[:len(good.read_bytes()) // 2])  # a cut download
  four_d = _write(tmp_path / "four_d.nii.gz", np.zeros((5, 5, 5, 2), np.int16))
  two_d = _write(tmp_path / "two_d.nii", np.zeros((5, 5), np.int16))
  for path, what in [(garbage, "cannot read"), (truncated, "cannot read"),
                     (four_d, "3D"), (two_d, "3D")]:
    with pytest.raises(CaseError, match=what) as info:
      scan_input.load_for_prediction(path)
    assert str(path) in str(info.value)
    assert isinstance(info.value, ValueError)
  # A trailing singleton 4th axis is a 3D volume.
  single = _write(tmp_path / "single.nii.gz", np.zeros((4, 5, 6, 1), np.int16))
  assert scan_input.load_for_prediction(single)[0].shape == (4, 5, 6)
  empty = tmp_path / "empty_dir"
  empty.mkdir()
  with pytest.raises(CaseError, match="no .nii"):
    inference.find_inputs(empty)
  with pytest.raises(CaseError, match="no such"):
    inference.find_inputs(tmp_path / "missing.nii.gz")


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
def test_failed_write_leaves_nothing_half_written(tmp_path, monkeypatch, suffix):
  out = tmp_path / f"case{suffix}"
  inference.save_label_map(out, np.ones((4, 4, 4), np.uint8), AFFINE)
  before = out.read_bytes()

  def broken_write(img, file_map=None, *args, **kwargs):
    # Both writers (ISA-L gzip stream, nibabel's own file) end in to_file_map.
    with (file_map or img.file_map)["image"].get_prepare_fileobj("wb") as f:
      f.write(b"partial")
    raise OSError("disk full")

  monkeypatch.setattr(nib.Nifti1Image, "to_file_map", broken_write)
  with pytest.raises(OSError, match="disk full"):
    inference.save_label_map(out, np.zeros((4, 4, 4), np.uint8), AFFINE)
  with pytest.raises(OSError):
    inference.save_per_class(tmp_path / "per_class", np.zeros((4, 4, 4, 2), bool), AFFINE,
                           ["a", "b"], compress=suffix == ".nii.gz")
  assert out.read_bytes() == before                     # the old file is intact
  # No per-class folder, no temporary folder or file: the set is all or nothing.
  assert sorted(os.listdir(tmp_path)) == [f"case{suffix}"]


def test_per_class_set_on_a_full_disk_is_all_or_nothing(tmp_path, monkeypatch):
  """The writer fails (ENOSPC) on the 3rd of 5 files: no partial set appears, an older set under
  the same name stays whole; a later complete write replaces it at once."""
  import errno
  masks = np.random.default_rng(3).random((6, 5, 4, 5)) < 0.5
  names = [f"c{k}" for k in range(5)]
  old = inference.save_per_class(tmp_path / "case", masks[..., ::-1], AFFINE, names)
  real_save, calls = nifti_io.save, []

  def full_disk(path, data, affine):
    calls.append(path)
    if len(calls) == 3:
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
    real_save(path, data, affine)

  monkeypatch.setattr(nifti_io, "save", full_disk)
  with pytest.raises(OSError, match="No space left"):
    inference.save_per_class(tmp_path / "case", masks, AFFINE, names)
  assert len(calls) == 3 and sorted(os.listdir(tmp_path)) == ["case"]
  for k, p in enumerate(old):  # the older set, untouched
    np.testing.assert_array_equal(np.asanyarray(nib.load(str(p)).dataobj), masks[..., 4 - k])
  monkeypatch.setattr(nifti_io, "save", real_save)
  new = inference.save_per_class(tmp_path / "case", masks, AFFINE, names)
  assert sorted(os.listdir(tmp_path)) == ["case"] and len(new) == 5
  for k, p in enumerate(new):
    np.testing.assert_array_equal(np.asanyarray(nib.load(str(p)).dataobj), masks[..., k])


@pytest.mark.parametrize("compress", [True, False])
def test_save_per_class(tmp_path, compress):
  rng = np.random.default_rng(1)
  masks = rng.random((12, 10, 8, 3)) < 0.3
  paths = inference.save_per_class(tmp_path, masks, AFFINE, ["liver", "spleen", "kidney_tumor"],
                                 compress=compress)
  suffix = ".nii.gz" if compress else ".nii"
  assert [p.name for p in paths] == [f"liver{suffix}", f"spleen{suffix}",
                                     f"kidney_tumor{suffix}"]
  for k, p in enumerate(paths):
    img = nib.load(str(p))
    assert img.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(np.asanyarray(img.dataobj), masks[..., k].astype(np.uint8))
    np.testing.assert_allclose(img.affine, AFFINE, atol=1e-5)
  if compress:
    with gzip.open(paths[0]) as f:
      f.read(1)  # really gzip
  masks[..., 1] = False
  kept = inference.save_per_class(tmp_path / "sparse", masks, AFFINE, ["a", "b", "c"],
                                skip_empty=True)
  assert [p.name for p in kept] == ["a.nii.gz", "c.nii.gz"]


def test_per_class_files_from_small_boxes_packed_and_bool(tmp_path):
  """Classes in small boxes (one at the array's edge, one empty, two overlapping): the files hold
  exactly each class's voxels, from packed and from bool masks; the reused buffer leaks nothing
  from one class into the next."""
  shape = (15, 16, 17)
  masks = np.zeros(shape + (4,), bool)
  masks[2:5, 3:9, 4:6, 0] = True
  masks[10:15, 0:2, 16:17, 1] = True            # touches three array faces
  masks[3:4, 5:6, 5:6, 1] = True                # a second, separate piece of class 1
  masks[4:7, 4:7, 4:7, 3] = True                # overlaps class 0 (a lesion in its organ)
  bits = (masks.astype(np.uint32) << np.arange(4, dtype=np.uint32)).sum(-1, dtype=np.uint32)
  assert bitmask.class_boxes(bits, 4) == bitmask.class_boxes(masks, 4) == [
      (slice(2, 5), slice(3, 9), slice(4, 6)), (slice(3, 15), slice(0, 6), slice(5, 17)), None,
      (slice(4, 7), slice(4, 7), slice(4, 7))]
  names = ["a", "b", "empty", "d"]
  for kind, m in (("bits", bits), ("bool", masks)):
    paths = inference.save_per_class(tmp_path / kind, m, AFFINE, names)
    for k, p in enumerate(paths):
      np.testing.assert_array_equal(np.asanyarray(nib.load(str(p)).dataobj),
                                    masks[..., k].astype(np.uint8))


def test_back_to_original_grid():
  rng = np.random.default_rng(2)
  shape = (21, 17, 9)
  labels = rng.integers(0, 5, shape).astype(np.uint8)
  original = inference.Grid(shape, AFFINE)
  # Same spacing: the model grid is the RAS-flipped copy, and the way back is exact.
  vol = labels.astype(np.float32)
  ras_vol, grid = inference.to_model_grid(vol * 0 - 1000.0, AFFINE, (0.8, 0.8, 2.0))
  assert ras_vol.shape == shape and np.all(ras_vol == 0.0)  # HU -1000 -> 0 after the window
  ras_labels, ras_affine = nifti_io.reorient_to_ras(labels, AFFINE)
  np.testing.assert_allclose(grid.affine, ras_affine)
  np.testing.assert_array_equal(inference.to_original_grid(ras_labels, grid, original), labels)
  # A coarser model grid: the 1D-index path equals SciPy's nearest resampling, channels too.
  coarse, coarse_affine = resample.resample_to_spacing(ras_labels, ras_affine, 1.3, order=0)
  model = inference.Grid(coarse.shape, coarse_affine)
  ours = inference.to_original_grid(coarse, model, original)
  # SciPy reference with 'grid-constant': a point up to half a voxel beyond the last voxel
  # centre is still inside that voxel ('constant' would return 0 there).
  mapping = np.linalg.inv(coarse_affine) @ AFFINE
  ref = ndimage.affine_transform(coarse, mapping[:3, :3], offset=mapping[:3, 3],
                                 output_shape=shape, order=0, mode="grid-constant")
  np.testing.assert_array_equal(ours, ref)
  stacked = inference.to_original_grid(np.stack([coarse, coarse + 1], -1), model, original)
  np.testing.assert_array_equal(stacked[..., 0], ours)
  np.testing.assert_array_equal(stacked[..., 1][ours > 0], ours[ours > 0] + 1)


def _liver_model(params, x):
  """A stand-in 'model': liver (id 6) where the scaled intensity is bright, nothing else."""
  del params
  c = 32
  logits = jnp.full(x.shape[:-1] + (c,), -10.0)
  # HU 200 -> 0.88 and -500 -> 0 after the window: threshold half way, at 0.44.
  return logits.at[..., 5].set(20.0 * (x[..., 0] - 0.44))


def test_predict_file_end_to_end(tmp_path):
  shape = (40, 36, 14)
  grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1)
  mm = grid * np.array([0.8, 0.8, 2.0])
  blob = np.sum((mm - np.array([16.0, 14.0, 14.0])) ** 2, -1) <= 9.0**2
  hu = np.where(blob, 200.0, -500.0).astype(np.int16)
  (tmp_path / "in").mkdir()
  _write(tmp_path / "in" / "scan_01.nii.gz", hu)
  names = [f"class_{i}" for i in range(1, 33)]
  results = list(inference.predict_paths(
      _liver_model, tmp_path / "in", tmp_path / "out", per_class=True, class_names=names,
      spacing=1.5, window=(16, 16, 16), sw_batch_size=2, overlap=0.25))
  assert len(results) == 1 and results[0].label_map == tmp_path / "out" / "scan_01.nii.gz"
  img = nib.load(str(results[0].label_map))
  np.testing.assert_allclose(img.affine, AFFINE, atol=1e-5)
  out = np.asanyarray(img.dataobj)
  assert out.shape == shape and out.dtype == np.uint8
  assert set(np.unique(out)) <= {0, 6}
  assert seg_metrics.dice(out == 6, blob) > 0.9
  liver = nib.load(str(tmp_path / "out" / "scan_01" / "class_6.nii.gz"))
  np.testing.assert_array_equal(np.asanyarray(liver.dataobj), (out == 6).astype(np.uint8))
  assert len(results[0].per_class) == 32 and set(results[0].timings) == {
      "load_resample", "predict", "write"}
