"""DICOM CT series in: a folder (searched recursively) or a zip of one -> volume + RAS affine.

pydicom reads the files. What a series becomes:
  * slices are ordered by their position along the slice normal (the dot product of
    ImagePositionPatient with the cross product of the ImageOrientationPatient cosines), never
    by file name or InstanceNumber (both are often wrong or shuffled);
  * each slice's RescaleSlope / RescaleIntercept is applied (HU); the volume stays int16 when
    every slope is 1 and every intercept an integer (what predict reads fastest), else float32;
  * voxel (i, j, k) is column i, row j of the k-th slice in that order, and the affine maps it
    to RAS+ millimetres (nibabel's convention): DICOM's patient space is LPS, so the affine
    built from the DICOM geometry is flipped in x and y, as dcm2niix and nibabel.nicom do.

Refused, with one line naming the folder (or zip) and the problem, rather than guessed:
a series that is not CT (MR, PET: the model reads HU), several series where one was expected, a series of one slice, slices of different sizes or
orientations, two slices at one position, uneven slice spacing (a missing slice), gantry tilt
(slices sheared along the table: the affine would need a shear our resampling does not do),
multi-frame (enhanced) images and unreadable or compressed pixel data without a decoder.

A folder with several series (a CT with its scout, arterial and venous phases) is normal:
`scan_input.find_inputs` makes each series its own case; `read_series` wants one, or the
`series_uid` of one.
"""

from __future__ import annotations

import dataclasses
import io
import math
import os
import pathlib
import zipfile
from collections.abc import Iterator, Sequence

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

from dassemble_jax.ct.nifti_io import CaseError

# Orientations (direction cosines) and pixel spacings of one series agree to this.
_ATOL_COSINE = 1e-4
_ATOL_MM = 1e-3
# Slices further than this from the series' median spacing are a gap (missing slice).
_SPACING_RTOL = 0.01
# A slice-to-slice step leaning more than this off the slice normal is gantry tilt.
_MAX_TILT_DEG = 0.05
# Objects that are not images (segmentations, RT structures, reports, presentation states...):
# passed over when looking for series, so an output folder of DICOM-SEGs is no input.
_NOT_IMAGES = {"SEG", "RTSTRUCT", "RTPLAN", "RTDOSE", "RTRECORD", "SR", "PR", "KO", "REG",
               "DOC", "PLAN"}
# DICOM's patient space is LPS; nibabel's (and our affines') is RAS.
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
# Transfer syntaxes whose pixel data is stored raw: the file must hold rows * columns * bytes.
_UNCOMPRESSED = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2"}
# A compressed slice expanding more than this is a broken or hostile file (JPEG lossless CT
# compresses ~2-3x; RLE of air ~10x).
_MAX_COMPRESSION = 256


@dataclasses.dataclass(frozen=True)
class SliceRef:
  """Where one DICOM file is: a path, or a member of a zip."""
  path: pathlib.Path
  member: str | None = None   # name inside the zip at `path`

  def __str__(self) -> str:
    return f"{self.path}!{self.member}" if self.member is not None else str(self.path)

  def read(self, headers_only: bool) -> pydicom.Dataset:
    if self.member is None:
      return pydicom.dcmread(self.path, stop_before_pixels=headers_only)
    with zipfile.ZipFile(self.path) as z:
      return pydicom.dcmread(io.BytesIO(z.read(self.member)), stop_before_pixels=headers_only)

  def size(self) -> int:
    if self.member is None:
      return self.path.stat().st_size
    with zipfile.ZipFile(self.path) as z:
      return z.getinfo(self.member).file_size


@dataclasses.dataclass
class SeriesInfo:
  """One series found in a folder or zip (headers only, no pixel data read)."""
  root: pathlib.Path                 # the folder or zip it was found in
  uid: str                           # SeriesInstanceUID
  description: str                   # SeriesDescription ('' if absent)
  number: str                        # SeriesNumber ('' if absent)
  slices: list[tuple[SliceRef, pydicom.Dataset]]

  @property
  def folder(self) -> pathlib.Path:
    """The deepest folder holding all its files (the zip itself for a zip)."""
    refs = [r for r, _ in self.slices]
    if refs[0].member is not None:
      return refs[0].path
    return pathlib.Path(os.path.commonpath([r.path.parent for r in refs]))

  def label(self) -> str:
    text = f"series {self.number or '?'}"
    if self.description:
      text += f" '{self.description}'"
    return f"{text} ({self.uid})"


@dataclasses.dataclass
class Series:
  """A read series: the volume, its RAS affine, and the slice headers in volume order."""
  volume: np.ndarray                 # (columns, rows, slices): int16 or float32 HU
  affine: np.ndarray                 # (4, 4) voxel -> RAS+ mm
  headers: list[pydicom.Dataset]     # slice k's header (no pixel data), k as in `volume`
  info: SeriesInfo


# ---------------------------------------------------------------------------------------------
# Finding the series.


def _is_dicom_candidate(path: pathlib.Path) -> bool:
  return not path.name.startswith(".") and path.name.upper() != "DICOMDIR"


def _try_header(ref: SliceRef, data: bytes | None = None) -> pydicom.Dataset | None:
  """The header of an image DICOM file, or None for anything else (not DICOM, no image)."""
  try:
    if data is not None:
      ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    else:
      ds = ref.read(headers_only=True)
  except (InvalidDicomError, OSError, EOFError, ValueError, TypeError, AttributeError):
    return None
  if ("SeriesInstanceUID" not in ds or "Rows" not in ds
          or str(ds.get("Modality", "")).upper() in _NOT_IMAGES):
    return None  # DICOMDIR, segmentations, structured reports...: not image slices
  return ds


def iter_dicom_files(root: pathlib.Path) -> Iterator[tuple[SliceRef, pydicom.Dataset]]:
  """Every image DICOM file under folder `root` (recursively) or in zip `root`, with its header.

  Files that are not DICOM images (notes, DICOMDIR, NIfTI, hidden files) are passed over.
  """
  root = pathlib.Path(root)
  if root.is_file() and zipfile.is_zipfile(root):
    try:
      with zipfile.ZipFile(root) as z:
        for info in sorted(z.infolist(), key=lambda i: i.filename):
          name = pathlib.PurePosixPath(info.filename)
          if info.is_dir() or any(p.startswith(".") or p == "__MACOSX" for p in name.parts):
            continue
          ref = SliceRef(root, info.filename)
          ds = _try_header(ref, z.read(info))
          if ds is not None:
            yield ref, ds
    except (zipfile.BadZipFile, OSError) as e:
      raise CaseError(f"{root}: cannot read the zip: {e}") from e
    return
  for dirpath, dirnames, filenames in os.walk(root):
    dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
    for name in sorted(filenames):
      path = pathlib.Path(dirpath) / name
      if _is_dicom_candidate(path):
        ds = _try_header(SliceRef(path))
        if ds is not None:
          yield SliceRef(path), ds


def find_series(root: str | os.PathLike,
                files: Sequence[tuple[SliceRef, pydicom.Dataset]] | None = None
                ) -> list[SeriesInfo]:
  """The DICOM series in a folder (recursively) or a zip, ordered by series number then UID.

  `files`: the (ref, header) pairs already read from `root` (spares reading them again).
  """
  root = pathlib.Path(root)
  groups: dict[str, list] = {}
  for ref, ds in (files if files is not None else iter_dicom_files(root)):
    groups.setdefault(str(ds.SeriesInstanceUID), []).append((ref, ds))
  out = []
  for uid, slices in groups.items():
    first = slices[0][1]
    out.append(SeriesInfo(root, uid, str(first.get("SeriesDescription", "") or "").strip(),
                          str(first.get("SeriesNumber", "") or ""), slices))

  def order(s: SeriesInfo):
    try:
      return (0, int(s.number), s.uid)
    except ValueError:
      return (1, 0, s.uid)
  return sorted(out, key=order)


def select_series(root: str | os.PathLike, series_uid: str | None = None) -> SeriesInfo:
  """The one series of `root`, or the one with `series_uid`; CaseError otherwise."""
  root = pathlib.Path(root)
  if not root.exists():
    raise CaseError(f"{root}: no such file or folder")
  found = find_series(root)
  if not found:
    raise CaseError(f"{root}: no DICOM image files found")
  if series_uid is not None:
    hits = [s for s in found if s.uid == series_uid]
    if not hits:
      raise CaseError(f"{root}: no series with SeriesInstanceUID {series_uid}")
    return hits[0]
  if len(found) > 1:
    listed = "; ".join(s.label() for s in found)
    raise CaseError(f"{root}: {len(found)} DICOM series where one was expected ({listed}); "
                    "give the folder of one series")
  return found[0]


# ---------------------------------------------------------------------------------------------
# Geometry and pixels.


def _floats(ds: pydicom.Dataset, keyword: str, n: int, where) -> np.ndarray:
  value = ds.get(keyword)
  try:
    out = np.array([float(v) for v in value], np.float64)
  except (TypeError, ValueError):
    out = np.zeros(0)
  if out.shape != (n,) or not np.all(np.isfinite(out)):
    raise CaseError(f"{where}: missing or invalid {keyword} ({value!r}): the slice's position "
                    "in the patient is unknown")
  return out


def geometry(info: SeriesInfo) -> tuple[list[int], np.ndarray]:
  """(slice order: indices into info.slices, RAS affine (4, 4)); CaseError on bad geometry."""
  where = info.folder if len(info.slices) else info.root
  headers = [ds for _, ds in info.slices]
  first_ref, first = info.slices[0]
  modality = str(first.get("Modality", "CT") or "CT").upper()
  if modality != "CT":
    raise CaseError(f"{where}: {info.label()} is {modality}, not CT: the model reads CT only")
  if int(first.get("NumberOfFrames", 1) or 1) > 1:
    raise CaseError(f"{first_ref}: multi-frame (enhanced) DICOM is not supported; export the "
                    "series as one file per slice")
  if len(headers) < 2:
    raise CaseError(f"{where}: {info.label()} has a single slice, not a 3D volume")
  cosines = _floats(first, "ImageOrientationPatient", 6, first_ref)
  spacing = _floats(first, "PixelSpacing", 2, first_ref)  # (between rows, between columns)
  shape = (int(first.Rows), int(first.Columns))
  for ref, ds in info.slices[1:]:
    if (int(ds.Rows), int(ds.Columns)) != shape:
      raise CaseError(f"{where}: slices of different sizes in one series ({ref}: "
                      f"{ds.Rows} x {ds.Columns}, {first_ref}: {shape[0]} x {shape[1]})")
    if not np.allclose(_floats(ds, "ImageOrientationPatient", 6, ref), cosines,
                       atol=_ATOL_COSINE):
      raise CaseError(f"{where}: slices of different orientations in one series ({ref} vs "
                      f"{first_ref}): a localizer mixed in, or a reformatted series")
    if not np.allclose(_floats(ds, "PixelSpacing", 2, ref), spacing, atol=_ATOL_MM):
      raise CaseError(f"{where}: slices of different pixel spacings in one series ({ref} vs "
                      f"{first_ref})")
  row_dir, col_dir = cosines[:3], cosines[3:]  # along a row (column index), down a column
  if (abs(np.linalg.norm(row_dir) - 1) > 1e-3 or abs(np.linalg.norm(col_dir) - 1) > 1e-3
          or abs(row_dir @ col_dir) > 1e-3):
    raise CaseError(f"{where}: ImageOrientationPatient {cosines.tolist()} is not two "
                    "orthogonal unit vectors")
  normal = np.cross(row_dir, col_dir)
  positions = np.stack([_floats(ds, "ImagePositionPatient", 3, ref) for ref, ds in info.slices])
  along = positions @ normal
  order = np.argsort(along, kind="stable")
  along, positions = along[order], positions[order]
  gaps = np.diff(along)
  if np.any(gaps < _ATOL_MM):
    k = int(np.argmax(gaps < _ATOL_MM))
    raise CaseError(f"{where}: two slices at one position ({along[k]:.3f} mm along the slice "
                    f"normal: {info.slices[order[k]][0]} and {info.slices[order[k + 1]][0]}); "
                    "several acquisitions or echoes in one series")
  step = float(np.median(gaps))
  bad = np.flatnonzero(np.abs(gaps - step) > max(_ATOL_MM, _SPACING_RTOL * step))
  if bad.size:
    k = int(bad[0])
    raise CaseError(f"{where}: uneven slice spacing: {step:.3f} mm between most slices but "
                    f"{gaps[k]:.3f} mm between {along[k]:.3f} and {along[k + 1]:.3f} mm along "
                    f"the slice normal ({bad.size} such gap(s); a missing slice?)")
  steps = np.diff(positions, axis=0)
  sideways = np.linalg.norm(steps - np.outer(steps @ normal, normal), axis=1)
  tilt = math.degrees(math.atan2(float(np.max(sideways)), step))
  if tilt > _MAX_TILT_DEG:
    declared = first.get("GantryDetectorTilt")
    raise CaseError(f"{where}: gantry tilt: the slices are sheared by {tilt:.2f} degrees"
                    + (f" (GantryDetectorTilt {declared})" if declared is not None else "")
                    + "; resample the series to an untilted grid first (e.g. dcm2niix)")
  lps = np.eye(4)
  lps[:3, 0] = row_dir * spacing[1]
  lps[:3, 1] = col_dir * spacing[0]
  lps[:3, 2] = (positions[-1] - positions[0]) / (len(positions) - 1)
  lps[:3, 3] = positions[0]
  return [int(k) for k in order], _LPS_TO_RAS @ lps


def _check_pixel_size(ref: SliceRef, ds: pydicom.Dataset) -> None:
  """CaseError if a slice's header claims more pixels than its file could hold (checked before
  the pixel array is allocated)."""
  needed = int(ds.Rows) * int(ds.Columns) * max(1, int(ds.get("BitsAllocated", 16)) // 8)
  have = ref.size()
  syntax = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", ""))
  limit = have if syntax in _UNCOMPRESSED else have * _MAX_COMPRESSION
  if needed > limit:
    raise CaseError(f"{ref}: header claims {ds.Rows} x {ds.Columns} pixels ({needed} bytes), "
                    f"more than a {have}-byte file can hold")


def _rescale(ds: pydicom.Dataset, ref: SliceRef) -> tuple[float, float]:
  try:
    slope = float(ds.get("RescaleSlope", 1) or 1)
    intercept = float(ds.get("RescaleIntercept", 0) or 0)
  except (TypeError, ValueError) as e:
    raise CaseError(f"{ref}: invalid RescaleSlope/RescaleIntercept: {e}") from e
  if not (math.isfinite(slope) and math.isfinite(intercept)) or slope == 0:
    raise CaseError(f"{ref}: invalid rescale (slope {slope}, intercept {intercept})")
  return slope, intercept


def read_series(root: str | os.PathLike, series_uid: str | None = None, *,
                info: SeriesInfo | None = None) -> Series:
  """Reads one series of a folder or zip (see the module docstring); CaseError naming it."""
  info = info if info is not None else select_series(root, series_uid)
  order, affine = geometry(info)
  headers = [info.slices[k][1] for k in order]
  scales = [_rescale(h, info.slices[k][0]) for k, h in zip(order, headers)]
  # int16 (what predict reads fastest) when every slope is 1 and every intercept an integer,
  # unless a slice's HU leave int16's range; float32 otherwise.
  integer = all(slope == 1 and intercept == round(intercept) for slope, intercept in scales)
  rows, cols = int(headers[0].Rows), int(headers[0].Columns)
  # Voxel (i, j, k) = column i, row j of slice k; Fortran order, as NIfTI stores voxels, so
  # each slice is one contiguous block (pixels.T is a plain copy into it). Allocated from the
  # header's sizes only after geometry() has checked every slice has them, and filled slice by
  # slice after each file's size is checked against them.
  volume = np.empty((cols, rows, len(order)), np.int16 if integer else np.float32, order="F")
  for z, (k, header, (slope, intercept)) in enumerate(zip(order, headers, scales)):
    ref = info.slices[k][0]
    _check_pixel_size(ref, header)
    try:
      ds = ref.read(headers_only=False)
      pixels = ds.pixel_array
    except Exception as e:  # pydicom raises many types (missing decoder, truncation...)
      raise CaseError(f"{ref}: cannot read the pixel data: {type(e).__name__}: {e}") from e
    if pixels.shape != (rows, cols):
      raise CaseError(f"{ref}: pixel data of shape {pixels.shape}, expected one "
                      f"{rows} x {cols} slice")
    if str(ds.get("PhotometricInterpretation", "MONOCHROME2")) not in ("MONOCHROME1",
                                                                       "MONOCHROME2"):
      raise CaseError(f"{ref}: PhotometricInterpretation {ds.PhotometricInterpretation} is not "
                      "a grayscale CT")
    if volume.dtype == np.int16:
      # int32 first: stored values may exceed int16 before a (negative) intercept is added.
      hu = pixels.astype(np.int32) + int(intercept)
      if hu.min() < np.iinfo(np.int16).min or hu.max() > np.iinfo(np.int16).max:
        volume = volume.astype(np.float32, order="F")  # once; earlier slices are exact in it
      volume[:, :, z] = hu.T
    else:
      volume[:, :, z] = pixels.T.astype(np.float32) * np.float32(slope) + np.float32(intercept)
  return Series(volume, affine, headers, info)
