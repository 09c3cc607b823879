"""The Universal Model job: does training on an assembly beat training on each source alone?

  python -m dassemble_jax.main --config=configs/universal.py --workdir=DIR

`run(config, workdir)`:
1. data: the phantom sources are generated and converted into DIR/data once (training cases,
   held-out cases drawn with another seed into DIR/data/test_*, validation cases with a third
   seed into DIR/data/val_*); or the converted real datasets of `config.data.shard_dirs` /
   `test_dirs` / `val_dirs` are used as they are;
2. the class-embedding table is computed once (DIR/class_embeddings.npy) and shared;
3. one model on the assembly of all sources (DIR/runs/assembly) and, with
   `train_single_sources`, one per single source (DIR/runs/<source>), with the same batch and
   schedule; the assembly gets `assembly_steps(config, n)` steps (by default the single-source
   models' steps together: the same total compute); each resumes from its own checkpoints when
   rerun, and keeps the state with the best validation mean DSC (on its own sources' validation
   cases) as its best checkpoint, which the evaluation and the predictions use;
4. every model is evaluated on the same pooled held-out cases, each on the classes it was trained
   on; the comparison table (per-class DSC, assembly vs each single source) is printed and saved
   (DIR/comparison.txt, DIR/comparison.json);
5. NIfTI predictions of the assembly model for the held-out raw scans (DIR/predictions) and a PNG
   of overlays (DIR/overlays.png).
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import time

import jax
import numpy as np

from dassemble_jax.ct import convert, phantom
from dassemble_jax.data import arrayrecord_io
from dassemble_jax.segmentation import evaluate
from dassemble_jax.segmentation import train_loop as seg_train

_TEST_SEED_OFFSET = 1000  # held-out phantom cases: same generator, another seed
_VAL_SEED_OFFSET = 2000   # validation cases (best checkpoint): a third seed


def _converted(folder: pathlib.Path) -> bool:
  try:
    arrayrecord_io.read_manifest(folder)
    return True
  except Exception:  # noqa: BLE001 - missing or half-written: convert again
    return False


def phantom_data(config, data_root) -> dict[str, dict[str, pathlib.Path]]:
  """Generates + converts the phantom sources once;
  {'train'|'test'|'raw_test'|'val': {source: dir}} ('val' empty with phantom_val_cases 0)."""
  d = config.data
  root = pathlib.Path(data_root)
  out = {"train": {}, "test": {}, "raw_test": {}, "val": {}}
  kinds = [("train", d.phantom_train_cases, config.seed),
           ("test", d.phantom_test_cases, config.seed + _TEST_SEED_OFFSET)]
  if int(d.get("phantom_val_cases", 0) or 0) > 0:
    kinds.append(("val", d.phantom_val_cases, config.seed + _VAL_SEED_OFFSET))
  for kind, cases, seed in kinds:
    for name in d.phantom_sources:
      spec = phantom.source_spec(name)
      shards = root / ("shards" if kind == "train" else f"{kind}_shards") / name
      raw = root / ("raw" if kind == "train" else f"{kind}_raw") / name
      if not _converted(shards):
        if jax.process_index() == 0:
          phantom.write_raw_source(name, raw, int(cases), int(seed),
                                   shape=tuple(d.phantom_shape),
                                   spacing=tuple(d.phantom_native_spacing))
          convert.convert_dataset(spec, raw, shards, spacing=float(d.spacing), overwrite=True,
                                  seed=int(seed), progress=False)
        _sync("phantom_" + kind + name)
      out[kind][name] = shards
      if kind == "test":
        out["raw_test"][name] = raw
  return out


def _sync(name: str) -> None:
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)


def with_phantom_data(config, workdir: str):
  """A copy of `config` whose shard_dirs/test_dirs point at the phantom converted in workdir."""
  data = phantom_data(config, os.path.join(workdir, "data"))
  cfg = config.copy_and_resolve_references()
  with cfg.unlocked():
    cfg.data.shard_dirs = tuple(str(p) for p in data["train"].values())
    cfg.data.test_dirs = tuple(str(p) for p in data["test"].values())
    cfg.data.val_dirs = tuple(str(p) for p in data["val"].values())
  return cfg


def with_fields(config, **fields):
  """A resolved copy of `config` with dotted fields replaced ('data.shard_dirs': ...)."""
  cfg = config.copy_and_resolve_references()
  with cfg.unlocked():
    for k, v in fields.items():
      node, *path = k.split(".")
      target = cfg if not path else cfg[node]
      target[path[-1] if path else node] = v
  return cfg


def comparison_table(results: dict[str, dict],
                     title: str = "assembly vs single-source models") -> tuple[str, dict]:
  """Per-class DSC over all held-out cases: one column per model ('-' = class not trained or
  not annotated in the held-out set); the mean row averages each model's evaluated classes."""
  names = list(results)
  per_model = {n: results[n]["eval"]["summary"]["all"]["dsc"] for n in names}
  classes = [c for c in evaluate.CLASS_NAMES
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
    pair = []
    for n in names[1:]:
      shared = [c for c in classes if not math.isnan(_f(per_model[n][c]))]
      a = np.mean([_f(per_model["assembly"][c]) for c in shared]) if shared else math.nan
      s = np.mean([_f(per_model[n][c]) for c in shared]) if shared else math.nan
      pair.append((n, a, s, len(shared)))
      lines.append(f"on {n}'s {len(shared)} classes: assembly {a:.3f} vs {n} {s:.3f}")
  table = {"dsc": per_model, "classes": classes}
  return "\n".join(lines), table


def _f(v) -> float:
  return math.nan if v is None else float(v)


def assembly_steps(config, num_sources: int) -> int:
  """Steps of the assembly model: `assembly_num_steps`, or (0) num_steps x num_sources."""
  n = int(config.get("assembly_num_steps", 0) or 0)
  if n < 0:
    raise ValueError(f"assembly_num_steps must be >= 0, got {n}")
  return n or int(config.num_steps) * max(1, num_sources)


def run(config, workdir: str) -> dict:
  """The whole job (see the module docstring); returns {model: summary} plus the table."""
  t0 = time.perf_counter()
  os.makedirs(workdir, exist_ok=True)
  if config.data.shard_dirs:
    train_dirs = {arrayrecord_io.read_manifest(p)["sources"][0]: p
                  for p in config.data.shard_dirs}
    test_dirs, raw_test = list(config.data.test_dirs), {}
    val_dirs = list(config.data.get("val_dirs", ()) or ())
  else:
    data = phantom_data(config, os.path.join(workdir, "data"))
    train_dirs, test_dirs, raw_test = data["train"], list(data["test"].values()), data["raw_test"]
    val_dirs = list(data["val"].values())
  print(f"data ready in {time.perf_counter() - t0:.1f} s: {len(train_dirs)} sources", flush=True)
  # One table for every model: computed (or loaded) once at the top of the workdir.
  table_path = os.path.join(workdir, seg_train.EMBEDDINGS_FILE)
  if config.model.class_code == "text" and not config.model.embedding_table:
    seg_train.class_table(config, workdir)
    config = with_fields(config, **{"model.embedding_table": table_path})

  runs = {"assembly": list(train_dirs.values())}
  if config.train_single_sources and len(train_dirs) > 1:
    runs.update({name: [p] for name, p in train_dirs.items()})
  results, masks = {}, {}
  for name, dirs in runs.items():
    steps = assembly_steps(config, len(dirs)) if name == "assembly" else int(config.num_steps)
    print(f"\n=== model '{name}': {len(dirs)} source(s), {steps} steps ===", flush=True)
    # Every model gets all validation folders; train.py keeps the cases of its own sources.
    cfg = with_fields(config, **{"num_steps": steps,
                                 "data.shard_dirs": tuple(str(d) for d in dirs),
                                 "data.test_dirs": tuple(str(d) for d in test_dirs),
                                 "data.val_dirs": tuple(str(d) for d in val_dirs)})
    out = seg_train.train_and_evaluate(cfg, os.path.join(workdir, "runs", name))
    masks[name] = out.pop("masks", {})
    results[name] = out

  summary = {"results": results, "seconds": None}
  if test_dirs and all("eval" in r for r in results.values()):
    text, table = comparison_table(results)
    print("\n" + text, flush=True)
    summary["comparison"] = table
    if jax.process_index() == 0:
      with open(os.path.join(workdir, "comparison.txt"), "w") as f:
        f.write(text + "\n")
    cases = evaluate.load_cases(test_dirs)
    shown = pick_cases(cases, int(config.eval.num_overlays))
    shown_models = ["assembly"] + [n for n in results if n != "assembly"]
    if jax.process_index() == 0:
      path = evaluate.overlay_png(os.path.join(workdir, "overlays.png"), shown,
                                  {n: masks[n] for n in shown_models})
      print(f"overlays: {path}", flush=True)
  if config.write_predictions and raw_test:
    summary["predictions"] = _write_predictions(config, workdir, raw_test)
  summary["seconds"] = time.perf_counter() - t0
  write_summary(os.path.join(workdir, "comparison.json"), summary)
  print(f"job done in {summary['seconds']:.0f} s; results in {workdir}", flush=True)
  return summary


def write_summary(path: str, summary: dict) -> None:
  """A job's JSON summary, written by the primary process under a temporary name, then renamed."""
  if jax.process_index() != 0:
    return
  from dassemble_jax.segmentation import seg_metrics
  with open(path + ".tmp", "w") as f:
    json.dump(seg_metrics.to_jsonable(summary), f, indent=1, default=str)
  os.replace(path + ".tmp", path)


def pick_cases(cases, n: int):
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


def _write_predictions(config, workdir: str, raw_test: dict) -> list[str]:
  """The assembly model on the held-out raw NIfTI scans -> DIR/predictions/<source>/<case>."""
  from dassemble_jax import predict as predict_cli
  model_dir = os.path.join(workdir, "runs", "assembly")
  loaded = evaluate.load_model(model_dir)  # the best validated checkpoint
  written = []
  for name, raw in raw_test.items():
    for img in _raw_images(pathlib.Path(raw)):
      # KiTS-style folders name every image 'imaging.nii.gz': name outputs by their folder too.
      rel = img.relative_to(raw)
      case = "_".join(rel.parts[:-1] + (rel.name.split(".nii")[0],)).replace("imagesTr_", "")
      out = pathlib.Path(workdir) / "predictions" / name / f"{case}.nii.gz"
      out.parent.mkdir(parents=True, exist_ok=True)
      result = predict_cli.predict_file(loaded, img, out)
      written.append(str(out))
      print(f"prediction {out} ({', '.join(f'{k} {v:.2f} s' for k, v in result.timings.items())})",
            flush=True)
  return written


def _raw_images(raw: pathlib.Path) -> list[pathlib.Path]:
  """The image files of a phantom source folder in its public dataset layout."""
  patterns = ("volume-*.nii.gz", "case_*/imaging.nii.gz", "imagesTr/*.nii.gz", "img/*.nii.gz")
  return sorted(p for pat in patterns for p in raw.glob(pat))
