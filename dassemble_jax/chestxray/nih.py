"""NIH ChestX-ray14 in its published layout.

```
root/
  Data_Entry_2017.csv  (or Data_Entry_2017_v2020.csv; gzipped accepted)
  train_val_list.txt   test_list.txt           the official patient-wise split (image names)
  images/*.png  or  images_001/images/*.png ... images_012/images/*.png  (1024 x 1024 PNG)
```
`Finding Labels` holds '|'-separated findings or "No Finding"; every one of the 14 findings is
known for every image (a finding not listed is a negative). All views are frontal (PA or AP).
Published figures (Wang et al. 2017, the dataset's README): 112,120 images of 30,805 patients.
"""

from __future__ import annotations

import os
import pathlib

import numpy as np

from dassemble_jax.chestxray import csv_io, label_space
from dassemble_jax.data.errors import DataFormatError

FINDINGS = ("Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule",
            "Pneumonia", "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis",
            "Pleural_Thickening", "Hernia")
NAMES = FINDINGS + ("No Finding",)
COLUMNS = ("Image Index", "Finding Labels", "Patient ID")
CSV_PATTERNS = ("Data_Entry_2017_v2020.csv", "Data_Entry_2017.csv", "Data_Entry_2017*.csv",
                "Data_Entry_2017*.csv.gz")
TRAIN_VAL_LIST, TEST_LIST = "train_val_list.txt", "test_list.txt"


def find_csv(root: str | os.PathLike) -> pathlib.Path:
  """root/Data_Entry_2017*.csv (the v2020 release first)."""
  root = pathlib.Path(root)
  for pattern in CSV_PATTERNS:
    found = sorted(root.glob(pattern))
    if found:
      return found[0]
  raise DataFormatError(f"{root}: no Data_Entry_2017*.csv; is this the ChestX-ray14 folder?")


def read_labels(path: str | os.PathLike) -> label_space.LabelTable:
  """Parses Data_Entry_2017*.csv into a LabelTable (values 1/0 for the 14 findings + No Finding).
  """
  _, rows, col = csv_io.read_rows(path, COLUMNS)
  index_of = {n: i for i, n in enumerate(NAMES)}
  paths, row_ids, patients, hits = [], [], [], []
  for row, cells in rows:
    name = cells[col["Image Index"]].strip()
    if not name:
      raise DataFormatError(f"{csv_io.where(path, row)}: empty 'Image Index'")
    findings = [f.strip() for f in cells[col["Finding Labels"]].split("|")]
    unknown = [f for f in findings if f not in index_of]
    if unknown:
      raise DataFormatError(f"{csv_io.where(path, row)}: unknown finding(s) {unknown}; "
                            f"ChestX-ray14 has {list(NAMES)}")
    if "No Finding" in findings and len(findings) > 1:
      raise DataFormatError(f"{csv_io.where(path, row)}: 'No Finding' listed with {findings}")
    patient = cells[col["Patient ID"]].strip()
    if not patient:
      raise DataFormatError(f"{csv_io.where(path, row)}: empty 'Patient ID'")
    paths.append(name)
    row_ids.append(row)
    patients.append(str(int(patient)) if patient.isdigit() else patient)
    hits.append([index_of[f] for f in findings])
  values = np.zeros((len(paths), len(NAMES)), np.float32)
  for i, cols in enumerate(hits):
    values[i, cols] = 1.0
  label_space.check_names("nih", NAMES, str(path))
  return label_space.LabelTable(
      "nih", str(path), np.array(paths, dtype=object), np.array(row_ids, np.int64),
      np.array(patients, dtype=object), NAMES, values,
      np.full(len(paths), "frontal", dtype=object))


def read_list(path: str | os.PathLike) -> list[str]:
  """The image names of train_val_list.txt / test_list.txt, one per line."""
  try:
    text = pathlib.Path(path).read_text()
  except FileNotFoundError:
    raise DataFormatError(f"{path}: split list not found") from None
  return [line.strip() for line in text.splitlines() if line.strip()]


def index_images(root: str | os.PathLike) -> dict[str, pathlib.Path]:
  """Image name -> path of every PNG under root/images*/ (either published layout)."""
  root = pathlib.Path(root)
  out: dict[str, pathlib.Path] = {}
  for folder in sorted(root.glob("images*")):
    if not folder.is_dir():
      continue
    for dirpath, _, files in os.walk(folder):
      for f in files:
        if f.lower().endswith(".png"):
          out.setdefault(f, pathlib.Path(dirpath) / f)
  return out


def official_split(root: str | os.PathLike, table: label_space.LabelTable
                   ) -> dict[str, np.ndarray] | None:
  """{'train_val', 'test'} row indices from the official lists, or None without them.

  An image of a list that the CSV does not have is an error naming the list and its line.
  """
  root = pathlib.Path(root)
  lists = {"train_val": root / TRAIN_VAL_LIST, "test": root / TEST_LIST}
  if not all(p.is_file() for p in lists.values()):
    return None
  position = {name: i for i, name in enumerate(table.paths)}
  out = {}
  for split, path in lists.items():
    names = read_list(path)
    idx = []
    for line, name in enumerate(names, start=1):
      if name not in position:
        raise DataFormatError(f"{path}: line {line}: image {name!r} is not in "
                              f"{pathlib.Path(table.source_file).name}")
      idx.append(position[name])
    out[split] = np.array(idx, np.int64)
  return out
