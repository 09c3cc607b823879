"""One label space across chest X-ray datasets: the shared classes and each dataset's synonyms.

Every dataset names its findings its own way (NIH "Effusion", CheXpert "Pleural Effusion",
NIH "Pleural_Thickening"). `SYNONYMS` maps each dataset's own names onto `SHARED_CLASSES`; a name
a dataset's file uses that is not in its table is an error (a new release, a typo, the wrong
file), never silently dropped. "Lung Lesion" (CheXpert) stays apart from "Nodule" and "Mass"
(NIH): a lesion is either, so merging them changes what the classes mean. A user who wants them
merged says so (`parse_overrides(["nih:Nodule=Lung Lesion", "nih:Mass=Lung Lesion"])`), and the
table used is written into the manifest.

Label values, as every reader returns them (float32): 1 positive, 0 negative, -1 uncertain
(CheXpert), NaN blank (not mentioned). `to_targets` turns them into the trainer's multi-hot
targets and known-class mask under an uncertainty policy (CheXpert paper, Irvin et al. 2019):
  U-Ignore ('ignore', default): uncertain -> unknown (masked out of the loss and the AUC);
  U-Zeros ('zeros'): uncertain -> negative;  U-Ones ('ones'): uncertain -> positive.
Blank (unmentioned) -> negative by default, as the CheXpert baselines do; 'unknown' treats it as
missing, as TorchXRayVision does for the findings of a study that is not "No Finding".
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from dassemble_jax.data.errors import DataFormatError

# Shared class names, in a fixed order (a config's label space is a subset, in its own order).
SHARED_CLASSES = (
    "Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Effusion", "Emphysema",
    "Fibrosis", "Hernia", "Infiltration", "Mass", "Nodule", "Pleural Thickening", "Pneumonia",
    "Pneumothorax", "Enlarged Cardiomediastinum", "Lung Opacity", "Lung Lesion",
    "Pleural Other", "Fracture", "Support Devices", "No Finding", "COVID-19",
)

# dataset -> {the dataset's own name -> shared class}.
SYNONYMS: dict[str, dict[str, str]] = {
    "nih": {
        "Atelectasis": "Atelectasis", "Cardiomegaly": "Cardiomegaly",
        "Consolidation": "Consolidation", "Edema": "Edema", "Effusion": "Effusion",
        "Emphysema": "Emphysema", "Fibrosis": "Fibrosis", "Hernia": "Hernia",
        "Infiltration": "Infiltration", "Mass": "Mass", "Nodule": "Nodule",
        "Pleural_Thickening": "Pleural Thickening", "Pneumonia": "Pneumonia",
        "Pneumothorax": "Pneumothorax", "No Finding": "No Finding",
    },
    "chexpert": {
        "No Finding": "No Finding", "Enlarged Cardiomediastinum": "Enlarged Cardiomediastinum",
        "Cardiomegaly": "Cardiomegaly", "Lung Opacity": "Lung Opacity",
        "Lung Lesion": "Lung Lesion", "Edema": "Edema", "Consolidation": "Consolidation",
        "Pneumonia": "Pneumonia", "Atelectasis": "Atelectasis", "Pneumothorax": "Pneumothorax",
        "Pleural Effusion": "Effusion", "Pleural Other": "Pleural Other",
        "Fracture": "Fracture", "Support Devices": "Support Devices",
    },
    # COVIDx CXR: class column 'positive'/'negative' (CXR-2 and later) or
    # 'COVID-19'/'pneumonia'/'normal' (the first releases); see covidx.py.
    "covidx": {"COVID-19": "COVID-19", "Pneumonia": "Pneumonia"},
}

POLICIES = ("ignore", "zeros", "ones")
BLANK_POLICIES = ("negative", "unknown")


@dataclasses.dataclass
class LabelTable:
  """A dataset's label file, parsed: one row per image.

  Attributes:
    dataset: 'nih' | 'chexpert' | 'covidx'.
    source_file: the file the rows came from (errors name it).
    paths: (N,) image paths as the file writes them.
    rows: (N,) int, 1-based data row in `source_file` (the header is not a row).
    patients: (N,) str patient ids.
    names: the dataset's own class names, one per column of `values`.
    values: (N, L) float32: 1, 0, -1 (uncertain) or NaN (blank).
    views: (N,) str: 'frontal' | 'lateral'.
    files: (N,) the file each row came from (a concatenation holds several), or None: all
      from `source_file`.
  """
  dataset: str
  source_file: str
  paths: np.ndarray
  rows: np.ndarray
  patients: np.ndarray
  names: tuple[str, ...]
  values: np.ndarray
  views: np.ndarray
  files: np.ndarray | None = None
  header_lines: int = 1           # lines above row 1 (CSV header: 1; COVIDx split files: 0)

  def __len__(self) -> int:
    return len(self.paths)

  def take(self, index: np.ndarray) -> LabelTable:
    return dataclasses.replace(self, paths=self.paths[index], rows=self.rows[index],
                               patients=self.patients[index], values=self.values[index],
                               views=self.views[index],
                               files=None if self.files is None else self.files[index])

  def where(self, i: int) -> str:
    """'file: row R (line R+1)' of row i, for error messages."""
    f = self.source_file if self.files is None else self.files[i]
    return f"{f}: row {self.rows[i]} (line {self.rows[i] + self.header_lines})"

  def column(self, name: str) -> np.ndarray:
    return self.values[:, self.names.index(name)]


def concat(tables: Sequence[LabelTable]) -> LabelTable:
  """Rows of several files of one dataset (e.g. CheXpert's train.csv and valid.csv), in order."""
  first = tables[0]
  for t in tables[1:]:
    if t.dataset != first.dataset or t.names != first.names:
      raise ValueError(f"cannot concatenate {t.source_file} ({t.dataset}, {t.names}) with "
                       f"{first.source_file} ({first.dataset}, {first.names})")
  files = [t.files if t.files is not None else np.full(len(t), t.source_file, dtype=object)
           for t in tables]
  cat = lambda name: np.concatenate([getattr(t, name) for t in tables])
  return LabelTable(first.dataset, ", ".join(t.source_file for t in tables), cat("paths"),
                    cat("rows"), cat("patients"), first.names, cat("values"), cat("views"),
                    np.concatenate(files), first.header_lines)


def parse_overrides(entries: Iterable[str]) -> dict[str, dict[str, str]]:
  """['nih:Nodule=Lung Lesion', ...] -> {'nih': {'Nodule': 'Lung Lesion'}}; checked."""
  out: dict[str, dict[str, str]] = {}
  for entry in entries:
    head, eq, shared = str(entry).partition("=")
    dataset, colon, local = head.partition(":")
    if not (eq and colon and dataset and local and shared):
      raise ValueError(f"synonym override {entry!r}: expected 'dataset:Own Name=Shared Class'")
    if dataset not in SYNONYMS:
      raise ValueError(f"synonym override {entry!r}: unknown dataset {dataset!r}; "
                       f"expected one of {sorted(SYNONYMS)}")
    if local not in SYNONYMS[dataset]:
      raise ValueError(f"synonym override {entry!r}: {dataset} has no class {local!r}; it has "
                       f"{sorted(SYNONYMS[dataset])}")
    if shared not in SHARED_CLASSES:
      raise ValueError(f"synonym override {entry!r}: {shared!r} is not a shared class; "
                       f"expected one of {list(SHARED_CLASSES)}")
    out.setdefault(dataset, {})[local] = shared
  return out


def synonyms(dataset: str, overrides: Mapping[str, Mapping[str, str]] | None = None
             ) -> dict[str, str]:
  """The dataset's own name -> shared class table, with `overrides` applied."""
  if dataset not in SYNONYMS:
    raise ValueError(f"unknown chest X-ray dataset {dataset!r}; expected one of "
                     f"{sorted(SYNONYMS)}")
  return {**SYNONYMS[dataset], **dict((overrides or {}).get(dataset, {}))}


def check_names(dataset: str, names: Iterable[str], where: str) -> None:
  """Raises DataFormatError naming `where` if a class name is not in the dataset's table."""
  known = SYNONYMS[dataset]
  unknown = [n for n in names if n not in known]
  if unknown:
    raise DataFormatError(f"{where}: unknown {dataset} class name(s) {unknown}; the synonym "
                          f"table knows {sorted(known)}")


def shared_values(table: LabelTable, classes: Sequence[str],
                  overrides: Mapping[str, Mapping[str, str]] | None = None) -> np.ndarray:
  """(N, len(classes)) raw values (1/0/-1/NaN) of the shared `classes` from a dataset's table.

  Several own names mapped onto one shared class (a merge) combine as: positive if any is 1,
  else uncertain if any is -1, else negative if any is 0, else blank.
  """
  table_map = synonyms(table.dataset, overrides)
  out = np.full((len(table), len(classes)), np.nan, np.float32)
  for j, shared in enumerate(classes):
    cols = [i for i, n in enumerate(table.names) if table_map.get(n) == shared]
    if not cols:
      offered = sorted({table_map[n] for n in table.names if n in table_map})
      raise ValueError(f"{table.source_file}: {table.dataset} does not annotate {shared!r}; "
                       f"it offers {offered}")
    v = table.values[:, cols]
    combined = np.where((v == 1).any(1), 1.0, np.where(
        (v == -1).any(1), -1.0, np.where((v == 0).any(1), 0.0, np.nan)))
    out[:, j] = combined
  return out


def to_targets(values: np.ndarray, *, policy: str = "ignore", blank: str = "negative"
               ) -> tuple[np.ndarray, np.ndarray]:
  """Raw values (N, C) -> (targets, known), float32 each, under the uncertainty policy."""
  if policy not in POLICIES:
    raise ValueError(f"uncertainty policy {policy!r}: expected one of {POLICIES}")
  if blank not in BLANK_POLICIES:
    raise ValueError(f"blank policy {blank!r}: expected one of {BLANK_POLICIES}")
  values = np.asarray(values, np.float32)
  uncertain, missing = values == -1, np.isnan(values)
  targets = (values == 1).astype(np.float32)
  known = ~(uncertain | missing)
  if policy == "zeros":
    known |= uncertain
  elif policy == "ones":
    known |= uncertain
    targets[uncertain] = 1.0
  if blank == "negative":
    known |= missing
  return targets, known.astype(np.float32)
