"""Do the labels of other classes help the classes of interest? Partial vs full labels, paired.

  python -m dassemble_jax.main --config=configs/seg_partial_vs_full.py --workdir=DIR

The segmentation analog of the label-assembly paper's "Cityscapes-five vs Cityscapes", on the
phantom (whose hidden truth labels every organ of every case, segmentation/phantom_truth.py).
Per seed of `partial_full.seeds`:
1. the phantom source `partial_full.source` is generated and converted (training and held-out
   cases; the seed draws both, so each seed has its own images) into DIR/seed_<s>/data;
2. 'full': the training cases with every class the phantom paints labelled (the hidden truth);
   'partial': the same records with only `partial_full.classes` labelled (the other classes
   unknown: out of the loss, never background). Everything else is the same record: image, crop
   centres, order; the two models share the seed (initialisation, crops, augmentation) and
   `num_steps`, so they differ only in which labels they saw;
3. both are trained (DIR/seed_<s>/runs/{partial,full}; the latest state is evaluated: a
   validation set would pick each model's checkpoint by a different class set) and evaluated on
   the held-out cases with full truth; DIR/seed_<s>/result.json keeps the DSC of every class of
   interest (a seed whose result.json exists is read, not rerun).
DIR/partial_full.{txt,json}: per class of interest and for their mean, full - partial paired by
seed (segmentation/seed_study.py: mean difference, 95% interval, paired t-test and Wilcoxon p,
verdict at p < 0.05).
"""

from __future__ import annotations

import json
import math
import os
import time

import numpy as np

from dassemble_jax import atomic
from dassemble_jax.ct import taxonomy
from dassemble_jax.data import arrayrecord_io
from dassemble_jax.segmentation import (
  assembly_data,
  phantom_truth,
  reports,
  seed_study,
  train_loop,
)

RESULT_FILE = "result.json"
TABLE_FILE = "partial_full.json"


def class_ids(names) -> list[int]:
  """1-based taxonomy ids of class names (an unknown name is a ValueError naming it)."""
  unknown = [n for n in names if n not in taxonomy.BY_NAME]
  if unknown:
    raise ValueError(f"unknown class name(s) {unknown}; the taxonomy's: "
                     f"{[c.name for c in taxonomy.CLASSES]}")
  return sorted(taxonomy.BY_NAME[n].id for n in names)


def restrict_shards(src_dir, out_dir, names) -> dict:
  """A copy of a converted folder whose records annotate only the classes `names` (their label
  bits kept, every other bit cleared and its class unknown). Returns the new manifest."""
  ids = class_ids(names)
  keep = np.uint32(0)
  for i in ids:
    keep |= taxonomy.bit(i)
  annotated = taxonomy.annotated_vector(ids).astype(np.uint8)
  manifest = arrayrecord_io.read_manifest(src_dir)
  source = manifest["sources"][0]
  extra = {k: v for k, v in manifest.items() if k not in ("format", "splits", "fields")}
  extra.update(annotated={source: ids}, optional={source: []}, known_classes={source: ids},
               description=f"{manifest.get('description', '')}; only {', '.join(names)}")
  with arrayrecord_io.DatasetWriter(out_dir, shards_per_split=1, overwrite=True) as writer:
    for split in manifest["cases"]:
      for record in arrayrecord_io.read_records(src_dir, split):
        writer.add(split, {**record, "label": np.asarray(record["label"]) & keep,
                           "annotated": annotated & np.asarray(record["annotated"], np.uint8)})
    writer.close(extra)
  return arrayrecord_io.read_manifest(out_dir)


def seed_data(config, seed: int, data_root: str) -> dict[str, str]:
  """The seed's folders: {'full', 'partial', 'test'} (the held-out cases with full truth)."""
  pf = config.partial_full
  cfg = assembly_data.with_fields(config, seed=seed, **{
      "data.phantom_sources": (pf.source,), "data.phantom_val_cases": 0})
  data = assembly_data.phantom_data(cfg, data_root)
  d = cfg.data
  kw = {"shape": tuple(d.phantom_shape), "native_spacing": tuple(d.phantom_native_spacing)}
  out = {"full": os.path.join(data_root, "full", pf.source),
         "partial": os.path.join(data_root, "partial", pf.source),
         "test": os.path.join(data_root, "test_full", pf.source)}
  if not _converted(out["full"]):
    phantom_truth.write_truth_shards(data["train"][pf.source], out["full"], seed=seed, **kw)
  if not _converted(out["partial"]):
    restrict_shards(out["full"], out["partial"], tuple(pf.classes))
  if not _converted(out["test"]):
    phantom_truth.write_truth_shards(data["test"][pf.source], out["test"],
                                     seed=seed + assembly_data.TEST_SEED_OFFSET, **kw)
  return out


def _finite(v) -> bool:
  return v is not None and math.isfinite(float(v))


def _converted(folder) -> bool:
  try:
    arrayrecord_io.read_manifest(folder)
    return True
  except Exception:  # noqa: BLE001 - missing or half-written: write it again
    return False


def run_seed(config, seed: int, seed_dir: str) -> dict:
  """Trains 'partial' and 'full' for one seed; {'partial'|'full': {class: held-out DSC}}."""
  os.makedirs(seed_dir, exist_ok=True)
  dirs = seed_data(config, seed, os.path.join(seed_dir, "data"))
  out = {"seed": seed, "settings": settings(config)}
  for arm in ("partial", "full"):
    print(f"\n=== seed {seed}, model '{arm}': {config.num_steps} steps ===", flush=True)
    cfg = assembly_data.with_fields(config, seed=seed, eval_every=0, **{
        "data.shard_dirs": (dirs[arm],), "data.test_dirs": (dirs["test"],),
        "data.val_dirs": ()})
    res = train_loop.train_and_evaluate(cfg, os.path.join(seed_dir, "runs", arm))
    res.pop("masks", None)
    dsc = res["eval"]["summary"]["all"]["dsc"]
    out[arm] = {c: dsc[c] for c in config.partial_full.classes}
    out[f"{arm}_all_classes"] = {c: v for c, v in dsc.items() if v is not None}
    out[f"{arm}_train_seconds"] = res["train_seconds"]
  atomic.write_json(os.path.join(seed_dir, RESULT_FILE), out, indent=1)
  return out


def settings(config) -> dict:
  """What a seed's numbers depend on besides the seed (a stored seed must match it)."""
  d, pf = config.data, config.partial_full
  return {"source": pf.source, "classes": list(pf.classes), "num_steps": int(config.num_steps),
          "train_cases": int(d.phantom_train_cases), "test_cases": int(d.phantom_test_cases),
          "phantom_shape": list(d.phantom_shape), "spacing": float(d.spacing),
          "crop_size": int(config.crop_size), "batch_size": int(config.batch_size),
          "base_channels": int(config.model.base_channels),
          "class_code": config.model.class_code, "learning_rate": float(config.learning_rate)}


def run(config, workdir: str) -> dict:
  """Every seed (see the module docstring), then the paired table."""
  pf = config.partial_full
  seeds = [int(s) for s in pf.seeds]
  if len(seeds) < 2 or len(set(seeds)) != len(seeds):
    raise ValueError(f"partial_full.seeds must be at least two distinct seeds, got {pf.seeds}")
  class_ids(pf.classes)
  t0 = time.perf_counter()
  os.makedirs(workdir, exist_ok=True)
  # One class-embedding table for every run, computed once at the top of the workdir.
  if config.model.class_code == "text" and not config.model.embedding_table:
    train_loop.class_table(config, workdir)
    config = assembly_data.with_fields(config, **{
        "model.embedding_table": os.path.join(workdir, "class_embeddings.npy")})
  per_seed = {}
  for seed in seeds:
    seed_dir = os.path.join(workdir, f"seed_{seed}")
    path = os.path.join(seed_dir, RESULT_FILE)
    if os.path.exists(path):
      print(f"\n##### seed {seed}: read {path} (already run)", flush=True)
      with open(path) as f:
        per_seed[seed] = json.load(f)
      if per_seed[seed].get("settings") != settings(config):
        raise ValueError(f"{path}: made with other settings ({per_seed[seed].get('settings')}) "
                         "than this run's; use another workdir or delete that seed's folder")
    else:
      print(f"\n##### seed {seed}: {seed_dir}", flush=True)
      per_seed[seed] = run_seed(config, seed, seed_dir)
  table = seed_study.partial_full_table(per_seed, tuple(pf.classes))
  # The classes 'full' was scored on (a finite held-out DSC on every seed).
  table.update(settings=settings(config), full_classes=sorted(
      c for c in per_seed[seeds[0]]["full_all_classes"]
      if all(_finite(r["full_all_classes"].get(c)) for r in per_seed.values())))
  print("\n" + table["text"], flush=True)
  reports.write_text(os.path.join(workdir, "partial_full.txt"), table["text"] + "\n")
  reports.write_summary(os.path.join(workdir, TABLE_FILE), table)
  print(f"partial vs full done in {time.perf_counter() - t0:.0f} s; results in {workdir}",
        flush=True)
  return table
