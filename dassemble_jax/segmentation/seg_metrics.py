"""Segmentation metrics on the host: DSC, NSD, per-scan tumor detection, per-source tables.

Conventions (the same for every class):
- A class the case's source does not annotate is NaN for that case and skipped in every mean
  (not counted as zero: a source without pancreas labels says nothing about the pancreas).
- Both prediction and ground truth empty: DSC = 1, NSD = 1 (the model correctly found nothing).
  Exactly one empty: DSC = 0, NSD = 0.
- NSD (normalised surface distance, "surface Dice" at a tolerance) counts surface voxels: a
  surface voxel of a mask is one with a face neighbour outside it (mask minus its erosion by the
  6-neighbourhood; voxels on the array border count as surface). NSD = (number of predicted
  surface voxels within tau mm of the true surface + number of true surface voxels within tau mm
  of the predicted surface) / (total number of surface voxels of both). Distances are Euclidean
  between voxel centres in mm (`distance_transform_edt(..., sampling=spacing)`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from scipy import ndimage

from dassemble_jax.ct import bitmask

_FACE = ndimage.generate_binary_structure(3, 1)


def dice(pred: np.ndarray, gt: np.ndarray) -> float:
  """DSC of two boolean masks; 1.0 when both are empty."""
  pred, gt = np.asarray(pred, bool), np.asarray(gt, bool)
  total = int(pred.sum()) + int(gt.sum())
  if total == 0:
    return 1.0
  return 2.0 * int(np.logical_and(pred, gt).sum()) / total


def surface(mask: np.ndarray) -> np.ndarray:
  """Surface voxels: the mask minus its 6-neighbourhood erosion (array border = outside)."""
  mask = np.asarray(mask, bool)
  return mask & ~ndimage.binary_erosion(mask, structure=_FACE, border_value=0)


def _bbox_union(a: np.ndarray, b: np.ndarray) -> tuple[slice, ...]:
  """Bounding box of a | b (both nonempty or not: callers check)."""
  return bitmask.class_boxes((a | b)[..., None])[0]


def nsd(pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float], tolerance_mm: float) -> float:
  """Normalised surface distance at `tolerance_mm` (see the module docstring)."""
  pred, gt = np.asarray(pred, bool), np.asarray(gt, bool)
  if pred.ndim != 3 or pred.shape != gt.shape:
    raise ValueError(f"nsd needs two 3D masks of one shape, got {pred.shape} and {gt.shape}")
  p_any, g_any = pred.any(), gt.any()
  if not p_any and not g_any:
    return 1.0
  if not p_any or not g_any:
    return 0.0
  # Surfaces and distances only matter inside the union's bounding box: every surface voxel of
  # either mask is inside it, so EDTs restricted to it are exact for those voxels. Voxels at the
  # box edge are surface voxels either way (their outside neighbour is background or the border).
  box = _bbox_union(pred, gt)
  sp, sg = surface(pred[box]), surface(gt[box])
  spacing = tuple(float(s) for s in spacing)
  dist_to_g = ndimage.distance_transform_edt(~sg, sampling=spacing)
  dist_to_p = ndimage.distance_transform_edt(~sp, sampling=spacing)
  hits = int(np.sum(dist_to_g[sp] <= tolerance_mm)) + int(np.sum(dist_to_p[sg] <= tolerance_mm))
  return hits / (int(sp.sum()) + int(sg.sum()))


def case_metrics(pred: np.ndarray, gt: np.ndarray, annotated: Sequence[bool],
                 spacing: Sequence[float], tolerance_mm: float | Sequence[float] = 1.0, *,
                 compute_nsd: bool = True) -> dict[str, np.ndarray]:
  """Per-class DSC and NSD of one case.

  Args:
    pred, gt: (X, Y, Z, C) bool masks (channel k = class id k + 1).
    annotated: (C,) which classes the case's source labels; the others are NaN.
    spacing: (3,) voxel size in mm.
    tolerance_mm: NSD tolerance, one for all classes or (C,).
    compute_nsd: False skips NSD (NaN), the expensive part.

  Returns:
    {'dsc': (C,) float64, 'nsd': (C,) float64}, NaN where not annotated.
  """
  pred, gt = np.asarray(pred, bool), np.asarray(gt, bool)
  if pred.shape != gt.shape or pred.ndim != 4:
    raise ValueError(f"pred {pred.shape} and gt {gt.shape} must both be (X, Y, Z, C)")
  c = pred.shape[-1]
  annotated = np.asarray(annotated, bool)
  if annotated.shape != (c,):
    raise ValueError(f"annotated must be ({c},), got {annotated.shape}")
  tol = np.broadcast_to(np.asarray(tolerance_mm, np.float64), (c,))
  dsc_v = np.full((c,), np.nan)
  nsd_v = np.full((c,), np.nan)
  for k in np.flatnonzero(annotated):
    dsc_v[k] = dice(pred[..., k], gt[..., k])
    if compute_nsd:
      nsd_v[k] = nsd(pred[..., k], gt[..., k], spacing, tol[k])
  return {"dsc": dsc_v, "nsd": nsd_v}


# ---------------------------------------------------------------------------------------------
# Tumor detection: a scan is positive for a lesion class if any voxel of it is present.


def scan_detection(pred: np.ndarray, gt: np.ndarray, annotated: Sequence[bool],
                   lesion_ids: Iterable[int]) -> dict[int, tuple[bool, bool]]:
  """lesion id -> (predicted positive, truly positive), only for lesions the source annotates."""
  annotated = np.asarray(annotated, bool)
  out = {}
  for i in sorted(lesion_ids):
    if i <= pred.shape[-1] and annotated[i - 1]:
      out[i] = (bool(pred[..., i - 1].any()), bool(gt[..., i - 1].any()))
  return out


def detection_stats(pairs: Iterable[tuple[bool, bool]]) -> dict[str, float]:
  """Sensitivity and specificity from per-scan (predicted, true) positives; NaN if undefined."""
  tp = fp = tn = fn = 0
  for p, g in pairs:
    tp += p and g
    fp += p and not g
    tn += (not p) and (not g)
    fn += (not p) and g
  sens = tp / (tp + fn) if tp + fn else math.nan
  spec = tn / (tn + fp) if tn + fp else math.nan
  return {"tp": tp, "fp": fp, "tn": tn, "fn": fn, "sensitivity": sens, "specificity": spec}


# ---------------------------------------------------------------------------------------------
# Aggregation per source.


def _nanmean(x: np.ndarray, axis=None):
  """Mean ignoring NaN; NaN (no warning) where everything is NaN."""
  x = np.asarray(x, np.float64)
  count = np.sum(~np.isnan(x), axis=axis)
  total = np.nansum(x, axis=axis)
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def _summarise(cases: Sequence[Mapping[str, Any]], class_names: Sequence[str]) -> dict:
  dsc = np.stack([np.asarray(c["dsc"], np.float64) for c in cases])  # (cases, C)
  nsd_ = np.stack([np.asarray(c["nsd"], np.float64) for c in cases])
  dsc_c, nsd_c = _nanmean(dsc, 0), _nanmean(nsd_, 0)
  return {
      "n_cases": len(cases),
      "dsc": {n: float(v) for n, v in zip(class_names, dsc_c)},
      "nsd": {n: float(v) for n, v in zip(class_names, nsd_c)},
      # Mean over the classes evaluated for this group, each class weighted equally.
      "mean_dsc": float(_nanmean(dsc_c)),
      "mean_nsd": float(_nanmean(nsd_c)),
  }


def aggregate_by_source(cases: Sequence[Mapping[str, Any]], class_names: Sequence[str]) -> dict:
  """Per-class means per source and over all cases.

  Args:
    cases: one mapping per case with 'source' (str), 'dsc' and 'nsd' ((C,) with NaN for classes
      the source does not annotate), e.g. `case_metrics(...) | {'source': name}`.
    class_names: (C,) names used as keys.

  Returns:
    {'per_source': {source: summary}, 'all': summary}; a summary holds n_cases, per-class dicts
    'dsc'/'nsd' (NaN where no case of the group annotates the class), 'mean_dsc', 'mean_nsd'.
    'all' averages over cases (a source with more cases weighs more).
  """
  if not cases:
    raise ValueError("no cases to aggregate")
  by_source: dict[str, list] = {}
  for case in cases:
    by_source.setdefault(str(case["source"]), []).append(case)
  return {"per_source": {s: _summarise(cs, class_names) for s, cs in sorted(by_source.items())},
          "all": _summarise(cases, class_names)}


def to_jsonable(obj):
  """NaN -> None recursively, so json.dumps writes valid JSON."""
  if isinstance(obj, dict):
    return {k: to_jsonable(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [to_jsonable(v) for v in obj]
  if isinstance(obj, float) and math.isnan(obj):
    return None
  return obj


def format_table(summary: Mapping[str, Any], metric: str = "dsc") -> str:
  """A fixed-width table: one row per class, one column per source plus 'all'; '-' = not
  evaluated. Classes no source evaluates are left out."""
  if metric not in ("dsc", "nsd"):
    raise ValueError(f"metric must be 'dsc' or 'nsd', got {metric!r}")
  groups = list(summary["per_source"].items()) + [("all", summary["all"])]
  names = list(summary["all"][metric])
  width = max([len("n cases")] + [len(n) for n in names])
  cols = [max(len(g), 6) for g, _ in groups]
  lines = [f"{'class':<{width}}  " + " ".join(f"{g:>{w}}" for (g, _), w in zip(groups, cols)),
           f"{'n cases':<{width}}  " + " ".join(f"{s['n_cases']:>{w}}"
                                                for (_, s), w in zip(groups, cols))]

  def cell(v, w):
    return f"{'-':>{w}}" if v is None or math.isnan(v) else f"{v:>{w}.3f}"

  for n in names:
    if math.isnan(summary["all"][metric][n]):
      continue
    lines.append(f"{n:<{width}}  " + " ".join(cell(s[metric][n], w)
                                              for (_, s), w in zip(groups, cols)))
  lines.append(f"{'mean':<{width}}  " + " ".join(cell(s[f'mean_{metric}'], w)
                                                 for (_, s), w in zip(groups, cols)))
  return f"[{metric.upper()}]\n" + "\n".join(lines)
