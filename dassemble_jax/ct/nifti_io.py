"""NIfTI reading and writing with nibabel; reorientation to RAS with nibabel.orientations.

Every loader raises `CaseError` naming the file, so a conversion over hundreds of cases can say
which download is broken.

Voxel order after `reorient_to_ras`: array axis 0 runs towards the patient's Right, axis 1
towards Anterior, axis 2 towards Superior (nibabel's RAS+ convention). The affine maps voxel
indices to RAS+ world millimetres.
"""

from __future__ import annotations

import os
import pathlib
import uuid

import nibabel as nib
import numpy as np
from nibabel import orientations

try:
  from dassemble_jax.data.errors import DataFormatError as _ErrorBase
except ImportError:  # pragma: no cover - the shared error module may not exist in a checkout.
  _ErrorBase = ValueError


class CaseError(_ErrorBase):
  """A case cannot be converted; the message names its file(s) and the problem."""


def load(path: str | os.PathLike, *, dtype=None) -> tuple[np.ndarray, np.ndarray]:
  """Reads a NIfTI file -> (data (X, Y, Z), affine (4, 4) float64), in the file's orientation.

  A trailing singleton 4th axis (common in exports) is dropped; other non-3D data is an error.
  `dtype=None` keeps the on-disk dtype (after scl_slope/inter scaling, if any).
  """
  path = pathlib.Path(path)
  try:
    img = nib.load(str(path))
    data = np.asanyarray(img.dataobj)
    affine = np.asarray(img.affine, np.float64)
  except Exception as e:  # nibabel raises many types (ImageFileError, EOFError, zlib.error...)
    raise CaseError(f"{path}: cannot read NIfTI: {type(e).__name__}: {e}") from e
  while data.ndim > 3 and data.shape[-1] == 1:
    data = data[..., 0]
  if data.ndim != 3:
    raise CaseError(f"{path}: expected a 3D volume, got shape {data.shape}")
  if min(data.shape) < 1:
    raise CaseError(f"{path}: empty volume of shape {data.shape}")
  if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-9:
    raise CaseError(f"{path}: invalid affine (singular or not finite):\n{affine}")
  if dtype is not None:
    data = data.astype(dtype, copy=False)
  return data, affine


def save(path: str | os.PathLike, data: np.ndarray, affine: np.ndarray) -> None:
  """Writes a NIfTI file atomically (temporary name, then rename)."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  # Keep the .nii/.nii.gz suffix on the temporary name: nibabel picks compression from it.
  suffix = ".nii.gz" if path.name.endswith(".nii.gz") else path.suffix
  tmp = path.with_name(f".{path.name[:-len(suffix)]}.{uuid.uuid4().hex[:8]}{suffix}")
  img = nib.Nifti1Image(np.asarray(data), np.asarray(affine, np.float64))
  img.set_qform(img.affine, code=1)
  img.set_sform(img.affine, code=1)
  try:
    nib.save(img, str(tmp))
    os.replace(tmp, path)
  finally:
    if tmp.exists():
      tmp.unlink()


def reorient_to_ras(data: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Permutes/flips the voxel axes so they run R, A, S; returns (data, new affine).

  Only axis permutations and flips (no resampling): the world position of every voxel is
  unchanged, and the new affine says so.
  """
  current = orientations.io_orientation(affine)
  target = orientations.axcodes2ornt(("R", "A", "S"))
  transform = orientations.ornt_transform(current, target)
  out = orientations.apply_orientation(data, transform)
  new_affine = affine @ orientations.inv_ornt_aff(transform, data.shape)
  return np.ascontiguousarray(out), new_affine


def voxel_sizes(affine: np.ndarray) -> np.ndarray:
  """(3,) voxel sizes in mm: the norms of the affine's columns."""
  return np.sqrt(np.sum(np.asarray(affine)[:3, :3] ** 2, axis=0))
