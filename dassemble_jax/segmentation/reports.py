"""What the segmentation jobs report: evaluation tables, eval.json, model comparisons, overlays.

Printing and writing only (the numbers come from evaluate.py); every file is written atomically
by the primary process.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import jax
import numpy as np

from dassemble_jax import atomic
from dassemble_jax.segmentation import seg_metrics, trained_run

if TYPE_CHECKING:
  from dassemble_jax.segmentation import evaluate

# ------------------------------------------------------------------------------------------------
# One model's held-out evaluation.

def write_results(workdir: str, results: Mapping[str, Any], title: str = "") -> str:
  """Prints the DSC/NSD tables and detection; writes workdir/eval.json. Returns the text."""
  text = [(f"== held-out evaluation {title} ({results['summary']['all']['n_cases']} cases, "
           f"{results['seconds_per_case']:.2f} s/case) =="),
          seg_metrics.format_table(results["summary"], "dsc"),
          seg_metrics.format_table(results["summary"], "nsd")]
  for lesion, d in sorted(results["detection"].items()):
    text.append(f"detection {lesion}: sensitivity {d['sensitivity']:.2f} specificity "
                f"{d['specificity']:.2f} (tp {d['tp']} fp {d['fp']} tn {d['tn']} fn {d['fn']})")
  text = "\n".join(text)
  if jax.process_index() == 0:
    print(text, flush=True)
    payload = seg_metrics.to_jsonable({k: v for k, v in results.items() if k != "masks"})
    atomic.write_json(os.path.join(workdir, trained_run.EVAL_FILE), payload, indent=1)
  return text


# ------------------------------------------------------------------------------------------------
# Overlays.

_COLORS = np.array([[0.90, 0.10, 0.10], [0.10, 0.70, 0.10], [0.15, 0.35, 0.95], [0.95, 0.75, 0.1],
                    [0.80, 0.20, 0.85], [0.10, 0.80, 0.85], [0.95, 0.50, 0.15],
                    [0.55, 0.35, 0.20]])


def _label_rgb(image2d: np.ndarray, masks2d: np.ndarray) -> np.ndarray:
  """Grey CT slice with each class blended in its colour (lesions drawn last, on top)."""
  rgb = np.repeat(image2d[..., None], 3, -1)
  for k in range(masks2d.shape[-1]):
    m = masks2d[..., k]
    if m.any():
      rgb[m] = 0.45 * rgb[m] + 0.55 * _COLORS[k % len(_COLORS)]
  return rgb


def overlay_png(path: str, cases: Sequence[evaluate.HeldOutCase],
                predictions: Mapping[str, Mapping[str, np.ndarray]]) -> str:
  """One row per case (the axial slice with the most labelled voxels), columns CT + ground
  truth + one per model in `predictions` ({model: {case name: masks}}). Written atomically."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  cols = 2 + len(predictions)
  fig, axes = plt.subplots(len(cases), cols, figsize=(2.6 * cols, 2.6 * len(cases)),
                           squeeze=False)
  for row, case in enumerate(cases):
    z = int(np.argmax((case.label & case.annotated).sum(axis=(0, 1, 3))))
    # RAS array (index grows towards the patient's right and front): rows = y flipped (front
    # up), columns = x flipped (patient's right on the image left): the radiological view.
    view = lambda a: np.flip(np.swapaxes(a, 0, 1), axis=(0, 1))
    img = view(case.image[:, :, z])
    panels = [("CT", img, None), ("ground truth", img, view(case.label[:, :, z] & case.annotated))]
    panels += [(name, img, view(preds[case.name][:, :, z])) for name, preds in predictions.items()]
    for col, (title, im, m) in enumerate(panels):
      ax = axes[row, col]
      ax.imshow(im if m is None else _label_rgb(im, m), cmap="gray", vmin=0, vmax=1)
      ax.set_title(f"{case.name}\n{title}" if col == 0 else title, fontsize=7)
      ax.axis("off")
  fig.tight_layout()
  with atomic.temporary_path(path) as tmp:
    fig.savefig(tmp, dpi=90)
  plt.close(fig)
  return path


# ------------------------------------------------------------------------------------------------
# Several models side by side.

def comparison_table(results: dict[str, dict],
                     title: str = "assembly vs single-source models") -> tuple[str, dict]:
  """Per-class DSC over all held-out cases: one column per model ('-' = class not trained or
  not annotated in the held-out set); the mean row averages each model's evaluated classes.
  With an 'assembly' model, a line per other model compares the two on the other's classes."""
  names = list(results)
  per_model = {n: results[n]["eval"]["summary"]["all"]["dsc"] for n in names}
  classes = [c for c in trained_run.CLASS_NAMES
             if any(not math.isnan(_f(per_model[n][c])) for n in names)]
  width = max(len(c) for c in classes + ["mean (own classes)"])
  cols = [max(len(n), 7) for n in names]
  lines = [f"[held-out DSC per class: {title}]",
           f"{'class':<{width}}  " + " ".join(f"{n:>{w}}" for n, w in zip(names, cols))]
  cell = lambda v, w: f"{'-':>{w}}" if math.isnan(_f(v)) else f"{_f(v):>{w}.3f}"
  if all("step" in results[n] for n in names):
    lines.append(f"{'(training steps)':<{width}}  " + " ".join(
        f"{results[n]['step']:>{w}d}" for n, w in zip(names, cols)))
  for c in classes:
    lines.append(f"{c:<{width}}  " + " ".join(cell(per_model[n][c], w)
                                              for n, w in zip(names, cols)))
  lines.append(f"{'mean (own classes)':<{width}}  " + " ".join(
      cell(results[n]["eval"]["summary"]["all"]["mean_dsc"], w) for n, w in zip(names, cols)))
  # The same classes for both: where the assembly and a single-source model both have a value.
  if "assembly" in per_model:
    for n in names[1:]:
      shared = [c for c in classes if not math.isnan(_f(per_model[n][c]))]
      a = np.mean([_f(per_model["assembly"][c]) for c in shared]) if shared else math.nan
      s = np.mean([_f(per_model[n][c]) for c in shared]) if shared else math.nan
      lines.append(f"on {n}'s {len(shared)} classes: assembly {a:.3f} vs {n} {s:.3f}")
  table = {"dsc": per_model, "classes": classes}
  return "\n".join(lines), table


def _f(v) -> float:
  return math.nan if v is None else float(v)


def pick_cases(cases: Sequence[evaluate.HeldOutCase], n: int) -> list:
  """Up to n held-out cases, taking sources in turn so every source is shown."""
  by_source: dict[str, list] = {}
  for c in cases:
    by_source.setdefault(c.source, []).append(c)
  picked, i = [], 0
  while len(picked) < min(n, len(cases)):
    for group in by_source.values():
      if i < len(group) and len(picked) < n:
        picked.append(group[i])
    i += 1
  return picked


def write_text(path: str, text: str) -> None:
  """A job's text table (the primary process only)."""
  if jax.process_index() == 0:
    atomic.write_text(path, text)


def write_summary(path: str, summary: Mapping[str, Any]) -> None:
  """A job's JSON summary (NaN -> null; the primary process only)."""
  if jax.process_index() == 0:
    atomic.write_json(path, seg_metrics.to_jsonable(summary), indent=1, default=str)
