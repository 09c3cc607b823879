"""CheXpert in its published layout.

```
root/ = CheXpert-v1.0/ (or CheXpert-v1.0-small/)
  train.csv  valid.csv
  train/patient00001/study1/view1_frontal.jpg ...
  valid/patient64541/study1/view1_frontal.jpg ...
```
The CSVs' `Path` column starts with the release's folder name ("CheXpert-v1.0-small/train/...");
that first component is replaced by `root`, so either release (and a renamed folder) works.
Labels: 1 positive, 0 negative, -1 uncertain, blank not mentioned (label_space.to_targets applies
the uncertainty policy). `Frontal/Lateral` is 'Frontal' or 'Lateral'. Patients are the
`patientNNNNN` component of the path. Published figures (Irvin et al. 2019): train.csv holds
223,414 images of 64,540 patients; valid.csv 234 images of 200 patients, labelled by radiologists
(no uncertain labels).
"""

from __future__ import annotations

import os
import pathlib
import re

import numpy as np

from dassemble_jax.chestxray import csv_io, label_space
from dassemble_jax.data.errors import DataFormatError

NAMES = ("No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity",
         "Lung Lesion", "Edema", "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax",
         "Pleural Effusion", "Pleural Other", "Fracture", "Support Devices")
METADATA = ("Path", "Sex", "Age", "Frontal/Lateral", "AP/PA")
REQUIRED = ("Path", "Frontal/Lateral") + NAMES
VIEWS = ("frontal", "lateral", "all")
# '1', '1.0', '0', '0.0', '-1', '-1.0' or blank: the only spellings in the released files.
_VALUES = {"1": 1.0, "1.0": 1.0, "0": 0.0, "0.0": 0.0, "-1": -1.0, "-1.0": -1.0, "": np.nan}
_PATIENT = re.compile(r"patient\d+")
_STUDY = re.compile(r"study\d+")


def read_labels(path: str | os.PathLike) -> label_space.LabelTable:
  """Parses train.csv / valid.csv into a LabelTable."""
  header, rows, col = csv_io.read_rows(path, REQUIRED)
  extra = [h for h in header if h not in METADATA]
  label_space.check_names("chexpert", extra, f"{path}: header")
  label_cols = [col[n] for n in NAMES]
  paths, row_ids, patients, views = [], [], [], []
  values = []
  for row, cells in rows:
    rel = cells[col["Path"]].strip()
    patient = _PATIENT.search(rel)
    if patient is None:
      raise DataFormatError(f"{csv_io.where(path, row)}: path {rel!r} has no patientNNNNN "
                            "component")
    view = cells[col["Frontal/Lateral"]].strip().lower()
    if view not in ("frontal", "lateral"):
      raise DataFormatError(f"{csv_io.where(path, row)}: Frontal/Lateral is {view!r}, expected "
                            "'Frontal' or 'Lateral'")
    v = []
    for name, c in zip(NAMES, label_cols):
      cell = cells[c].strip()
      if cell not in _VALUES:
        raise DataFormatError(f"{csv_io.where(path, row)}: column {name!r} has value {cell!r}; "
                              "expected 1, 0, -1 or blank")
      v.append(_VALUES[cell])
    values.append(v)
    paths.append(rel)
    row_ids.append(row)
    patients.append(patient.group(0))
    views.append(view)
  return label_space.LabelTable(
      "chexpert", str(path), np.array(paths, dtype=object), np.array(row_ids, np.int64),
      np.array(patients, dtype=object), NAMES,
      np.array(values, np.float32).reshape(len(paths), len(NAMES)),
      np.array(views, dtype=object))


def studies(table: label_space.LabelTable) -> np.ndarray:
  """(N,) 'patientNNNNN/studyM' of every row (CheXpert's labels are per study)."""
  out = []
  for p, patient in zip(table.paths, table.patients):
    study = _STUDY.search(p)
    out.append(f"{patient}/{study.group(0) if study else ''}")
  return np.array(out, dtype=object)


def filter_view(table: label_space.LabelTable, view: str) -> label_space.LabelTable:
  """Only the frontal or lateral images ('all': every row)."""
  if view not in VIEWS:
    raise ValueError(f"view {view!r}: expected one of {VIEWS}")
  if view == "all":
    return table
  return table.take(np.nonzero(table.views == view)[0])


def image_path(root: str | os.PathLike, rel: str) -> pathlib.Path:
  """The file of a CSV path: its first component (the release's folder name) becomes `root`."""
  parts = pathlib.PurePosixPath(rel).parts
  if len(parts) > 1 and parts[0].lower().startswith("chexpert"):
    parts = parts[1:]
  return pathlib.Path(root).joinpath(*parts)
