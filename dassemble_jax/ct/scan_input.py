"""One place that finds CT scans in a path, names them, and loads any of them.

A scan is a NIfTI file (.nii / .nii.gz) or a DICOM series (a folder of one file per slice, or a
zip of one). `find_inputs(path)` lists the scans of:
  * a NIfTI file: that scan;
  * a zip: each DICOM series in it;
  * a folder: its NIfTI files and zips (not recursively, as before), and every DICOM series
    anywhere under it (recursively: archives such as TCIA nest study/series folders).
Each scan gets a case name for its outputs: the NIfTI file's name without its suffix; for a
DICOM series, the top folder it sits in under the given path (the given folder's own name when
the series lies directly in it, or when it is the only scan the folder holds, however deeply
nested; the zip's name for a zip). Series that would share a name (a
folder holding a CT's arterial and venous phases) each become their own case, named
`<name>_<SeriesDescription or series number>`, and the UID's tail is added if that still
clashes: every series of a folder is predicted, none is silently picked.

`load(scan)` reads either kind -> `LoadedScan` (data in its own voxel order, its RAS affine;
for DICOM also the series' slice headers, which a DICOM-SEG references). NIfTI goes through
`nifti_io.load`, DICOM through `dicom_io.read_series`; both raise `CaseError` naming the file
and the problem.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import re
import zipfile

import numpy as np

from dassemble_jax.ct import dicom_io, nifti_io
from dassemble_jax.ct.nifti_io import CaseError

NIFTI_SUFFIXES = (".nii.gz", ".nii")


@dataclasses.dataclass(frozen=True)
class Scan:
  """One input scan: a NIfTI file, or one DICOM series of a folder or zip."""
  path: pathlib.Path                 # the NIfTI file, the series' folder, or the zip
  name: str                          # case name for outputs
  series_uid: str | None = None      # DICOM: which series of `path`
  series_label: str = ""             # DICOM: 'series 3 'venous' (uid)' for messages

  @property
  def is_dicom(self) -> bool:
    return self.series_uid is not None

  def __str__(self) -> str:
    return f"{self.path} [{self.series_label}]" if self.is_dicom else str(self.path)

  def __fspath__(self) -> str:
    return str(self.path)


@dataclasses.dataclass
class LoadedScan:
  """A read scan: data (X, Y, Z) in its own voxel order, affine (4, 4) voxel -> RAS mm."""
  data: np.ndarray
  affine: np.ndarray
  series: dicom_io.Series | None = None   # DICOM: the slice headers, in data's slice order

  @property
  def spacing(self) -> np.ndarray:
    return nifti_io.voxel_sizes(self.affine)


def is_nifti(path: str | os.PathLike) -> bool:
  return pathlib.Path(path).name.endswith(NIFTI_SUFFIXES)


def case_name(path: str | os.PathLike | Scan) -> str:
  """A scan's case name: 'case_001.nii.gz' -> 'case_001'; a Scan's own name."""
  if isinstance(path, Scan):
    return path.name
  path = pathlib.Path(path)
  for suffix in NIFTI_SUFFIXES:
    if path.name.endswith(suffix):
      return path.name[:-len(suffix)]
  return path.stem if path.suffix.lower() == ".zip" else path.name


def _clean(text: str) -> str:
  return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_.")


def _dicom_scans(root: pathlib.Path, base_name: str, files=None) -> list[Scan]:
  """The series under folder or zip `root`, named as the module docstring says."""
  found = dicom_io.find_series(root, files)
  named = []
  for s in found:
    if root.is_dir():
      rel = s.folder.relative_to(root)
      name = rel.parts[0] if rel.parts else base_name
    else:
      name = base_name
    named.append([_clean(name) or "series", s])
  for key in ("description", "uid"):
    counts: dict[str, int] = {}
    for name, _ in named:
      counts[name] = counts.get(name, 0) + 1
    for item in named:
      if counts[item[0]] > 1:
        s = item[1]
        tag = (s.description or f"series{s.number}") if key == "description" else s.uid[-8:]
        item[0] = f"{item[0]}_{_clean(tag)}"
  return [Scan(s.folder if root.is_dir() else root, name, s.uid, s.label()) for name, s in named]


def find_inputs(path: str | os.PathLike) -> list[Scan]:
  """The scans in `path` (see the module docstring); CaseError if there are none."""
  path = pathlib.Path(path)
  if path.is_file():
    if is_nifti(path):
      return [Scan(path, case_name(path))]
    if zipfile.is_zipfile(path):
      scans = _dicom_scans(path, case_name(path))
      if not scans:
        raise CaseError(f"{path}: no DICOM image files in this zip")
      return scans
    if dicom_io._try_header(dicom_io.SliceRef(path)) is not None:
      raise CaseError(f"{path}: a single DICOM file; give the folder (or zip) of its series")
    raise CaseError(f"{path}: not a NIfTI file (.nii, .nii.gz), a DICOM series folder or a zip")
  if not path.is_dir():
    raise CaseError(f"{path}: no such file or folder")
  scans = []
  for p in sorted(path.iterdir()):
    if p.name.startswith(".") or not p.is_file():
      continue
    if is_nifti(p):
      scans.append(Scan(p, case_name(p)))
    elif p.suffix.lower() == ".zip" and zipfile.is_zipfile(p):
      scans.extend(_dicom_scans(p, case_name(p)))
  series = _dicom_scans(path, path.name or "series")
  if not scans and len(series) == 1:  # the folder of one case: named after it
    series = [dataclasses.replace(series[0], name=_clean(path.resolve().name) or "series")]
  scans.extend(series)
  if not scans:
    raise CaseError(f"{path}: no .nii or .nii.gz files, DICOM series or zips in this folder")
  return scans


def as_scan(source: str | os.PathLike | Scan) -> Scan:
  """A path given where one scan is expected -> its Scan (a DICOM folder or zip must hold one
  series; CaseError listing them otherwise)."""
  if isinstance(source, Scan):
    return source
  path = pathlib.Path(source)
  if path.is_file() and is_nifti(path):
    return Scan(path, case_name(path))
  if path.is_dir() or (path.is_file() and zipfile.is_zipfile(path)):
    info = dicom_io.select_series(path)
    return Scan(path, case_name(path), info.uid, info.label())
  if not path.exists():
    raise CaseError(f"{path}: no such file or folder")
  return Scan(path, case_name(path))  # nifti_io names the problem (not NIfTI, truncated...)


def load(source: str | os.PathLike | Scan, *, dtype=None) -> LoadedScan:
  """Reads a NIfTI file or a DICOM series (a Scan, or a path holding one) -> LoadedScan.

  `dtype=None` keeps the stored type (int16 for most CTs).
  """
  scan = as_scan(source)
  if not scan.is_dicom:
    data, affine = nifti_io.load(scan.path, dtype=dtype)
    return LoadedScan(data, affine)
  series = dicom_io.read_series(scan.path, scan.series_uid)
  data = series.volume if dtype is None else series.volume.astype(dtype, copy=False)
  return LoadedScan(data, series.affine, series)


def load_for_prediction(source: str | os.PathLike | Scan, dtype=np.float32
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """-> (volume (X, Y, Z) in the scan's own orientation, affine (4, 4), spacing (3,) mm).

  `dtype=None` keeps the stored type (int16 for most CTs: `to_model_grid` reads it directly,
  sparing a float32 copy of the whole scan). Raises CaseError naming the file if it is
  unreadable, truncated, not 3D (a trailing singleton 4th axis is dropped) or has a singular
  affine.
  """
  loaded = load(source, dtype=dtype)
  return loaded.data, loaded.affine, loaded.spacing
