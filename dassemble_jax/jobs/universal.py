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

import os
import pathlib
import time

import jax

from dassemble_jax.data import arrayrecord_io
from dassemble_jax.segmentation import assembly_data, evaluate, reports, train_loop, trained_run


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
