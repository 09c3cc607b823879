"""Per-class AUC agrees with scikit-learn; unknown entries are excluded."""

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from dassemble_jax.classification import metrics


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auc_matches_sklearn_with_ties(seed):
  rng = np.random.default_rng(seed)
  y = rng.random(301) > 0.6
  s = np.round(rng.random(301) + 0.3 * y, 2)  # rounding creates many ties
  assert abs(metrics.roc_auc(s, y) - roc_auc_score(y, s)) < 1e-6


def test_per_class_auc_masks_unknown_entries():
  rng = np.random.default_rng(3)
  scores = rng.random((200, 3))
  targets = (rng.random((200, 3)) > 0.5).astype(np.float32)
  known = (rng.random((200, 3)) > 0.4).astype(np.float32)
  got = metrics.per_class_auc(scores, targets, known)
  for c in range(3):
    rows = known[:, c] > 0
    assert abs(got[c] - roc_auc_score(targets[rows, c], scores[rows, c])) < 1e-6


def test_single_class_present_is_nan_and_table_shows_dash():
  assert np.isnan(metrics.roc_auc(np.array([0.1, 0.2]), np.array([1, 1])))
  table = metrics.format_auc_table(["a", "b"], {"run": np.array([0.5, np.nan])})
  assert "| b | - |" in table and "| mean | 50.00 |" in table


def test_per_class_auc_is_sklearns_and_nan_without_both_labels():
  """Random scores with many ties; a class with one label value, and one with no known row."""
  rng = np.random.default_rng(4)
  scores = np.round(rng.random((120, 4)), 1)
  targets = (rng.random((120, 4)) > 0.5).astype(np.float32)
  known = (rng.random((120, 4)) > 0.3).astype(np.float32)
  targets[:, 2] = 1.0
  known[:, 3] = 0.0
  got = metrics.per_class_auc(scores, targets, known)
  for c in range(2):
    rows = known[:, c] > 0
    assert got[c] == roc_auc_score(targets[rows, c], scores[rows, c])
  assert np.isnan(got[2]) and np.isnan(got[3])
