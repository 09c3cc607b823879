"""nifti_io.load: the ISA-L gzip path reads what nibabel reads, and bad files name themselves."""

import gzip

import nibabel as nib
import numpy as np
import pytest

from dassemble_jax.ct import nifti_io

AFFINE = np.array([[-0.8, 0, 0, 10], [0, -0.8, 0, -20], [0, 0, 2.5, 30], [0, 0, 0, 1]])


def _volume(rng):
  return rng.integers(-1024, 2000, size=(7, 6, 5)).astype(np.int16)


@pytest.mark.parametrize("image_class", [nib.Nifti1Image, nib.Nifti2Image])
@pytest.mark.parametrize("name", ["ct.nii.gz", "ct.nii"])
@pytest.mark.parametrize("slope_inter", [(1.0, 0.0), (0.5, -7.0)])
def test_load_equals_nibabel(tmp_path, image_class, name, slope_inter):
  rng = np.random.default_rng(0)
  img = image_class(_volume(rng), AFFINE)
  # Scaled on disk (the second case): load must apply it, with nibabel's choice of dtype.
  img.header.set_slope_inter(*slope_inter)
  img.header.extensions.append(nib.nifti1.Nifti1Extension(6, b"a comment that moves the data"))
  path = tmp_path / name
  nib.save(img, str(path))
  data, affine = nifti_io.load(path)
  ref = nib.load(str(path))
  np.testing.assert_array_equal(data, np.asanyarray(ref.dataobj))
  np.testing.assert_array_equal(affine, ref.affine)
  assert data.dtype == np.asanyarray(ref.dataobj).dtype


def test_big_endian_gzip(tmp_path):
  vol = _volume(np.random.default_rng(1)).astype(">i2")
  path = tmp_path / "be.nii.gz"
  nib.save(nib.Nifti1Image(vol, AFFINE), str(path))
  data, _ = nifti_io.load(path)
  np.testing.assert_array_equal(data, vol.astype(np.int16))


def test_other_gzip_formats_fall_back_to_nibabel(tmp_path):
  vol = np.arange(60, dtype=np.float32).reshape(5, 4, 3)
  path = tmp_path / "brain.mgz"
  nib.save(nib.MGHImage(vol, AFFINE), str(path))
  data, _ = nifti_io.load(path)
  np.testing.assert_array_equal(data, vol)


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupt_gzip_names_the_file(tmp_path, damage):
  path = tmp_path / "bad.nii.gz"
  nib.save(nib.Nifti1Image(_volume(np.random.default_rng(2)), AFFINE), str(path))
  raw = path.read_bytes()
  path.write_bytes(raw[: len(raw) // 2] if damage == "truncate" else raw[:10] + b"\0" * 200)
  with pytest.raises(nifti_io.CaseError, match="bad.nii.gz"):
    nifti_io.load(path)


def test_gzip_save_is_reproducible_and_reads_back(tmp_path):
  """ISA-L writes: no file name and mtime 0 in the gzip header (the same data, the same bytes,
  whenever and under whatever temporary name it was written); nibabel reads the file back."""
  data = np.asfortranarray(np.random.default_rng(0).integers(0, 4, (9, 8, 7)).astype(np.uint8))
  affine = np.diag([0.8, 0.8, 2.5, 1.0])
  a, b = tmp_path / "a.nii.gz", tmp_path / "b.nii.gz"
  nifti_io.save(a, data, affine)
  nifti_io.save(b, data, affine)
  head = a.read_bytes()[:10]
  assert head[:3] == b"\x1f\x8b\x08" and not head[3] & 0x08   # gzip, deflate, no FNAME field
  assert head[4:8] == b"\x00\x00\x00\x00"                        # mtime 0
  assert a.read_bytes() == b.read_bytes()
  img = nib.load(str(a))
  np.testing.assert_array_equal(np.asanyarray(img.dataobj), data)
  np.testing.assert_allclose(img.affine, affine)
  assert int(img.header["qform_code"]) == int(img.header["sform_code"]) == 1
  assert sorted(p.name for p in tmp_path.iterdir()) == ["a.nii.gz", "b.nii.gz"]


# --- headers and voxels that would give a silently wrong answer are refused -----------------

def _nifti(path, data, *, qform=1, sform=1):  # codes: 1 scanner, 0 unknown
  img = nib.Nifti1Image(data, np.diag([1.5, 1.5, 2.0, 1.0]))
  img.header.set_qform(img.affine, code=qform)
  img.header.set_sform(img.affine, code=sform)
  nib.save(img, str(path))
  return path


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_non_finite_voxels_are_refused(tmp_path, suffix):
  data = np.zeros((6, 5, 4), np.float32)
  data[1, 2, 3], data[0, 0, 0] = np.nan, np.inf
  path = _nifti(tmp_path / f"nan{suffix}", data)
  with pytest.raises(nifti_io.CaseError, match=r"2 NaN or infinite voxels"):
    nifti_io.load(path)


def test_a_header_without_qform_or_sform_is_refused(tmp_path):
  header = nib.Nifti1Header()  # written by hand: nib.save would fill in an sform
  header.set_data_shape((6, 5, 4))
  header.set_data_dtype(np.int16)
  header.set_zooms((1.5, 1.5, 2.0))
  assert int(header["qform_code"]) == 0 and int(header["sform_code"]) == 0
  path = tmp_path / "noorient.nii.gz"
  path.write_bytes(gzip.compress(header.binaryblock + b"\0" * 4 + bytes(6 * 5 * 4 * 2)))
  with pytest.raises(nifti_io.CaseError, match=r"neither a qform nor an sform"):
    nifti_io.load(path)
  nifti_io.load(_nifti(tmp_path / "sform_only.nii.gz", np.zeros((6, 5, 4), np.int16), qform=0))


@pytest.mark.parametrize("sizes", [(0.0, 0.0, 0.0), (0.8, 0.8, 0.0), (0.8, -0.8, 2.5)])
def test_a_qform_only_header_with_zero_or_negative_pixdim_is_refused(tmp_path, sizes):
  """nibabel reads a zero pixdim as 1 mm (a silently wrong geometry): refused instead."""
  header = nib.Nifti1Header()  # written by hand: nib.save would fix the pixdims
  header.set_data_shape((6, 5, 4))
  header.set_data_dtype(np.int16)
  header.set_qform(np.diag([0.8, 0.8, 2.5, 1.0]), code=1)
  header["pixdim"][1:4] = sizes
  path = tmp_path / "pixdim0.nii.gz"
  path.write_bytes(gzip.compress(header.binaryblock + b"\0" * 4 + bytes(6 * 5 * 4 * 2)))
  with pytest.raises(nifti_io.CaseError, match=r"voxel sizes \(pixdim\).*only geometry is the qform"):
    nifti_io.load(path)
  header["pixdim"][1:4] = (0.8, 0.8, 2.5)
  path.write_bytes(gzip.compress(header.binaryblock + b"\0" * 4 + bytes(6 * 5 * 4 * 2)))
  _, affine = nifti_io.load(path)
  np.testing.assert_allclose(np.abs(np.diag(affine))[:3], (0.8, 0.8, 2.5))


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_a_header_claiming_more_voxels_than_the_file_holds_is_refused_before_allocating(
    tmp_path, suffix):
  header = nib.Nifti1Header()
  header.set_data_shape((2000, 2000, 2000))  # 16 GB of int16 in a file of a few hundred bytes
  header.set_data_dtype(np.int16)
  header.set_qform(np.eye(4), code=1)
  raw = header.binaryblock + b"\0" * 4 + b"\0" * 64
  path = tmp_path / f"huge{suffix}"
  path.write_bytes(gzip.compress(raw) if suffix.endswith(".gz") else raw)
  with pytest.raises(nifti_io.CaseError, match=r"more than a \d+-byte file can hold"):
    nifti_io.load(path)
