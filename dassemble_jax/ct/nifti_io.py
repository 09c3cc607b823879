"""NIfTI reading and writing with nibabel; reorientation to RAS with nibabel.orientations.

Every loader raises `CaseError` naming the file, so a conversion over hundreds of cases can say
which download is broken.

Gzip files (.nii.gz, what every public CT dataset ships) are inflated with ISA-L (`isal`), 2.4x
faster than nibabel's zlib read of a 512 x 512 x 300 CT (benchmarks/nifti_read.py): inflating is the largest
host stage of whole-scan prediction. Uncompressed .nii files are memory-mapped by nibabel.

Voxel order after `ras_view` / `reorient_to_ras`: array axis 0 runs towards the patient's Right, axis 1
towards Anterior, axis 2 towards Superior (nibabel's RAS+ convention). The affine maps voxel
indices to RAS+ world millimetres.
"""

from __future__ import annotations

import os
import pathlib

import nibabel as nib
import numpy as np
from isal import igzip
from nibabel import orientations

from dassemble_jax import atomic
from dassemble_jax.data.errors import DataFormatError


class CaseError(DataFormatError):
  """A case cannot be converted; the message names its file(s) and the problem."""


def load(path: str | os.PathLike, *, dtype=None) -> tuple[np.ndarray, np.ndarray]:
  """Reads a NIfTI file -> (data (X, Y, Z), affine (4, 4) float64), in the file's orientation.

  A trailing singleton 4th axis (common in exports) is dropped; other non-3D data is an error.
  `dtype=None` keeps the on-disk dtype (after scl_slope/inter scaling, if any).
  """
  path = pathlib.Path(path)
  try:
    img = _read_image(path)
  except CaseError:
    raise
  except Exception as e:  # nibabel raises many types (ImageFileError, EOFError, zlib.error...)
    raise CaseError(f"{path}: cannot read NIfTI: {type(e).__name__}: {e}") from e
  header = img.header
  if hasattr(header, "get_qform") and (int(header["qform_code"]) == 0
                                       and int(header["sform_code"]) == 0):
    # nibabel would fall back to a pixdim-only affine: no orientation, often the wrong one.
    raise CaseError(f"{path}: header has neither a qform nor an sform (qform_code = sform_code "
                    "= 0): the scan's orientation is unknown")
  if isinstance(header, nib.Nifti1Header) and int(header["sform_code"]) == 0:
    # The qform scales by pixdim, and nibabel silently turns a zero pixdim into 1 mm (its
    # header check, on read): look at the file's own values.
    sizes = _raw_voxel_sizes(path, type(header))
    if not np.all(sizes > 0):
      raise CaseError(f"{path}: voxel sizes (pixdim) {sizes.tolist()} in a header whose only "
                      "geometry is the qform: a size of 0 or below cannot be right (nibabel "
                      "would read it as 1 mm)")
  try:
    data = np.asanyarray(img.dataobj)
    affine = np.asarray(img.affine, np.float64)
  except Exception as e:  # as above
    raise CaseError(f"{path}: cannot read NIfTI: {type(e).__name__}: {e}") from e
  while data.ndim > 3 and data.shape[-1] == 1:
    data = data[..., 0]
  if data.ndim != 3:
    raise CaseError(f"{path}: expected a 3D volume, got shape {data.shape}")
  if min(data.shape) < 1:
    raise CaseError(f"{path}: empty volume of shape {data.shape}")
  if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-9:
    raise CaseError(f"{path}: invalid affine (singular or not finite):\n{affine}")
  if data.dtype.kind == "f":
    bad = data.size - int(np.count_nonzero(np.isfinite(data)))
    if bad:
      raise CaseError(f"{path}: {bad} NaN or infinite voxels (a prediction from them would be "
                      "silently wrong)")
  if dtype is not None:
    data = data.astype(dtype, copy=False)
  return data, affine


# Deflate compresses at most ~1032:1; a header claiming more voxels than that is a broken or
# hostile file, refused before its array is allocated.
_MAX_DEFLATE_RATIO = 1032


def _check_size(path: pathlib.Path, header, compressed: bool) -> None:
  """CaseError if the header's voxel count cannot fit in the file (checked before allocating)."""
  shape = header.get_data_shape()
  needed = int(np.prod(shape, dtype=np.float64)) * header.get_data_dtype().itemsize
  have = path.stat().st_size - (0 if compressed else int(header.get_data_offset()))
  limit = have * _MAX_DEFLATE_RATIO if compressed else have
  if needed > limit:
    raise CaseError(f"{path}: header claims {shape} voxels ({needed / 2**20:.0f} MiB), more than "
                    f"a {path.stat().st_size}-byte file can hold")


def _raw_voxel_sizes(path, header_class) -> np.ndarray:
  """pixdim[1:4] as the file stores them, before nibabel's header check fixes them."""
  opener = igzip.open if str(path).endswith(".gz") else open
  with opener(path, "rb") as f:
    raw = f.read(header_class.sizeof_hdr)
  return np.asarray(header_class(raw, check=False)["pixdim"][1:4], np.float64)


def _read_image(path: pathlib.Path):
  """nib.load, except that a gzip NIfTI is inflated with ISA-L, straight into its array."""
  with open(path, "rb") as raw:
    if raw.read(2) != b"\x1f\x8b":
      img = nib.load(str(path))
      if isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        _check_size(path, img.header, compressed=False)
      return img
    raw.seek(0)
    f = igzip.IGzipFile(fileobj=raw, mode="rb")  # one open file for the check and the read
    first = f.read(4)
    f.seek(0)
    # NIfTI-1 headers start with sizeof_hdr = 348, NIfTI-2 with 540 (either byte order).
    sizes = {int.from_bytes(first, "little"), int.from_bytes(first, "big")}
    image_class = nib.Nifti1Image if 348 in sizes else nib.Nifti2Image if 540 in sizes else None
    if image_class is None:
      return nib.load(str(path))  # another gzip format nibabel reads (e.g. .mgz)
    header = image_class.header_class.from_fileobj(f)
    _check_size(path, header, compressed=True)
    slope, inter = header.get_slope_inter()
    if slope not in (None, 1.0) or inter not in (None, 0.0):
      f.seek(0)  # scaled data: nibabel applies the scaling (and picks the dtype) as nib.load does
      return image_class.from_bytes(f.read())
    f.seek(int(header.get_data_offset()))
    # Fortran order, as NIfTI stores voxels; filled in place: no copy of the inflated bytes.
    data = np.empty(header.get_data_shape(), header.get_data_dtype(), order="F")
    view = memoryview(data.T).cast("B")
    filled = 0
    while filled < len(view):
      n = f.readinto(view[filled:])
      if not n:
        raise EOFError(f"file ends after {filled} of {len(view)} data bytes")
      filled += n
  return image_class(data, header.get_best_affine(), header=header)


def save(path: str | os.PathLike, data: np.ndarray, affine: np.ndarray) -> None:
  """Writes a NIfTI file atomically (`atomic.temporary_path`: temporary name, then rename).

  .nii.gz is deflated with ISA-L at level 1: a 512 x 512 x 300 uint8 label map in 0.011 s
  instead of nibabel's (zlib) 0.100 s, and smaller (benchmarks/per_class_write.md). Data in
  Fortran order (NIfTI's x-fastest) is written without a transposed copy.
  """
  img = nib.Nifti1Image(np.asarray(data), np.asarray(affine, np.float64))
  img.set_qform(img.affine, code=1)
  img.set_sform(img.affine, code=1)
  with atomic.temporary_path(path) as tmp:
    if tmp.name.endswith(".nii.gz"):
      # No name and mtime 0 in the gzip header (as nibabel): the same data gives the same bytes.
      with open(tmp, "wb") as raw, igzip.IGzipFile(filename="", mode="wb", compresslevel=1,
                                                   fileobj=raw, mtime=0) as f:
        img.to_file_map({"image": nib.FileHolder(filename=str(path), fileobj=f)})
    else:
      nib.save(img, str(tmp))


def ras_view(data: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """`data` with its voxel axes permuted/flipped to run R, A, S, as a view; (view, new affine).

  Only axis permutations and flips (no resampling): the world position of every voxel is
  unchanged, and the new affine says so. No copy: resampling reads the view directly.
  """
  current = orientations.io_orientation(affine)
  transform = orientations.ornt_transform(current, orientations.axcodes2ornt(("R", "A", "S")))
  view = orientations.apply_orientation(data, transform)
  return view, affine @ orientations.inv_ornt_aff(transform, data.shape)


def reorient_to_ras(data: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """`ras_view` as a C-ordered copy; returns (data, new affine)."""
  view, new_affine = ras_view(data, affine)
  return np.ascontiguousarray(view), new_affine


def voxel_sizes(affine: np.ndarray) -> np.ndarray:
  """(3,) voxel sizes in mm: the norms of the affine's columns."""
  return np.sqrt(np.sum(np.asarray(affine)[:3, :3] ** 2, axis=0))
