"""Per-class ROC AUC with masks for unknown labels, on the host (scikit-learn, float64).

AUC is only ever computed on the host, after the scores are pulled off the device: nothing
compiled needs it, so scikit-learn's implementation is the one used.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn import metrics as sk_metrics


def roc_auc(scores: np.ndarray, targets: np.ndarray) -> float:
  """ROC AUC of one class (ties count one half); NaN unless both label values are present."""
  targets = np.asarray(targets) > 0.5
  if targets.all() or not targets.any():
    return float("nan")
  return float(sk_metrics.roc_auc_score(targets, np.asarray(scores, np.float64)))


def per_class_auc(scores: np.ndarray, targets: np.ndarray,
                  known: np.ndarray | None = None) -> np.ndarray:
  """AUC per class over the examples where that class is known. Shapes (N, C) -> (C,)."""
  scores, targets = np.asarray(scores), np.asarray(targets)
  known = np.ones_like(targets) if known is None else np.asarray(known)
  out = np.full(scores.shape[1], np.nan)
  for c in range(scores.shape[1]):
    rows = known[:, c] > 0.5
    out[c] = roc_auc(scores[rows, c], targets[rows, c])
  return out


def per_source_auc(scores: np.ndarray, targets: np.ndarray, known: np.ndarray,
                   source: np.ndarray, num_sources: int) -> np.ndarray:
  """(num_sources, C): per-class AUC on each source's own examples. A class a source does not
  annotate (never known there) is NaN: skipped, not scored (a chest X-ray test set holds each
  dataset's test images with only that dataset's classes known)."""
  source = np.asarray(source)
  return np.stack([per_class_auc(scores[source == s], targets[source == s], known[source == s])
                   for s in range(num_sources)])


def format_auc_table(class_names: Sequence[str], columns: dict[str, np.ndarray]) -> str:
  """A markdown table of per-class AUC (in %) with one column per run; NaN shows as '-'."""
  names = list(columns)
  lines = ["| class | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
  for i, c in enumerate(class_names):
    cells = [("-" if np.isnan(columns[n][i]) else f"{100 * columns[n][i]:.2f}") for n in names]
    lines.append(f"| {c} | " + " | ".join(cells) + " |")
  means = [np.nanmean(columns[n]) if np.isfinite(columns[n]).any() else np.nan for n in names]
  lines.append("| mean | " + " | ".join("-" if np.isnan(m) else f"{100 * m:.2f}"
                                         for m in means) + " |")
  return "\n".join(lines)
