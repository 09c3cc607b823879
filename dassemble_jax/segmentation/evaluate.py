"""Held-out evaluation of a Universal Model: sliding window, DSC/NSD per class and source.

Held-out cases are converted records (`ct.convert`): image and bitmask label in the model grid
(RAS, model spacing), so prediction and ground truth compare voxel for voxel. Per case:
sliding-window probabilities -> threshold -> post-processing -> DSC and NSD for every class the
case's source annotates AND the model was trained on (others NaN, skipped in every mean) -> scan
-level tumor detection. `reports.write_results` prints the tables and writes eval.json.

Also here: `Validator` (the cheap mean-DSC score that picks the best checkpoint during
training) and `detection_by_radius` (lesion-level sensitivity per tumor radius bin).
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from dassemble_jax.ct import bitmask, taxonomy
from dassemble_jax.data import arrayrecord_io
from dassemble_jax.segmentation import inference, seg_metrics, trained_run
from dassemble_jax.segmentation.inference_spec import InferenceSpec

CLASS_NAMES = trained_run.CLASS_NAMES


@dataclasses.dataclass
class HeldOutCase:
  name: str               # '<source>/<case id>'
  source: str
  image: np.ndarray       # (X, Y, Z) float32 in [0, 1], RAS, model spacing
  label: np.ndarray       # (X, Y, Z, 32) bool
  annotated: np.ndarray   # (32,) bool
  spacing: np.ndarray     # (3,) mm
  affine: np.ndarray      # (4, 4) voxel -> RAS


def load_cases(test_dirs: Sequence[str], splits=("train", "val")) -> list[HeldOutCase]:
  """Every record of the given splits of each held-out folder (a missing split is skipped)."""
  cases = []
  for d in test_dirs:
    manifest = arrayrecord_io.read_manifest(d)
    source = manifest["sources"][0]
    for split in splits:
      ids = manifest["cases"].get(split, [])
      if not ids:
        continue
      for record in arrayrecord_io.read_records(d, split):
        cases.append(HeldOutCase(
            name=f"{source}/{ids[int(record['case_index'])]}", source=source,
            image=record["image"].astype(np.float32),
            label=bitmask.unpack(record["label"]),
            annotated=record["annotated"].astype(bool), spacing=record["spacing"],
            affine=record["affine"]))
  if not cases:
    raise ValueError(f"no held-out cases in {list(test_dirs)}")
  return cases


# ------------------------------------------------------------------------------------------------
# Metrics.

def evaluate_cases(apply_fn, variables, cases: Sequence[HeldOutCase],
                   spec: InferenceSpec) -> dict:
  """Predicts every case and scores it on the classes it annotates and `spec` says the model
  was trained on. Returns {'summary', 'detection', 'cases', 'masks', 'seconds_per_case'}
  (masks: {case name: (X, Y, Z, 32) bool})."""
  trained = spec.trained_mask
  per_case, masks, det_pairs = [], {}, {}
  start = time.perf_counter()
  for case in cases:
    pred = inference.predict_volume(apply_fn, case.image, params=variables, affine=case.affine,
                                    **spec.volume_kwargs())
    known = case.annotated & trained
    m = seg_metrics.case_metrics(pred, case.label, known, case.spacing,
                                 spec.nsd_tolerance_mm)
    per_case.append({"name": case.name, "source": case.source, "dsc": m["dsc"],
                     "nsd": m["nsd"]})
    for lesion, pair in seg_metrics.scan_detection(pred, case.label, known,
                                                   taxonomy.TUMOR_IDS).items():
      det_pairs.setdefault(CLASS_NAMES[lesion - 1], []).append(pair)
    masks[case.name] = pred
  seconds = (time.perf_counter() - start) / len(cases)
  summary = seg_metrics.aggregate_by_source(per_case, CLASS_NAMES)
  return {"summary": summary,
          "detection": {k: seg_metrics.detection_stats(v) for k, v in det_pairs.items()},
          "cases": [{"name": c["name"], "source": c["source"],
                     "dsc": dict(zip(CLASS_NAMES, map(float, c["dsc"]))),
                     "nsd": dict(zip(CLASS_NAMES, map(float, c["nsd"])))} for c in per_case],
          "masks": masks, "seconds_per_case": seconds}


def evaluate_state(config, trained: Mapping[str, Any], test_dirs: Sequence[str]) -> dict:
  """Evaluates the state returned by `train_loop.train` (its best validated state when it has
  one) on the held-out folders. `trained['classes']`, when present, names the classes to score
  ((32,) bool); otherwise they follow from the config (`trained_run.trained_classes`)."""
  classes = (trained["classes"] if "classes" in trained
             else trained_run.trained_classes(config))
  spec = InferenceSpec.from_config(config, classes)
  apply_fn = trained_run.apply_fn_for(trained["compiled"].eval_def, spec.dtype)
  variables = trained_run.host_variables(trained.get("eval_state", trained["state"]),
                                         trained["table"])
  return evaluate_cases(apply_fn, variables, load_cases(test_dirs), spec)


def evaluate_run(run_dir: str, test_dirs: Sequence[str]) -> tuple[dict, int]:
  """The held-out evaluation of a run folder's best checkpoint, with its own config and
  classes: (results as `evaluate_state`'s, the checkpoint's step)."""
  run = trained_run.restore_run(run_dir, "best")
  results = evaluate_state(run.config, {"compiled": run.compiled, "state": run.state,
                                        "table": run.table, "classes": run.trained},
                           list(test_dirs))
  return results, int(run.meta["step"])


# ------------------------------------------------------------------------------------------------
# Validation during training: picks the best checkpoint.

class Validator:
  """Mean DSC of a train state on validation cases, cheap enough to run every `eval_every` steps:
  no post-processing, no NSD. The score is the mean over every (case, class) pair the case
  annotates and the model is trained on (NaN when there is none)."""

  def __init__(self, config, comp, table, cases: Sequence[HeldOutCase]):
    self.cases = list(cases)
    self.spec = InferenceSpec.from_config(config, trained_run.trained_classes(config))
    self.apply_fn = trained_run.apply_fn_for(comp.eval_def, self.spec.dtype)
    self.table = table

  @classmethod
  def for_config(cls, config, comp, table, source_names: Sequence[str]) -> Validator | None:
    """The validation cases of the training sources: `data.val_dirs` (splits 'train' and 'val'),
    else the 'val' split of `data.shard_dirs`; None when there are none or eval_every is 0."""
    if not int(config.get("eval_every", 0) or 0):
      return None
    val_dirs = list(config.data.get("val_dirs", ()) or ())
    if val_dirs:
      cases = load_cases(val_dirs)
    else:
      with_val = [d for d in config.data.shard_dirs
                  if arrayrecord_io.read_manifest(d)["cases"].get("val")]
      cases = load_cases(with_val, splits=("val",)) if with_val else []
    cases = [c for c in cases if c.source in set(source_names)]
    return cls(config, comp, table, cases) if cases else None

  def score(self, state) -> float:
    variables = trained_run.host_variables(state, self.table)
    scores = []
    for case in self.cases:
      pred = inference.predict_volume(self.apply_fn, case.image, params=variables,
                                      **self.spec.volume_kwargs(postprocess=False))
      for k in np.flatnonzero(case.annotated & self.spec.trained_mask):
        scores.append(seg_metrics.dice(pred[..., k], case.label[..., k]))
    scores = np.asarray(scores, np.float64)
    return float(np.nanmean(scores)) if np.isfinite(scores).any() else float("nan")


# ------------------------------------------------------------------------------------------------
# Lesion-level detection by size.

RADIUS_BINS_MM = (0.0, 5.0, 10.0, float("inf"))


def bin_name(lo: float, hi: float) -> str:
  return f">{lo:g}mm" if not np.isfinite(hi) else f"{lo:g}-{hi:g}mm"


def lesion_components(mask: np.ndarray, spacing) -> tuple[np.ndarray, np.ndarray]:
  """Connected components (26-connectivity) of a 3D mask: (labels (X, Y, Z) int32, radii (n,)
  mm), radius = that of the sphere of the component's volume, (3 V / 4 pi)^(1/3)."""
  from scipy import ndimage
  labels, n = ndimage.label(mask, structure=np.ones((3, 3, 3), bool))
  counts = np.bincount(labels.ravel(), minlength=n + 1)[1:]
  volume = counts * float(np.prod(np.asarray(spacing, np.float64)))
  return labels.astype(np.int32), (3.0 * volume / (4.0 * np.pi)) ** (1.0 / 3.0)


def detection_by_radius(pred: np.ndarray, gt: np.ndarray, spacing,
                        bins: Sequence[float] = RADIUS_BINS_MM) -> dict:
  """Lesion-level sensitivity and DSC per equivalent-radius bin for one scan.

  pred, gt: (X, Y, Z) bool tumor masks. A true lesion (connected component of gt, 26-connected)
  is detected when the prediction overlaps it by at least one voxel. Its lesion DSC compares it
  with the predicted components that touch it (0 when missed). Returns {bin name: {'n',
  'detected', 'dsc_sum'}} with bins [lo, hi) in mm (`sum_detections` turns sums into means).
  """
  pred, gt = np.asarray(pred, bool), np.asarray(gt, bool)
  labels, radii = lesion_components(gt, spacing)
  pred_labels, _ = lesion_components(pred, spacing)
  hit = np.zeros(len(radii) + 1, bool)
  hit[np.unique(labels[pred])] = True
  dsc = np.zeros(len(radii))
  for i in np.flatnonzero(hit[1:]):
    lesion = labels == i + 1
    touching = np.setdiff1d(np.unique(pred_labels[lesion]), [0])
    dsc[i] = seg_metrics.dice(np.isin(pred_labels, touching), lesion)
  out = {}
  for lo, hi in itertools.pairwise(bins):
    inside = (radii >= lo) & (radii < hi)
    out[bin_name(lo, hi)] = {"n": int(inside.sum()), "detected": int(hit[1:][inside].sum()),
                             "dsc_sum": float(dsc[inside].sum())}
  return out


def sum_detections(per_scan: Sequence[Mapping[str, Mapping[str, float]]]) -> dict:
  """Adds `detection_by_radius` results over scans: {bin: {'n', 'detected', 'sensitivity',
  'dsc'}} (sensitivity and mean lesion DSC are NaN for an empty bin)."""
  total: dict[str, dict] = {}
  for scan in per_scan:
    for name, d in scan.items():
      t = total.setdefault(name, {"n": 0, "detected": 0, "dsc_sum": 0.0})
      for k in t:
        t[k] += d[k]
  for t in total.values():
    t["sensitivity"] = t["detected"] / t["n"] if t["n"] else float("nan")
    t["dsc"] = t.pop("dsc_sum") / t["n"] if t["n"] else float("nan")
  return total
