"""Writes small CT series with pydicom, geometry computed here by hand from a RAS affine.

`write_series(folder, hu, affine)`: voxel (i, j, k) of `hu` becomes column i, row j of slice k;
the DICOM geometry (LPS) is derived from `affine` (RAS) independently of dassemble_jax's reader:
  row cosines     = LPS direction of affine column 0, column cosines = of column 1
  PixelSpacing    = [|column 1| (between rows), |column 0| (between columns)]
  ImagePosition_k = LPS of affine @ (0, 0, k, 1)
"""

from __future__ import annotations

import pathlib

import numpy as np
import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

LPS = np.array([-1.0, -1.0, 1.0])  # RAS <-> LPS flips x and y


def write_series(folder, hu: np.ndarray, affine: np.ndarray, *, slope: float = 1.0,
                 intercept: float = -1024.0, names=None, series_uid: str | None = None,
                 study_uid: str | None = None, frame_uid: str | None = None,
                 description: str = "abdomen", number: int = 2, positions=None,
                 skip: tuple[int, ...] = (), modality: str = "CT") -> list[pathlib.Path]:
  """One file per slice (k not in `skip`); `names(k)` -> file name (default shuffled names).

  `positions`: optional (Z, 3) LPS ImagePositionPatient per slice (to fake a tilt); stored
  values are round((hu - intercept) / slope) as uint16.
  """
  folder = pathlib.Path(folder)
  folder.mkdir(parents=True, exist_ok=True)
  affine = np.asarray(affine, np.float64)
  series_uid = series_uid or generate_uid()
  study_uid = study_uid or "1.2.826.0.1.3680043.8.498.1"
  frame_uid = frame_uid or "1.2.826.0.1.3680043.8.498.2"
  nx, ny, nz = hu.shape
  col0, col1 = affine[:3, 0], affine[:3, 1]
  row_cos = LPS * col0 / np.linalg.norm(col0)
  col_cos = LPS * col1 / np.linalg.norm(col1)
  stored = np.round((np.asarray(hu, np.float64) - intercept) / slope)
  assert stored.min() >= 0 and stored.max() < 65536
  rng = np.random.default_rng(nz)
  shuffled = rng.permutation(nz)
  written = []
  for k in range(nz):
    if k in skip:
      continue
    pos = (LPS * (affine @ np.array([0.0, 0.0, k, 1.0]))[:3]) if positions is None \
        else np.asarray(positions[k], np.float64)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = modality
    ds.PatientName = "Test^Phantom"
    ds.PatientID = "P001"
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.StudyInstanceUID = study_uid
    ds.StudyDate = "20260101"
    ds.StudyTime = "120000"
    ds.StudyID = "1"
    ds.AccessionNumber = ""
    ds.ReferringPhysicianName = ""
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = number
    ds.SeriesDescription = description
    ds.FrameOfReferenceUID = frame_uid
    ds.PositionReferenceIndicator = ""
    ds.Manufacturer = "test"
    ds.InstanceNumber = int(shuffled[k]) + 1  # deliberately not the slice order
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.ImageOrientationPatient = [float(f"{v:.8f}") for v in (*row_cos, *col_cos)]
    ds.ImagePositionPatient = [float(f"{v:.6f}") for v in pos]
    ds.PixelSpacing = [float(np.linalg.norm(col1)), float(np.linalg.norm(col0))]
    ds.SliceThickness = float(np.linalg.norm(affine[:3, 2]))
    ds.Rows, ds.Columns = ny, nx
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.RescaleSlope = slope
    ds.RescaleIntercept = intercept
    ds.RescaleType = "HU"
    ds.KVP = 120
    ds.PixelData = np.ascontiguousarray(stored[:, :, k].T.astype("<u2")).tobytes()
    name = names(k) if names is not None else f"IM{int(shuffled[k]) * 7919 % 1000:04d}.dcm"
    path = folder / name
    ds.save_as(path, enforce_file_format=True)
    written.append(path)
  return written


def tiny_volume(shape=(8, 10, 12), seed: int = 0) -> np.ndarray:
  """Integer HU in [-1000, 1500), different at every voxel's neighbourhood (orientation bugs
  show)."""
  rng = np.random.default_rng(seed)
  return rng.integers(-1000, 1500, size=shape).astype(np.int16)


def lps_affine(spacing=(0.7, 0.8, 2.5), origin=(120.0, 95.0, -300.0)) -> np.ndarray:
  """The usual axial CT: columns run to patient left, rows to posterior, slices upward
  (RAS affine with negative x and y)."""
  a = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])
  a[:3, 3] = origin
  return a
