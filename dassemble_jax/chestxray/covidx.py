"""COVIDx CXR in its published layout (the COVID-Net project's split text files).

```
root/
  train.txt  test.txt  [val.txt]      (or train_COVIDx*.txt / test_COVIDx*.txt)
  train/<filename>  test/<filename>  [val/<filename>]
```
A line of a split file: `patient_id filename class data_source`, space-separated. The class is
'positive' / 'negative' (COVIDx CXR-2 and later: only COVID-19 is annotated) or 'COVID-19' /
'pneumonia' / 'normal' (the first releases: COVID-19 and non-COVID pneumonia are annotated; a
COVID-19 image leaves "Pneumonia" unknown, since COVID-19 pneumonia is neither class's negative).
"""

from __future__ import annotations

import os
import pathlib

import numpy as np

from dassemble_jax.chestxray import label_space
from dassemble_jax.data.errors import DataFormatError

NAMES = ("COVID-19", "Pneumonia")
_NAN = float("nan")
# class word -> (COVID-19, Pneumonia) values.
_CLASSES = {"positive": (1.0, _NAN), "negative": (0.0, _NAN), "covid-19": (1.0, _NAN),
            "pneumonia": (0.0, 1.0), "normal": (0.0, 0.0)}
SPLIT_FILES = {"train": ("train.txt", "train_COVIDx*.txt", "train_split*.txt"),
               "val": ("val.txt", "val_COVIDx*.txt"),
               "test": ("test.txt", "test_COVIDx*.txt", "test_split*.txt")}


def find_split_file(root: str | os.PathLike, split: str) -> pathlib.Path | None:
  root = pathlib.Path(root)
  for pattern in SPLIT_FILES[split]:
    found = sorted(root.glob(pattern))
    if found:
      return found[-1]  # the latest release when several are present
  return None


def read_split_file(path: str | os.PathLike, split: str) -> label_space.LabelTable:
  """Parses one split file; `split` ('train' | 'val' | 'test') is the image folder's name."""
  try:
    lines = pathlib.Path(path).read_text().splitlines()
  except FileNotFoundError:
    raise DataFormatError(f"{path}: split file not found") from None
  paths, rows, patients, values = [], [], [], []
  for row, line in enumerate(lines, start=1):
    parts = line.split()
    if not parts:
      continue
    if len(parts) < 4:
      raise DataFormatError(f"{path}: line {row}: expected 'patient_id filename class "
                            f"data_source', got {line.strip()!r}")
    # A filename may contain spaces: the first field is the patient, the last two class+source.
    patient, filename, word = parts[0], " ".join(parts[1:-2]), parts[-2]
    if word.lower() not in _CLASSES:
      raise DataFormatError(f"{path}: line {row}: unknown class {word!r}; expected one of "
                            "positive, negative, COVID-19, pneumonia, normal")
    paths.append(f"{split}/{filename}")
    rows.append(row)
    patients.append(patient)
    values.append(_CLASSES[word.lower()])
  return label_space.LabelTable(
      "covidx", str(path), np.array(paths, dtype=object), np.array(rows, np.int64),
      np.array(patients, dtype=object), NAMES,
      np.array(values, np.float32).reshape(len(paths), len(NAMES)),
      np.full(len(paths), "frontal", dtype=object), header_lines=0)


def annotated(table: label_space.LabelTable) -> tuple[str, ...]:
  """The classes the file's release annotates: Pneumonia only when some row knows it."""
  return NAMES if np.isfinite(table.column("Pneumonia")).any() else NAMES[:1]
