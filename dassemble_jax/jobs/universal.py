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
   of overlays (DIR/overlays.png);
6. with `seed_study` naming a stored multi-seed study (seeds.json of `run_seeds`) made with the
   same settings, each comparison of this run's table is followed by that study's verdict: did
   it hold across seeds (segmentation/seed_study.py: paired by seed, paired t-test)?

With `seeds` non-empty (configs/universal.py:seeds), `run_seeds` runs the whole job once per
seed into DIR/seed_<s> (a seed whose DIR/seed_<s>/comparison.json exists is read, not rerun)
and writes the comparison across seeds: DIR/seeds.txt and DIR/seeds.json (per class and model
the DSC per seed and mean ± std; assembly vs each single-source model per class and on that
model's classes together: mean paired difference, 95% interval, paired t-test and Wilcoxon p,
verdict).
"""

from __future__ import annotations

import json
import os
import pathlib
import time

import jax

from dassemble_jax.data import arrayrecord_io
from dassemble_jax.segmentation import (
  assembly_data,
  evaluate,
  reports,
  seed_study,
  train_loop,
  trained_run,
)

SEEDS_FILE = "seeds.json"
# Config fields that must match between a run and a stored seed study for its verdicts to apply
# (everything a run's numbers depend on except the seed).
_STUDY_FIELDS = ("data.phantom_sources", "data.phantom_train_cases", "data.phantom_test_cases",
                 "data.phantom_val_cases", "data.phantom_shape", "data.phantom_native_spacing",
                 "data.spacing", "data.shard_dirs", "model.backbone", "model.base_channels",
                 "model.norm", "model.class_code", "crop_size", "batch_size", "num_steps",
                 "assembly_num_steps", "learning_rate", "eval_every", "compute_dtype")
# Of these, the training length: a study that differs only here is still reported, flagged.
_LENGTH_FIELDS = ("num_steps", "assembly_num_steps", "eval_every")


def assembly_steps(config, num_sources: int) -> int:
  """Steps of the assembly model: `assembly_num_steps`, or (0) num_steps x num_sources."""
  n = int(config.get("assembly_num_steps", 0) or 0)
  if n < 0:
    raise ValueError(f"assembly_num_steps must be >= 0, got {n}")
  return n or int(config.num_steps) * max(1, num_sources)


def run(config, workdir: str) -> dict:
  """The whole job (see the module docstring); returns {model: summary} plus the table."""
  if tuple(config.get("seeds", ()) or ()):
    return run_seeds(config, workdir)
  t0 = time.perf_counter()
  os.makedirs(workdir, exist_ok=True)
  if config.data.shard_dirs:
    train_dirs = {arrayrecord_io.read_manifest(p)["sources"][0]: p
                  for p in config.data.shard_dirs}
    test_dirs, raw_test = list(config.data.test_dirs), {}
    val_dirs = list(config.data.get("val_dirs", ()) or ())
  else:
    data = assembly_data.phantom_data(config, os.path.join(workdir, "data"))
    train_dirs, test_dirs, raw_test = data["train"], list(data["test"].values()), data["raw_test"]
    val_dirs = list(data["val"].values())
  print(f"data ready in {time.perf_counter() - t0:.1f} s: {len(train_dirs)} sources", flush=True)
  # One table for every model: computed (or loaded) once at the top of the workdir.
  table_path = os.path.join(workdir, trained_run.EMBEDDINGS_FILE)
  if config.model.class_code == "text" and not config.model.embedding_table:
    train_loop.class_table(config, workdir)
    config = assembly_data.with_fields(config, **{"model.embedding_table": table_path})

  runs = {"assembly": list(train_dirs.values())}
  if config.train_single_sources and len(train_dirs) > 1:
    runs.update({name: [p] for name, p in train_dirs.items()})
  results, masks = {}, {}
  for name, dirs in runs.items():
    steps = assembly_steps(config, len(dirs)) if name == "assembly" else int(config.num_steps)
    print(f"\n=== model '{name}': {len(dirs)} source(s), {steps} steps ===", flush=True)
    # Every model gets all validation folders; train_loop.py keeps the cases of its own sources.
    cfg = assembly_data.with_fields(config, **{
        "num_steps": steps, "data.shard_dirs": tuple(str(d) for d in dirs),
        "data.test_dirs": tuple(str(d) for d in test_dirs),
        "data.val_dirs": tuple(str(d) for d in val_dirs)})
    out = train_loop.train_and_evaluate(cfg, os.path.join(workdir, "runs", name))
    masks[name] = out.pop("masks", {})
    results[name] = out

  summary = {"results": results, "seconds": None}
  if test_dirs and all("eval" in r for r in results.values()):
    text, table = reports.comparison_table(results)
    print("\n" + text, flush=True)
    summary["comparison"] = table
    verdicts = stored_verdicts(config, table)
    if verdicts:
      print("\n" + verdicts, flush=True)
      text += "\n\n" + verdicts
    reports.write_text(os.path.join(workdir, "comparison.txt"), text + "\n")
    cases = evaluate.load_cases(test_dirs)
    shown = reports.pick_cases(cases, int(config.eval.num_overlays))
    shown_models = ["assembly"] + [n for n in results if n != "assembly"]
    if jax.process_index() == 0:
      path = reports.overlay_png(os.path.join(workdir, "overlays.png"), shown,
                                  {n: masks[n] for n in shown_models})
      print(f"overlays: {path}", flush=True)
  if config.write_predictions and raw_test:
    summary["predictions"] = _write_predictions(workdir, raw_test)
  summary["seconds"] = time.perf_counter() - t0
  reports.write_summary(os.path.join(workdir, "comparison.json"), summary)
  print(f"job done in {summary['seconds']:.0f} s; results in {workdir}", flush=True)
  return summary


def study_settings(config) -> dict:
  """The settings a seed study's verdicts depend on (all but the seed), JSON-able."""
  out = {}
  for key in _STUDY_FIELDS:
    node = config
    for part in key.split("."):
      node = node.get(part) if node is not None else None
    out[key] = list(node) if isinstance(node, (tuple, list)) else node
  return out


def run_seeds(config, workdir: str) -> dict:
  """The job once per seed of `config.seeds` (DIR/seed_<s>), then the table across seeds."""
  seeds = [int(s) for s in config.seeds]
  if len(seeds) < 2 or len(set(seeds)) != len(seeds):
    raise ValueError(f"seeds must be at least two distinct seeds, got {tuple(config.seeds)}")
  os.makedirs(workdir, exist_ok=True)
  t0 = time.perf_counter()
  per_seed = {}
  for seed in seeds:
    seed_dir = os.path.join(workdir, f"seed_{seed}")
    done = os.path.join(seed_dir, "comparison.json")
    if os.path.exists(done):
      print(f"\n##### seed {seed}: read {done} (already run)", flush=True)
    else:
      print(f"\n##### seed {seed}: {seed_dir}", flush=True)
      run(assembly_data.with_fields(config, seed=seed, seeds=(), seed_study=""), seed_dir)
    with open(done) as f:
      summary = json.load(f)
    if "comparison" not in summary:
      raise ValueError(f"{done}: no comparison table (was the run evaluated on held-out data?)")
    per_seed[seed] = summary["comparison"]
  table = seed_study.universal_table(per_seed)
  table["settings"] = study_settings(config)
  print("\n" + table["text"], flush=True)
  reports.write_text(os.path.join(workdir, "seeds.txt"), table["text"] + "\n")
  reports.write_summary(os.path.join(workdir, SEEDS_FILE), table)
  print(f"seed study done in {time.perf_counter() - t0:.0f} s; results in {workdir}", flush=True)
  return table


def stored_verdicts(config, table: dict) -> str:
  """Lines saying, for each comparison of this run's table, whether it held across the seeds of
  the stored study `config.seed_study` ('' when none is named or the file is absent). A study
  whose data or model differ is named and not applied; one that differs only in training length
  (`_LENGTH_FIELDS`) is applied with the difference stated first."""
  path = str(config.get("seed_study", "") or "")
  if not path or not os.path.exists(path):
    return ""
  with open(path) as f:
    study = json.load(f)
  ours, theirs = study_settings(config), study.get("settings", {})
  differ = [k for k in ours if ours[k] != theirs.get(k)]
  if set(differ) - set(_LENGTH_FIELDS):
    return (f"(stored seed study {path} ran with other settings ({', '.join(differ)}): its "
            "verdicts do not apply to this run)")
  seeds = study["seeds"]
  lines = [(f"[across {len(seeds)} seeds {tuple(seeds)} ({path}): assembly - single source, "
           f"paired by seed, paired t-test at p < {study['level']}; this run is seed "
           f"{int(config.seed)}]")]
  if differ:
    lines.append("NOTE: the study trained for another length (" + ", ".join(
        f"{k} {theirs.get(k)} there vs {ours[k]} here" for k in differ) + "); its verdicts are "
        "for that length")
  for model, overall in study["overall"].items():
    if model not in table["dsc"]:
      continue
    held = {"better": "held, assembly better", "worse": "held, assembly worse",
            "equal": "equal on every seed",
            "undecided": "not decided across seeds"}[overall["verdict"]]
    lines.append(f"on {model}'s {len(overall['classes'])} classes: mean difference "
                 f"{overall['diff_mean']:+.3f} (p {_p(overall['t_p'])}): {held}")
    decided = {c: r for c, r in study["comparisons"][model].items()
               if r["verdict"] in ("better", "worse")}
    if decided:
      lines.append("  held per class: " + ", ".join(
          f"{c} {r['verdict']} ({r['diff_mean']:+.3f}, p {_p(r['t_p'])})"
          for c, r in decided.items()))
    undecided = [c for c, r in study["comparisons"][model].items()
                 if r["verdict"] == "undecided"]
    if undecided:
      lines.append(f"  not decided: {', '.join(undecided)}")
  return "\n".join(lines)


def _p(v) -> str:
  return "-" if v is None else f"{v:.3g}"


def _write_predictions(workdir: str, raw_test: dict) -> list[str]:
  """The assembly model on the held-out raw NIfTI scans -> DIR/predictions/<source>/<case>."""
  model = trained_run.load_model(os.path.join(workdir, "runs", "assembly"))  # best validated
  written = []
  for name, raw in raw_test.items():
    for img in _raw_images(pathlib.Path(raw)):
      # KiTS-style folders name every image 'imaging.nii.gz': name outputs by their folder too.
      rel = img.relative_to(raw)
      case = "_".join(rel.parts[:-1] + (rel.name.split(".nii")[0],)).replace("imagesTr_", "")
      out = pathlib.Path(workdir) / "predictions" / name / f"{case}.nii.gz"
      out.parent.mkdir(parents=True, exist_ok=True)
      result = model.predict_file(img, out)
      written.append(str(out))
      print(f"prediction {out} ({', '.join(f'{k} {v:.2f} s' for k, v in result.timings.items())})",
            flush=True)
  return written


def _raw_images(raw: pathlib.Path) -> list[pathlib.Path]:
  """The image files of a phantom source folder in its public dataset layout."""
  patterns = ("volume-*.nii.gz", "case_*/imaging.nii.gz", "imagesTr/*.nii.gz", "img/*.nii.gz")
  return sorted(p for pat in patterns for p in raw.glob(pat))
