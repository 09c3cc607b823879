"""Patient-level splits: every image of a patient lands in one split, never two.

Images of one patient are strongly correlated (follow-ups of the same chest); an image of a
patient in training and another in test inflates the test AUC. So validation is drawn from the
training pool by patient, and a patient of the test split who also appears in the training pool
(an official list that is not patient-wise, or a dataset whose splits share patients) loses their
training images: the test split is what the dataset publishes, untouched.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import numpy as np


def patient_fraction_mask(patients: np.ndarray, fraction: float, seed: int) -> np.ndarray:
  """(N,) bool: True for the rows of a seeded random `fraction` of the patients.

  The draw depends only on the set of patient ids and the seed (not on row order).
  """
  if not 0.0 <= fraction < 1.0:
    raise ValueError(f"fraction {fraction} must be in [0, 1)")
  unique = np.array(sorted(set(patients.tolist())), dtype=object)
  # A seeded permutation of the sorted ids; the first round(fraction * P) patients are chosen.
  order = np.random.default_rng(seed).permutation(len(unique))
  chosen = set(unique[order[:round(fraction * len(unique))]].tolist())
  return np.array([p in chosen for p in patients], bool)


def split_by_patient(patients: np.ndarray, pool: Mapping[str, np.ndarray], *,
                     validation_fraction: float, seed: int
                     ) -> tuple[dict[str, np.ndarray], int]:
  """Row indices of 'train' / 'validation' / 'test', and the rows dropped for overlap.

  Args:
    patients: (N,) patient id of every row.
    pool: {'train_val': rows, 'test': rows} (disjoint row sets, from the dataset's own split).
    validation_fraction: the fraction of the training pool's patients that validate.
    seed: the validation draw.
  """
  test = np.sort(np.asarray(pool["test"], np.int64))
  train_val = np.sort(np.asarray(pool["train_val"], np.int64))
  test_patients = set(patients[test].tolist())
  overlap = np.array([p in test_patients for p in patients[train_val]], bool)
  train_val = train_val[~overlap]
  val_mask = patient_fraction_mask(patients[train_val], validation_fraction, seed)
  out = {"train": train_val[~val_mask], "validation": train_val[val_mask], "test": test}
  check_disjoint(patients, out)
  return out, int(overlap.sum())


def check_disjoint(patients: np.ndarray, splits: Mapping[str, np.ndarray]) -> None:
  """Raises ValueError naming a patient found in two splits."""
  seen: dict[str, str] = {}
  for split, rows in splits.items():
    for p in set(patients[np.asarray(rows, np.int64)].tolist()):
      if p in seen and seen[p] != split:
        raise ValueError(f"patient {p!r} is in both the {seen[p]} and the {split} split")
      seen[p] = split


def subsample(rows: np.ndarray, limit: int, seed: int, salt: str) -> np.ndarray:
  """At most `limit` of `rows` (-1: all), a seeded draw kept in file order."""
  rows = np.asarray(rows, np.int64)
  if limit < 0 or limit >= len(rows):
    return rows
  digest = int(hashlib.sha256(salt.encode()).hexdigest()[:8], 16)
  pick = np.random.default_rng([seed, digest]).choice(len(rows), size=limit, replace=False)
  return rows[np.sort(pick)]
