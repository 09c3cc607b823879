"""Robustness benchmark: a trained segmenter on synthetic tumors sweeping one property at a time.

  python -m dassemble_jax.jobs.robustness --workdir=DIR/runs/synthetic --out=/tmp/robust \
      [--property size --property decrement] [--values 3,5,8] [--cases 4] \
      [--ct CT.nii.gz --seg SEG.nii.gz --liver-label 5] [--set EXISTING_SWEEP_DIR] \
      [--checkpoint best|latest]

For each property, `synth.sweep` writes the evaluation set (OUT/sets/<property>/: NIfTI CT +
label 0/1/2 per case, index.json) into the real CT of the totalsegmentator example (or --ct/--seg),
or `--set` names a folder a sweep already wrote. The model of `--workdir` (a segmenter training
folder: config.json, checkpoints/; its best validated checkpoint by default) predicts every case
through the same path as `dassemble_jax.predict` (RAS, model spacing, sliding window,
post-processing, back to the file's grid); its liver-tumor channel is scored against the
synthetic label per property value: lesion-level sensitivity (a tumor component counts as found
when the prediction overlaps it), mean tumor DSC per case, lesion DSC, scan-level detection.
Writes OUT/robustness.json and OUT/robustness.png (one panel per property; matplotlib Agg).
A missing or unreadable checkpoint, index.json or case file stops with an error naming it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import sys
import time
from collections.abc import Sequence

import numpy as np

from dassemble_jax import atomic, cli
from dassemble_jax.ct import nifti_io, scan_input, taxonomy
from dassemble_jax.jobs import synth_sweep
from dassemble_jax.segmentation import evaluate, inference, seg_metrics, trained_run
from dassemble_jax.synth import realct


class RobustnessError(ValueError):
  """A checkpoint, evaluation set or case file that cannot be used (the message names it)."""


# ------------------------------------------------------------------------------------------------
# Inputs.

def load_trained(workdir: str, checkpoint: str = "best"):
  """The model of a training folder (trained_run.LoadedModel); RobustnessError naming what
  failed."""
  if not os.path.isdir(workdir):
    raise RobustnessError(f"{workdir}: no such training folder")
  try:
    return trained_run.load_model(workdir, checkpoint)
  except trained_run.ModelDirError as e:
    raise RobustnessError(str(e)) from e
  except Exception as e:
    raise RobustnessError(f"{os.path.join(workdir, 'checkpoints')}: cannot restore the model "
                          f"({type(e).__name__}: {e})") from e


def read_index(set_dir: str | os.PathLike) -> dict:
  """index.json of a sweep folder, checked for the fields used here."""
  path = pathlib.Path(set_dir) / "index.json"
  if not path.is_file():
    raise RobustnessError(f"{path}: no evaluation set index (write one with "
                          "`python -m dassemble_jax.jobs.synth_sweep` or drop --set)")
  try:
    index = json.loads(path.read_text())
    cases = index["cases"]
    for c in cases:
      c["files"]["ct"], c["files"]["label"], c["value"]
  except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as e:
    raise RobustnessError(f"{path}: not a sweep index ({type(e).__name__}: {e})") from e
  if not cases:
    raise RobustnessError(f"{path}: the evaluation set has no cases")
  return index


def parse_values(prop: str, text: str | None) -> list:
  """`synth_sweep.parse_values`, with a bad value reported as a RobustnessError."""
  try:
    return synth_sweep.parse_values(prop, text)
  except ValueError as e:
    raise RobustnessError(str(e)) from e


def generate_set(out: pathlib.Path, prop: str, values, cases: int, seed: int, vol) -> dict:
  return synth_sweep.run(out, prop, values, cases, seed, vol)


# ------------------------------------------------------------------------------------------------
# Scoring.

def predict_tumor(loaded, ct_path: pathlib.Path) -> np.ndarray:
  """The model's liver-tumor mask (X, Y, Z) bool on the file's own grid."""
  volume, affine, _ = scan_input.load_for_prediction(ct_path)
  original = inference.Grid(tuple(volume.shape), affine)
  model_volume, grid = inference.to_model_grid(volume, affine, loaded.spec.spacing)
  masks = inference.predict_volume(loaded.apply_fn, model_volume, params=loaded.variables,
                                   affine=grid.affine, **loaded.spec.volume_kwargs())
  tumor = masks[..., taxonomy.class_by_name("liver_tumor").id - 1]
  return inference.to_original_grid(tumor.astype(np.uint8), grid, original).astype(bool)


def score_case(pred: np.ndarray, label: np.ndarray, spacing) -> dict:
  """One case: tumor DSC, lesions found (whole-range bin), lesion DSC sum, scan detection."""
  gt = label == 2
  det = evaluate.detection_by_radius(pred, gt, spacing, (0.0, math.inf))[">0mm"]
  return {"dsc": seg_metrics.dice(pred, gt), "n": det["n"], "detected": det["detected"],
          "dsc_sum": det["dsc_sum"], "scan_positive": bool(gt.any()),
          "scan_detected": bool(pred.any() and gt.any())}


def summarise(values: Sequence, per_case: Sequence[dict]) -> list[dict]:
  """Per property value: sensitivity (lesions found / lesions), mean case DSC, lesion DSC."""
  rows = []
  for v in values:
    cs = [c for c in per_case if c["value"] == v]
    n = sum(c["n"] for c in cs)
    det = sum(c["detected"] for c in cs)
    positive = [c for c in cs if c["scan_positive"]]
    rows.append({"value": v, "cases": len(cs), "lesions": n, "detected": det,
                 "sensitivity": det / n if n else math.nan,
                 "dsc": float(np.mean([c["dsc"] for c in positive])) if positive else math.nan,
                 "lesion_dsc": sum(c["dsc_sum"] for c in cs) / n if n else math.nan,
                 "scan_sensitivity": (float(np.mean([c["scan_detected"] for c in positive]))
                                      if positive else math.nan)})
  return rows


def evaluate_set(loaded, set_dir: pathlib.Path, index: dict) -> dict:
  """Predicts and scores every case of one sweep folder."""
  per_case = []
  for c in index["cases"]:
    ct_path = set_dir / c["files"]["ct"]
    label_path = set_dir / c["files"]["label"]
    try:
      pred = predict_tumor(loaded, ct_path)
      label, affine = nifti_io.load(label_path)
    except (nifti_io.CaseError, FileNotFoundError) as e:
      raise RobustnessError(str(e) if str(ct_path) in str(e) or str(label_path) in str(e)
                            else f"{ct_path}: {e}") from e
    if label.shape != pred.shape:
      raise RobustnessError(f"{label_path}: label shape {label.shape} differs from its CT "
                            f"{pred.shape}")
    s = score_case(pred, np.rint(label).astype(np.int64), nifti_io.voxel_sizes(affine))
    per_case.append({"case": c["case"], "value": c["value"], **s})
  values = list(dict.fromkeys(c["value"] for c in index["cases"]))
  return {"property": index.get("property", set_dir.name), "set": str(set_dir),
          "values": values, "per_value": summarise(values, per_case), "cases": per_case}


# ------------------------------------------------------------------------------------------------
# Outputs.

def plot(path: pathlib.Path, results: Sequence[dict]) -> pathlib.Path:
  """One panel per property: sensitivity, tumor DSC and lesion DSC against the value."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, len(results), figsize=(4.2 * len(results), 3.4), squeeze=False)
  for ax, r in zip(axes[0], results):
    labels = [str(row["value"]) for row in r["per_value"]]
    x = np.arange(len(labels))
    for key, style in (("sensitivity", "o-"), ("dsc", "s--"), ("lesion_dsc", "^:")):
      ax.plot(x, [row[key] for row in r["per_value"]], style, label=key)
    ax.set_xticks(x, labels, rotation=30, fontsize=8)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel(r["property"])
    ax.set_title(f"{r['property']} ({r['per_value'][0]['cases']} cases/value)", fontsize=9)
    ax.grid(alpha=0.3)
  axes[0, 0].legend(fontsize=7)
  fig.tight_layout()
  with atomic.temporary_path(path) as tmp:
    fig.savefig(tmp, dpi=90)
  plt.close(fig)
  return path


def format_table(results: Sequence[dict]) -> str:
  f = lambda v: "    -" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"
  lines = []
  for r in results:
    lines.append(f"[{r['property']}]  value: sensitivity (found/lesions)  tumor DSC  lesion DSC")
    for row in r["per_value"]:
      lines.append(f"  {row['value']!s:>12}: {f(row['sensitivity'])} "
                   f"({row['detected']}/{row['lesions']})  {f(row['dsc'])}  "
                   f"{f(row['lesion_dsc'])}")
  return "\n".join(lines)


def run(workdir: str, out: str | os.PathLike, *, properties: Sequence[str] = ("size",),
        values: str | None = None, cases: int = 4, seed: int = 0, vol=None,
        sets: Sequence[str] = (), checkpoint: str = "best") -> dict:
  """The benchmark (see the module docstring); returns the JSON-able results."""
  t0 = time.perf_counter()
  out = pathlib.Path(out)
  out.mkdir(parents=True, exist_ok=True)
  loaded = load_trained(workdir, checkpoint)
  folders = []
  for s in sets:
    folders.append((pathlib.Path(s), read_index(s)))
  if not sets:
    if vol is None:
      vol = realct.load_totalseg_example()
    for prop in properties:
      if prop not in synth_sweep.PROPERTIES:
        raise RobustnessError(f"unknown property {prop!r}; choose from {synth_sweep.PROPERTIES}")
      set_dir = out / "sets" / prop
      generate_set(set_dir, prop, parse_values(prop, values), cases, seed, vol)
      folders.append((set_dir, read_index(set_dir)))
  results = [evaluate_set(loaded, d, index) for d, index in folders]
  summary = {"workdir": str(workdir), "checkpoint_step": loaded.step, "checkpoint": checkpoint,
             "results": results, "seconds": time.perf_counter() - t0}
  atomic.write_json(out / "robustness.json", seg_metrics.to_jsonable(summary), indent=1)
  plot(out / "robustness.png", results)
  print(format_table(results), flush=True)
  print(f"robustness: {out / 'robustness.json'}, {out / 'robustness.png'} "
        f"({summary['seconds']:.0f} s)", flush=True)
  return summary


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--workdir", required=True, help="the model's training folder (runs/<model>)")
  p.add_argument("--out", required=True, type=pathlib.Path)
  p.add_argument("--property", action="append", default=None,
                 help="property to sweep (repeatable; default size)")
  p.add_argument("--values", help="comma-separated values for a single --property")
  p.add_argument("--cases", type=int, default=4, help="cases per value")
  p.add_argument("--seed", type=int, default=0)
  realct.add_volume_arguments(p)
  p.add_argument("--set", action="append", default=[],
                 help="an existing sweep folder (index.json) instead of generating one")
  p.add_argument("--checkpoint", choices=("best", "latest"), default="best")
  cli.add_debug_argument(p)
  args = p.parse_args(argv)
  props = [q for item in (args.property or ["size"]) for q in item.split(",") if q]
  if args.values and len(props) > 1:
    p.error("--values needs exactly one --property")
  realct.check_volume_arguments(p, args)
  # Bad input (a model folder, a sweep index, a scan) and output failures (an --out that is a
  # file or unwritable, a full disk: OSError) are one line, exit status 2.
  return cli.run_main(lambda _: _run_cli(args, props), output=args.out, exit_code=2,
                      user_errors=(RobustnessError, realct.LiverMaskError, nifti_io.CaseError),
                      debug=args.debug)


def _run_cli(args, props) -> int:
  cli.check_output_folder(args.out)
  vol = None
  if args.ct and not args.set:
    vol = realct.load_files(args.ct, args.seg, args.liver_label)
  run(args.workdir, args.out, properties=props, values=args.values, cases=args.cases,
      seed=args.seed, vol=vol, sets=args.set, checkpoint=args.checkpoint)
  return 0


if __name__ == "__main__":
  from absl import logging as absl_logging
  absl_logging.set_verbosity(absl_logging.WARNING)  # Orbax logs every restore at INFO
  sys.exit(main())
