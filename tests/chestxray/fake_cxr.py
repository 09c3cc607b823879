"""Small chest X-ray datasets written in the published layouts (PNG for ChestX-ray14, JPEG for
CheXpert, PNG for COVIDx), with label rows given by the test (made up, or real rows of the
published label files). Images carry their labels as bright blocks so that training can learn."""

from __future__ import annotations

import csv
import pathlib

import numpy as np
from PIL import Image

NIH_HEADER = ["Image Index", "Finding Labels", "Follow-up #", "Patient ID", "Patient Age",
              "Patient Gender", "View Position", "OriginalImage[Width", "Height]",
              "OriginalImagePixelSpacing[x", "y]"]
CHEXPERT_HEADER = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", "No Finding",
                   "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion",
                   "Edema", "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax",
                   "Pleural Effusion", "Pleural Other", "Fracture", "Support Devices"]


def _image(positives, shape, seed) -> np.ndarray:
  """Noise plus one bright block per positive class index (a learnable signal)."""
  rng = np.random.default_rng(seed)
  h, w = shape
  img = rng.integers(20, 90, size=shape).astype(np.uint8)
  for k in positives:
    r, c = divmod(k % 16, 4)
    img[r * h // 4:(r + 1) * h // 4, c * w // 4:(c + 1) * w // 4] = 230
  return img


def write_nih(root: pathlib.Path, rows, *, test_patients=(), shape=(48, 48),
              layout: str = "kaggle", lists: bool = True,
              csv_name="Data_Entry_2017_v2020.csv") -> pathlib.Path:
  """rows: [(image name, 'A|B' findings, patient id int)]. Writes the CSV, PNGs, split lists."""
  from dassemble_jax.chestxray import nih
  root.mkdir(parents=True, exist_ok=True)
  folder = root / ("images_001/images" if layout == "kaggle" else "images")
  folder.mkdir(parents=True, exist_ok=True)
  with open(root / csv_name, "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(NIH_HEADER)
    for i, (name, findings, patient) in enumerate(rows):
      w.writerow([name, findings, 0, patient, 50, "M", "PA", 1024, 1024, 0.143, 0.143])
      pos = [nih.NAMES.index(x) for x in findings.split("|") if x != "No Finding"]
      Image.fromarray(_image(pos, shape, i)).save(folder / name)
  if lists:
    test = [r[0] for r in rows if r[2] in set(test_patients)]
    train = [r[0] for r in rows if r[2] not in set(test_patients)]
    (root / "train_val_list.txt").write_text("\n".join(train) + "\n")
    (root / "test_list.txt").write_text("\n".join(test) + "\n")
  return root


def write_chexpert(parent: pathlib.Path, train_rows, valid_rows, *, shape=(56, 44),
                   release="CheXpert-v1.0-small") -> pathlib.Path:
  """rows: [(path 'CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg',
  'Frontal'|'Lateral', {column: '1.0'|'0.0'|'-1.0'|''})]. Returns the release folder."""
  root = parent / release
  for name, rows in (("train.csv", train_rows), ("valid.csv", valid_rows)):
    root.mkdir(parents=True, exist_ok=True)
    with open(root / name, "w", newline="") as f:
      w = csv.writer(f)
      w.writerow(CHEXPERT_HEADER)
      for i, (path, view, labels) in enumerate(rows):
        cells = [path, "Female", 60, view, "AP" if view == "Frontal" else ""]
        cells += [labels.get(c, "") for c in CHEXPERT_HEADER[5:]]
        w.writerow(cells)
        pos = [k for k, c in enumerate(CHEXPERT_HEADER[5:]) if labels.get(c) == "1.0"]
        target = parent / path.replace(path.split("/")[0], release, 1)
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(_image(pos, shape, hash(path) % 1000)).save(target, quality=90)
  return root


def nih_rows(num_patients: int, per_patient: int = 2, seed: int = 0):
  """Made-up rows: patients 1..P, each with `per_patient` images and random findings."""
  from dassemble_jax.chestxray import nih
  rng = np.random.default_rng(seed)
  rows = []
  for p in range(1, num_patients + 1):
    for k in range(per_patient):
      found = [f for f in nih.FINDINGS if rng.random() < 0.2]
      rows.append((f"{p:08d}_{k:03d}.png", "|".join(found) or "No Finding", p))
  return rows


def chexpert_rows(first_patient: int, num_patients: int, split: str, seed: int = 0,
                  uncertain: bool = True):
  """Made-up rows with 1/0/-1/blank values (no -1 when uncertain=False, as valid.csv)."""
  rng = np.random.default_rng(seed)
  rows = []
  choices = ["1.0", "0.0", "-1.0", ""] if uncertain else ["1.0", "0.0"]
  for p in range(first_patient, first_patient + num_patients):
    for view, k in (("Frontal", 1), ("Lateral", 2)):
      labels = {c: choices[rng.integers(len(choices))] for c in CHEXPERT_HEADER[5:]}
      path = f"CheXpert-v1.0-small/{split}/patient{p:05d}/study1/view{k}_{view.lower()}.jpg"
      rows.append((path, view, labels))
  return rows


def write_covidx(root: pathlib.Path, train_lines, test_lines, shape=(40, 40)) -> pathlib.Path:
  """lines: [(patient, filename, class word, source)] -> train.txt / test.txt + PNG folders."""
  for split, lines in (("train", train_lines), ("test", test_lines)):
    (root / split).mkdir(parents=True, exist_ok=True)
    with open(root / f"{split}.txt", "w") as f:
      for i, (patient, filename, word, source) in enumerate(lines):
        f.write(f"{patient} {filename} {word} {source}\n")
        pos = [0] if word.lower() in ("positive", "covid-19") else []
        Image.fromarray(_image(pos, shape, i)).save(root / split / filename)
  return root
