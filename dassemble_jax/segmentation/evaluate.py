"""Held-out evaluation of a Universal Model: sliding window, DSC/NSD per class and source, plots.

Held-out cases are converted records (`ct.convert`): image and bitmask label in the model grid
(RAS, model spacing), so prediction and ground truth compare voxel for voxel. Per case:
sliding-window probabilities -> threshold -> post-processing -> DSC and NSD for every class the
case's source annotates AND the model was trained on (others NaN, skipped in every mean) -> scan
-level tumor detection. Results: a table on stdout and `eval.json` in the workdir.

Also here: `Validator` (the cheap mean-DSC score that picks the best checkpoint during
training), `load_model` (a training folder's best checkpoint, else its latest, as a
`predict.LoadedModel`) and `detection_by_radius` (lesion-level sensitivity per tumor radius bin).

`overlay_png` draws an axial slice of a few held-out cases: CT, ground truth, and each model's
prediction (matplotlib, Agg backend: no display needed).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dassemble_jax.ct import taxonomy
from dassemble_jax.data import arrayrecord_io
from dassemble_jax.segmentation import seg_metrics
from dassemble_jax.segmentation import inference as seg_predict

CLASS_NAMES = [c.name for c in taxonomy.CLASSES]


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
            label=taxonomy.unpack_bits(record["label"]).astype(bool),
            annotated=record["annotated"].astype(bool), spacing=record["spacing"],
            affine=record["affine"]))
  if not cases:
    raise ValueError(f"no held-out cases in {list(test_dirs)}")
  return cases


# ------------------------------------------------------------------------------------------------
# The model as a sliding-window apply function.

def _apply(eval_def, dtype, variables, windows):
  """variables = (params, batch_stats, table); windows (n, d, h, w, 1) -> logits (n, ..., 32)."""
  params, batch_stats, table = variables
  model = nnx.merge(eval_def, params, batch_stats)
  return model(windows.astype(dtype), table).astype(jnp.float32)


@functools.lru_cache(maxsize=8)
def apply_fn_for(eval_def, dtype_name: str):
  """One (hashable) apply function per model graph, so every volume reuses the compilation."""
  return functools.partial(_apply, eval_def, jnp.dtype(dtype_name))


def host_variables(state: Mapping[str, Any], table: np.ndarray, device=None):
  """(params, batch_stats, table) on one device: sliding-window runs on a single device."""
  device = device or jax.devices()[0]
  return jax.device_put((jax.device_get(state["params"]), jax.device_get(state["batch_stats"]),
                         np.asarray(table, np.float32)), device)


# ------------------------------------------------------------------------------------------------
# Metrics.

def evaluate_cases(apply_fn, variables, cases: Sequence[HeldOutCase], *, window, overlap=0.5,
                   sw_batch_size=4, threshold=0.5, postprocess=True, nsd_tolerance_mm=2.0,
                   trained_classes: np.ndarray | None = None) -> dict:
  """Predicts every case and scores it. Returns {'summary', 'detection', 'cases', 'masks',
  'seconds_per_case'} (masks: {case name: (X, Y, Z, 32) bool})."""
  trained = (np.ones(taxonomy.NUM_CLASSES, bool) if trained_classes is None
             else np.asarray(trained_classes, bool))
  # A class the model never saw a label of is not predicted (threshold above any probability).
  thresholds = np.where(trained, float(threshold), 2.0).astype(np.float32)
  per_case, masks, det_pairs = [], {}, {}
  start = time.perf_counter()
  for case in cases:
    pred = seg_predict.predict_volume(apply_fn, case.image, params=variables, window=window,
                                      overlap=overlap, sw_batch_size=sw_batch_size,
                                      thresholds=thresholds, affine=case.affine,
                                      postprocess=postprocess)
    known = case.annotated & trained
    m = seg_metrics.case_metrics(pred, case.label, known, case.spacing, nsd_tolerance_mm)
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


def trained_classes(config) -> np.ndarray:
  """(32,) bool: classes the training config teaches: its sources' classes, plus liver tumors
  when synthetic tumors are inserted into healthy livers (synth/training.py), plus the classes
  of the run it was fine-tuned from (`init_from`)."""
  mask = trained_class_mask(list(config.data.shard_dirs))
  from dassemble_jax.synth import training as synth_training
  if synth_training.enabled(config):
    mask[synth_training.LIVER_TUMOR - 1] = True
  if config.get("init_from"):
    mask |= run_trained_classes(str(config.init_from))
  return mask


def run_trained_classes(run_dir: str) -> np.ndarray:
  """(32,) bool: the classes a training folder's model was taught (its trained_classes.json)."""
  from dassemble_jax.segmentation import train_loop as seg_train
  path = os.path.join(run_dir, seg_train.TRAINED_CLASSES_FILE)
  try:
    with open(path) as f:
      return taxonomy.annotated_vector(json.load(f)).astype(bool)
  except (OSError, ValueError) as e:
    raise ValueError(f"cannot read {path} ({e}); is it a Universal Model training folder "
                     "(DIR/runs/<model>)?") from e


def trained_class_mask(source_dirs: Sequence[str]) -> np.ndarray:
  """(32,) bool: the classes annotated by any training source (what a model can have learned)."""
  ids = set()
  for d in source_dirs:
    manifest = arrayrecord_io.read_manifest(d)
    for name in manifest["sources"]:
      ids |= set(manifest["known_classes"][name])
  return taxonomy.annotated_vector(sorted(ids)).astype(bool)


def evaluate_state(config, trained: Mapping[str, Any], test_dirs: Sequence[str]) -> dict:
  """Evaluates the state returned by `train.train` (its best validated state when it has one)
  on the held-out folders. `trained['classes']`, when present, names the classes to score
  ((32,) bool); otherwise they follow from the config (`trained_classes`)."""
  comp = trained["compiled"]
  apply_fn = apply_fn_for(comp.eval_def, str(jnp.dtype(config.compute_dtype)))
  variables = host_variables(trained.get("eval_state", trained["state"]), trained["table"])
  e = config.eval
  return evaluate_cases(apply_fn, variables, load_cases(test_dirs),
                        window=(int(config.crop_size),) * 3, overlap=float(e.overlap),
                        sw_batch_size=int(e.sw_batch_size), threshold=float(e.threshold),
                        postprocess=bool(e.postprocess),
                        nsd_tolerance_mm=float(e.nsd_tolerance_mm),
                        trained_classes=(trained["classes"] if "classes" in trained
                                         else trained_classes(config)))


# ------------------------------------------------------------------------------------------------
# Validation during training: picks the best checkpoint.

class Validator:
  """Mean DSC of a train state on validation cases, cheap enough to run every `eval_every` steps:
  no post-processing, no NSD. The score is the mean over every (case, class) pair the case
  annotates and the model is trained on (NaN when there is none)."""

  def __init__(self, config, comp, table, cases: Sequence[HeldOutCase]):
    self.cases = list(cases)
    self.apply_fn = apply_fn_for(comp.eval_def, str(jnp.dtype(config.compute_dtype)))
    self.table = table
    self.trained = trained_classes(config)
    self.thresholds = np.where(self.trained, float(config.eval.threshold), 2.0).astype(np.float32)
    self.kwargs = dict(window=(int(config.crop_size),) * 3, overlap=float(config.eval.overlap),
                       sw_batch_size=int(config.eval.sw_batch_size))

  @classmethod
  def for_config(cls, config, comp, table, source_names: Sequence[str]) -> "Validator | None":
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
    variables = host_variables(state, self.table)
    scores = []
    for case in self.cases:
      pred = seg_predict.predict_volume(self.apply_fn, case.image, params=variables,
                                        thresholds=self.thresholds, postprocess=False,
                                        **self.kwargs)
      for k in np.flatnonzero(case.annotated & self.trained):
        scores.append(seg_metrics.dice(pred[..., k], case.label[..., k]))
    scores = np.asarray(scores, np.float64)
    return float(np.nanmean(scores)) if np.isfinite(scores).any() else float("nan")


def load_model(workdir: str, checkpoint: str = "best"):
  """`predict.load_model`: the best checkpoint (or the latest when there is no best one);
  checkpoint='latest' keeps the latest. Raises predict.ModelDirError naming the folder."""
  from dassemble_jax import predict as predict_cli
  return predict_cli.load_model(workdir, checkpoint)


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
  for lo, hi in zip(bins[:-1], bins[1:]):
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


def write_results(workdir: str, results: Mapping[str, Any], title: str = "") -> str:
  """Prints the DSC/NSD tables and detection; writes workdir/eval.json. Returns the text."""
  text = [f"== held-out evaluation {title} ({results['summary']['all']['n_cases']} cases, "
          f"{results['seconds_per_case']:.2f} s/case) ==",
          seg_metrics.format_table(results["summary"], "dsc"),
          seg_metrics.format_table(results["summary"], "nsd")]
  for lesion, d in sorted(results["detection"].items()):
    text.append(f"detection {lesion}: sensitivity {d['sensitivity']:.2f} specificity "
                f"{d['specificity']:.2f} (tp {d['tp']} fp {d['fp']} tn {d['tn']} fn {d['fn']})")
  text = "\n".join(text)
  if jax.process_index() == 0:
    print(text, flush=True)
    path = os.path.join(workdir, "eval.json")
    payload = seg_metrics.to_jsonable({k: v for k, v in results.items() if k != "masks"})
    with open(path + ".tmp", "w") as f:
      json.dump(payload, f, indent=1)
    os.replace(path + ".tmp", path)
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


def overlay_png(path: str, cases: Sequence[HeldOutCase],
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
  tmp = path + ".tmp.png"
  fig.savefig(tmp, dpi=90)
  plt.close(fig)
  os.replace(tmp, path)
  return path
