"""The label-free liver tumor job: synthetic-tumor training vs real-tumor training.

  python -m dassemble_jax.main --config=configs/liver_synthetic.py --workdir=DIR

`run(config, workdir)`:
1. data: the phantom's healthy-liver and real-tumor (LiTS-like) sources, converted into DIR/data
   (training, validation and held-out cases), or the converted folders of the config;
2. model 'synthetic' (DIR/runs/synthetic): trained on the healthy sources only, tumors inserted
   on the device in the train step (synth/training.py); model 'real' (DIR/runs/real): the same
   model, budget and compiled step on the real-tumor source (not eligible for synthesis, so it
   sees real tumors only). Both keep their best validated checkpoint;
3. both evaluated on the held-out real-tumor scans (segmentation/evaluate.py: DSC/NSD tables,
   DIR/runs/<model>/eval.json) plus lesion-level sensitivity and DSC per radius bin, and on the
   held-out healthy livers (scan-level specificity: no tumor predicted);
4. the comparison table on stdout and DIR/liver_synthetic.txt, everything in
   DIR/liver_synthetic.json.
"""

from __future__ import annotations

import itertools
import math
import os
import time

import jax
import numpy as np

from dassemble_jax.ct import taxonomy
from dassemble_jax.segmentation import assembly_data, evaluate, reports, seg_metrics, train_loop

TUMOR = taxonomy.class_by_name("liver_tumor").id
LIVER = taxonomy.class_by_name("liver").id


def _data(config, workdir: str) -> dict:
  """{'healthy', 'real', 'test', 'healthy_test', 'val'}: lists of converted folders."""
  d = config.data
  if d.shard_dirs:
    out = {"healthy": list(d.shard_dirs), "real": list(d.real_shard_dirs),
           "test": list(d.test_dirs), "healthy_test": list(d.healthy_test_dirs),
           "val": list(d.val_dirs)}
  else:
    data = assembly_data.phantom_data(config, os.path.join(workdir, "data"))
    pick = lambda kind, names: [str(data[kind][n]) for n in names]
    out = {"healthy": pick("train", d.healthy_sources), "real": pick("train", d.real_sources),
           "test": list(d.test_dirs) or pick("test", d.real_sources),
           "healthy_test": list(d.healthy_test_dirs) or pick("test", d.healthy_sources),
           "val": [str(p) for p in data["val"].values()]}
  if not out["healthy"]:
    raise ValueError("no healthy-liver training source: set data.shard_dirs or "
                     "data.healthy_sources")
  if not out["test"]:
    raise ValueError("no held-out scans with real tumors: set data.test_dirs or "
                     "data.real_sources")
  return out


def radius_bins(config) -> tuple[float, ...]:
  edges = tuple(float(e) for e in config.eval.get("radius_edges_mm", (5.0, 10.0)))
  return (0.0,) + edges + (math.inf,)


def lesion_report(config, cases, masks) -> dict:
  """Per-radius-bin lesion detection/DSC over the cases annotating liver tumors, plus scan-level
  sensitivity/specificity and the pooled voxel precision of the tumor prediction (a model that
  paints the whole liver as tumor detects every lesion: the precision shows it)."""
  bins = radius_bins(config)
  per_scan, scans, overlap, predicted = [], [], 0, 0
  for case in cases:
    if not case.annotated[TUMOR - 1]:
      continue
    pred, gt = masks[case.name][..., TUMOR - 1], case.label[..., TUMOR - 1]
    per_scan.append(evaluate.detection_by_radius(pred, gt, case.spacing, bins))
    scans.append((bool(pred.any()), bool(gt.any())))
    overlap += int(np.logical_and(pred, gt).sum())
    predicted += int(pred.sum())
  return {"by_radius": evaluate.sum_detections(per_scan),
          "scan": seg_metrics.detection_stats(scans), "n_scans": len(per_scan),
          "tumor_precision": overlap / predicted if predicted else math.nan}


def healthy_specificity(masks) -> dict:
  """Held-out healthy livers: the fraction with no tumor voxel predicted."""
  clean = [not m[..., TUMOR - 1].any() for m in masks.values()]
  return {"n": len(clean), "specificity": float(np.mean(clean)) if clean else math.nan}


def train_and_report(config, workdir: str, name: str) -> dict:
  """Trains one model, evaluates it on the real-tumor and healthy held-out scans."""
  model_dir = os.path.join(workdir, "runs", name)
  print(f"\n=== model '{name}': {len(config.data.shard_dirs)} source(s), "
        f"{config.num_steps} steps ===", flush=True)
  trained = train_loop.train(config, model_dir)
  results = evaluate.evaluate_state(config, trained, list(config.data.test_dirs))
  reports.write_results(model_dir, results, title=name)
  cases = evaluate.load_cases(list(config.data.test_dirs))
  report = lesion_report(config, cases, results["masks"])
  dsc = results["summary"]["all"]["dsc"]
  report.update(liver_dsc=dsc["liver"], tumor_dsc=dsc["liver_tumor"],
                best_step=trained["best_step"], train_seconds=trained["seconds"],
                step=trained["step"])
  if config.data.healthy_test_dirs:
    healthy = evaluate.evaluate_state(config, trained, list(config.data.healthy_test_dirs))
    report["healthy"] = healthy_specificity(healthy["masks"])
  return report


def format_table(by_model: dict, bins) -> str:
  names = [evaluate.bin_name(lo, hi) for lo, hi in itertools.pairwise(bins)]
  cell = lambda v: "    -" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"
  head = (f"{'model':<10} {'liver DSC':>9} {'tumor DSC':>9} " +
          " ".join(f"{'sens ' + n:>18}" for n in names) +
          f" {'scan sens':>9} {'tumor PPV':>9} {'healthy spec':>12}")
  lines = ["[liver tumors on held-out real-tumor scans: synthetic-only vs real-tumor training]",
           head]
  for model, r in by_model.items():
    bins_txt = []
    for n in names:
      b = r["by_radius"].get(n, {"n": 0, "detected": 0, "sensitivity": math.nan})
      text = f"{cell(b['sensitivity'])} ({b['detected']}/{b['n']})"
      bins_txt.append(f"{text:>18}")
    spec = r.get("healthy", {}).get("specificity", math.nan)
    lines.append(f"{model:<10} {cell(r['liver_dsc']):>9} {cell(r['tumor_dsc']):>9} " +
                 " ".join(bins_txt) + f" {cell(r['scan']['sensitivity']):>9} "
                 f"{cell(r['tumor_precision']):>9} {cell(spec):>12}")
  lines.append("lesion DSC by radius: " + "; ".join(
      f"{m} " + ", ".join(f"{n} {cell(r['by_radius'].get(n, {}).get('dsc', math.nan))}"
                          for n in names) for m, r in by_model.items()))
  return "\n".join(lines)


def run(config, workdir: str) -> dict:
  """The whole job (see the module docstring); returns the JSON-able summary."""
  t0 = time.perf_counter()
  os.makedirs(workdir, exist_ok=True)
  data = _data(config, workdir)
  print(f"data ready in {time.perf_counter() - t0:.1f} s", flush=True)
  models = {"synthetic": {"data.shard_dirs": tuple(data["healthy"]), "synth.enabled": True}}
  if data["real"]:
    # The real-tumor sources are not eligible (they annotate tumors): no synthetic tumor is
    # inserted, but the model runs the synthetic model's compiled step (one compile, not two).
    models["real"] = {"data.shard_dirs": tuple(data["real"]), "synth.enabled": True,
                      "synth.sources": (), "synth.none_eligible_ok": True}
  by_model = {}
  for name, fields in models.items():
    cfg = assembly_data.with_fields(config, **fields, **{
        "data.test_dirs": tuple(data["test"]), "data.val_dirs": tuple(data["val"]),
        "data.healthy_test_dirs": tuple(data["healthy_test"])})
    by_model[name] = train_and_report(cfg, workdir, name)
  text = format_table(by_model, radius_bins(config))
  seconds = time.perf_counter() - t0
  summary = {"models": by_model, "test_dirs": data["test"], "seconds": seconds,
             "radius_bins_mm": [b for b in radius_bins(config) if math.isfinite(b)]}
  if jax.process_index() == 0:
    print("\n" + text + f"\njob done in {seconds:.0f} s; results in {workdir}", flush=True)
  reports.write_text(os.path.join(workdir, "liver_synthetic.txt"), text + "\n")
  reports.write_summary(os.path.join(workdir, "liver_synthetic.json"), summary)
  return summary
