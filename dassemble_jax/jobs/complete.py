"""Complete a partially labelled CT assembly with pseudo labels; on the phantom, measure it.

  python -m dassemble_jax.main --config=configs/complete.py --workdir=DIR
  python -m dassemble_jax.main --config=configs/complete.py --workdir=DIR \
      --config.complete.run_dirs='("/runs/universal/runs/assembly", "/runs/swin/runs/assembly")' \
      --config.complete.shard_dirs='("/shards/btcv", "/shards/lits", "/shards/kits19")'

With trained runs named (`complete.run_dirs`; several = an ensemble that averages
probabilities), `complete_assembly` pseudo-labels, for every case of every source in
`complete.shard_dirs` (default: the first run's own training sources), the classes the source
does not annotate, keeps the human labels, and writes into DIR:
  cases/<source>/<split>/<case>.npz     per-case result (written last, atomically: a killed run
                                        resumes after the last finished case, never half a case)
  nifti/<source>/<case>.nii.gz + .json  label map in the case's original grid and affine, with a
                                        sidecar naming every value and each class's origin
                                        (human / pseudo / unknown); nifti/labels.ctbl (3D Slicer)
                                        and nifti/labels_itksnap.txt (ITK-SNAP)
  completed/<source>/                   ArrayRecord shards + manifest in the converted format,
                                        trainable as they are; the manifest's `label_origin` says
                                        per source and class human / pseudo / unknown, `completion`
                                        the threshold and the models; records carry `pseudo` (32,)
  review.csv, review.json               case x class, lowest confidence (most in need of review)
                                        first; review/*.png overlays of the worst few
  completion.json                       settings and per-class summary
A class whose confidence is below `complete.threshold` stays unknown in that case (never
"background"). With `complete.round2` a second model is trained on the completed shards and
compared with the first on `data.test_dirs`.

With no runs named, the phantom study (`phantom_study`): per seed, the universal job's assembly
model (round 1) is trained on the phantom, completes the assembly, the pseudo labels are scored
against the phantom's hidden full truth (`segmentation/phantom_truth.py`), a round-2 model is
trained on the completed assembly with the same steps and seed, and both are evaluated on
held-out cases with full truth. DIR/completion_study.{txt,json} hold the tables.
"""

from __future__ import annotations

import csv
import io
import json
import os
import sys
import time
import zlib
from collections.abc import Callable, Sequence

import jax
import ml_collections
import numpy as np

from dassemble_jax import atomic, progress
from dassemble_jax.ct import convert, label_tables, preprocess, taxonomy
from dassemble_jax.data import arrayrecord_io
from dassemble_jax.jobs import universal as universal_job
from dassemble_jax.segmentation import (
  assembly_data,
  completion,
  completion_study,
  ensemble,
  evaluate,
  inference,
  phantom_truth,
  seg_metrics,
  train_loop,
  trained_run,
)
from dassemble_jax.segmentation import postprocess as pp

CLASS_NAMES = trained_run.CLASS_NAMES
SETTINGS_FILE = "completion_settings.json"
_MAX_CENTRES = 2048  # crop-centre candidates per category, as ct/convert.py


class CompletionError(ValueError):
  """Bad input to the completion (the message is one line naming the file)."""


class _Stopped(RuntimeError):
  """Raised by the test hook `stop_after_cases` (a simulated kill)."""


def run(config, workdir: str) -> dict:
  """The job (module docstring); bad input ends with one line `error: <file>: <problem>`."""
  try:
    return complete(config, workdir)
  except (CompletionError, ensemble.EnsembleError) as e:
    print(f"error: {e}", file=sys.stderr, flush=True)
    raise SystemExit(1) from None


def complete(config, workdir: str) -> dict:
  os.makedirs(workdir, exist_ok=True)
  c = config.complete
  if not c.run_dirs:
    if c.shard_dirs:
      raise CompletionError("complete.shard_dirs names shards but complete.run_dirs names no "
                            "trained run to complete them with")
    return phantom_study(config, workdir)
  runs = [str(d) for d in c.run_dirs]
  shard_dirs = [str(d) for d in c.shard_dirs] or _run_training_dirs(runs[0])
  summary = complete_assembly(config, runs, shard_dirs, workdir)
  if c.round2:
    if not config.data.test_dirs:
      raise CompletionError("complete.round2 needs data.test_dirs (held-out converted cases) to "
                            "compare the two rounds")
    summary["round2"] = _round2_real(config, runs[0], summary["completed_dirs"], workdir)
  atomic.write_json(os.path.join(workdir, "completion.json"), seg_metrics.to_jsonable(summary))
  return summary


def _run_training_dirs(run_dir: str) -> list[str]:
  ensemble.check_run_folder(run_dir)
  with open(os.path.join(run_dir, trained_run.CONFIG_FILE)) as f:
    dirs = list(json.load(f).get("data", {}).get("shard_dirs", []))
  if not dirs:
    raise CompletionError(f"{os.path.join(run_dir, trained_run.CONFIG_FILE)}: names no training "
                          "shards; pass complete.shard_dirs")
  return dirs


# ------------------------------------------------------------------------------------------------
# Checking the inputs.

def check_shards(shard_dir: str) -> dict:
  """The manifest of a converted CT folder in this taxonomy, else CompletionError naming it."""
  path = os.path.join(shard_dir, arrayrecord_io.MANIFEST_NAME)
  try:
    manifest = arrayrecord_io.read_manifest(shard_dir)
  except Exception as e:
    raise CompletionError(f"{path}: not a converted dataset ({' '.join(str(e).split())})") from e
  if manifest.get("kind") != convert.KIND:
    raise CompletionError(f"{path}: kind {manifest.get('kind')!r} is not a converted CT dataset "
                          f"({convert.KIND!r})")
  classes = list(manifest.get("classes", []))
  if classes != CLASS_NAMES:
    first = next((f"{i + 1}: {a!r} vs {b!r}" for i, (a, b) in
                  enumerate(zip(classes, CLASS_NAMES)) if a != b),
                 f"{len(classes)} classes vs {len(CLASS_NAMES)}")
    raise CompletionError(f"{path}: shards of another taxonomy (class {first}); convert them "
                          "with this version's ct/taxonomy.py")
  if len(manifest.get("sources", [])) != 1:
    raise CompletionError(f"{path}: expected one source per folder, got {manifest.get('sources')}")
  return manifest


def _settings(config, models: ensemble.Ensemble, classes, shard_dirs) -> dict:
  c = config.complete
  steps = []
  for m in models.models:
    steps.append(int(m.step))
  return {"run_dirs": [os.path.abspath(d) for d in models.run_dirs], "steps": steps,
          "checkpoint": str(c.checkpoint), "classes": [CLASS_NAMES[k] for k in
                                                       np.flatnonzero(classes)],
          "threshold": float(c.threshold), "uncertain_band": [float(b) for b in c.uncertain_band],
          "shard_dirs": [os.path.abspath(d) for d in shard_dirs]}


def _check_settings(workdir: str, settings: dict) -> None:
  """Write the settings, or check a resumed workdir was started with the same ones."""
  path = os.path.join(workdir, SETTINGS_FILE)
  if os.path.exists(path):
    with open(path) as f:
      old = json.load(f)
    if old != settings:
      differ = sorted(k for k in settings.keys() | old.keys() if old.get(k) != settings.get(k))
      raise CompletionError(f"{path}: this folder holds a completion with other settings "
                            f"({', '.join(differ)} differ); use another --workdir")
  else:
    atomic.write_json(path, settings, indent=1)


# ------------------------------------------------------------------------------------------------
# The completion.

def complete_assembly(config, run_dirs: Sequence[str], shard_dirs: Sequence[str], workdir: str,
                      *, truth_fn: Callable | None = None,
                      stop_after_cases: int | None = None) -> dict:
  """Pseudo-labels every case of `shard_dirs` with the ensemble of `run_dirs` (module docstring).

  `truth_fn(record, source, case_id) -> (X, Y, Z) uint32` (the phantom's hidden truth) adds each
  row's true DSC. `stop_after_cases` stops (raises) after that many newly finished cases: a
  simulated kill, for the tests.
  """
  c = config.complete
  t0 = time.perf_counter()
  os.makedirs(workdir, exist_ok=True)
  if jax.process_count() > 1:
    # Every process would predict and write the same cases: run the completion in one process
    # (its models run on that process's first device; training round 2 may use many hosts).
    raise CompletionError(f"{workdir}: the completion runs in a single process, got "
                          f"{jax.process_count()}; run it with --distributed=off")
  manifests = {d: check_shards(d) for d in shard_dirs}
  models = ensemble.Ensemble(run_dirs, str(c.checkpoint))
  for d, m in manifests.items():
    if not np.allclose(np.asarray(m["spacing"], float), models.spacing):
      raise CompletionError(f"{os.path.join(d, arrayrecord_io.MANIFEST_NAME)}: spacing "
                            f"{m['spacing']} mm differs from the models' {models.spacing} mm "
                            f"({os.path.join(run_dirs[0], trained_run.CONFIG_FILE)})")
  classes = models.class_mask(list(c.classes)) if c.classes else models.common_classes
  settings = _settings(config, models, classes, shard_dirs)
  _check_settings(workdir, settings)
  _write_viewer_files(os.path.join(workdir, "nifti"))

  splits = {d: [s for s in m["cases"] if not c.splits or s in c.splits]
            for d, m in manifests.items()}
  total = sum(len(manifests[d]["cases"][s]) for d in shard_dirs for s in splits[d])
  bar = progress.Progress(total, unit="cases", prefix="complete")
  rows, done, new = [], 0, 0
  band = tuple(float(b) for b in c.uncertain_band)
  for d in shard_dirs:
    source = manifests[d]["sources"][0]
    for split in splits[d]:
      ids = manifests[d]["cases"][split]
      for record in arrayrecord_io.read_records(d, split):
        case_id = ids[int(record["case_index"])]
        path = os.path.join(workdir, "cases", source, split, f"{case_id}.npz")
        if not os.path.exists(path):
          _complete_case(models, record, classes, source, split, case_id, workdir,
                         threshold=float(c.threshold), band=band, truth_fn=truth_fn)
          new += 1
        rows += _case_rows(path)
        done += 1
        bar.report(done, case=f"{source}/{case_id}")
        if stop_after_cases is not None and new >= stop_after_cases and done < total:
          bar.close()
          raise _Stopped(f"stopped after {new} new cases")
  bar.close()

  completed = {}
  for d in shard_dirs:
    completed[d] = _write_completed_shards(d, manifests[d], splits[d], workdir, settings)
  ranked = completion.review_order(rows)
  _write_review(workdir, ranked)
  shown = _review_overlays(workdir, ranked, int(c.num_overlays))
  summary = {"settings": settings, "cases": done, "new_cases": new,
             "completed_dirs": [completed[d] for d in shard_dirs],
             "classes": _class_summary(ranked), "review_pngs": shown,
             "seconds": time.perf_counter() - t0}
  atomic.write_json(os.path.join(workdir, "completion.json"), seg_metrics.to_jsonable(summary))
  print(f"completed {done} cases ({new} new) in {summary['seconds']:.1f} s; shards in "
        f"{os.path.join(workdir, 'completed')}; review list {os.path.join(workdir, 'review.csv')}",
        flush=True)
  return summary


def _complete_case(models, record, classes, source, split, case_id, workdir, *, threshold,
                   band, truth_fn) -> None:
  image = np.asarray(record["image"], np.float32)
  affine = np.asarray(record["affine"], np.float64)
  human = np.asarray(record["annotated"], bool)
  todo = classes & ~human
  # Every class the models know is predicted, the source's own too: post-processing keeps a
  # lesion only inside its (predicted) host organ, which a source may label itself (a BTCV
  # case's kidney tumor needs the kidneys). Only `todo` classes become pseudo labels.
  pred = models.predict(image, affine, classes)
  stats_by_class, accepted = {}, np.zeros(taxonomy.NUM_CLASSES, bool)
  for i in np.flatnonzero(todo):
    k = int(i)
    bit = np.uint32(taxonomy.bit(k + 1))
    s = completion.class_confidence(
        pred.probs[..., k], (pred.bits & bit) != 0, [(b & bit) != 0 for b in pred.member_bits],
        is_lesion=(k + 1) in taxonomy.TUMOR_IDS, band=band)
    s["volume_ml"] = s["voxels"] * float(np.prod(record["spacing"])) / 1000.0
    accepted[k] = s["confidence"] >= threshold
    stats_by_class[k] = s
  bits, annotated, pseudo = completion.merge(record["label"], human, pred.bits, accepted)
  truth = truth_fn(record, source, case_id) if truth_fn is not None else None

  rows, slices = [], {"image": [], "prob": [], "bits": [], "class": [], "z": []}
  for k, s in stats_by_class.items():
    row = {"source": source, "case": case_id, "split": split, "class": CLASS_NAMES[k],
           "status": completion.PSEUDO if accepted[k] else completion.UNKNOWN, **s}
    if truth is not None:
      bit = np.uint32(taxonomy.bit(k + 1))
      row["true_dsc"] = seg_metrics.dice((pred.bits & bit) != 0, (truth & bit) != 0)
    rows.append(row)
    # The axial slice a reviewer would look at: the most predicted voxels, else the most likely.
    mask = (pred.bits & np.uint32(taxonomy.bit(k + 1))) != 0
    score = mask.sum(axis=(0, 1)) if mask.any() else pred.probs[..., k].max(axis=(0, 1))
    z = int(np.argmax(score))
    slices["image"].append(image[:, :, z].astype(np.float16))
    slices["prob"].append(pred.probs[:, :, z, k].astype(np.float16))
    slices["bits"].append(bits[:, :, z])
    slices["class"].append(k)
    slices["z"].append(z)

  # Label map in the file's own grid, its sidecar, then the case file: the case counts as done
  # only when the last one exists, and each appears whole (atomic writes).
  nifti_dir = os.path.join(workdir, "nifti", source)
  model_grid = inference.Grid(tuple(image.shape), affine)
  original = inference.Grid(tuple(int(n) for n in record["original_shape"]),
                            np.asarray(record["original_affine"], np.float64))
  labels = inference.to_original_grid(pp.bits_to_label_map(bits), model_grid, original)
  inference.save_label_map(os.path.join(nifti_dir, f"{case_id}.nii.gz"), labels,
                           original.affine)
  origin = _origins(human, pseudo, todo)
  atomic.write_json(os.path.join(nifti_dir, f"{case_id}.json"), {
      "case": case_id, "source": source, "label_map": f"{case_id}.nii.gz",
      "values": {"0": "background", **{str(c.id): c.name for c in taxonomy.CLASSES}},
      "color_tables": ["../labels.ctbl", "../labels_itksnap.txt"],
      "note": ("a voxel's value is the highest class id it belongs to (lesions over organs); "
               "0 is background only for classes whose origin is human or pseudo: an unknown "
               "class was not labelled in this case and may lie anywhere"),
      "threshold": threshold,
      "classes": {CLASS_NAMES[k]: {"origin": origin[k],
                                   **({f: stats_by_class[k][f] for f in
                                       completion.CONFIDENCE_FIELDS}
                                      if k in stats_by_class else {})}
                  for k in range(taxonomy.NUM_CLASSES)}}, indent=1)
  arrays = {"bits": bits, "annotated": annotated, "pseudo": pseudo,
            "rows": np.asarray(json.dumps(seg_metrics.to_jsonable(rows)))}
  if slices["class"]:
    arrays.update({f"slice_{k}": np.stack(v) for k, v in slices.items()})
  path = os.path.join(workdir, "cases", source, split, f"{case_id}.npz")
  with atomic.temporary_path(path) as tmp:
    np.savez(tmp, **arrays)


def _origins(human, pseudo, todo) -> list[str]:
  return [completion.HUMAN if human[k] else completion.PSEUDO if pseudo[k] else completion.UNKNOWN
          for k in range(taxonomy.NUM_CLASSES)]


def _case_rows(path: str) -> list[dict]:
  with np.load(path) as z:
    return json.loads(str(z["rows"]))


def _write_viewer_files(nifti_dir: str) -> None:
  label_tables.write_viewer_files(nifti_dir)


def _write_completed_shards(shard_dir: str, manifest: dict, splits, workdir: str,
                            settings: dict) -> str:
  """The source's records with completed labels -> workdir/completed/<source> (atomic folder)."""
  source = manifest["sources"][0]
  out = os.path.join(workdir, "completed", source)
  human_known = set(manifest["known_classes"][source])
  accepted_cases = np.zeros(taxonomy.NUM_CLASSES, int)
  shards = {s: max(1, len(manifest["splits"][s]["shards"])) for s in splits}
  with arrayrecord_io.DatasetWriter(out, shards_per_split=shards, overwrite=True) as writer:
    for split in splits:
      ids = manifest["cases"][split]
      for record in arrayrecord_io.read_records(shard_dir, split):
        case_id = ids[int(record["case_index"])]
        with np.load(os.path.join(workdir, "cases", source, split, f"{case_id}.npz")) as z:
          bits, annotated, pseudo = z["bits"], z["annotated"], z["pseudo"]
        accepted_cases += pseudo.astype(int)
        # Crop centres from the completed labels: pseudo organs become foreground centres too.
        rng = np.random.default_rng([17, zlib.crc32(case_id.encode())])
        centres = preprocess.crop_centres(bits, rng, _MAX_CENTRES)
        writer.add(split, {**record, "label": bits, "annotated": annotated, "pseudo": pseudo,
                           **{f"centres_{k}": v for k, v in centres.items()}})
    pseudo_ids = [int(i) + 1 for i in np.flatnonzero(accepted_cases)]
    extra = {k: v for k, v in manifest.items() if k not in ("format", "splits", "fields")}
    extra["cases"] = {s: manifest["cases"][s] for s in splits}
    extra["known_classes"] = {source: sorted(human_known | set(pseudo_ids))}
    extra["optional"] = {source: sorted(set(manifest.get("optional", {}).get(source, []))
                                        | (set(pseudo_ids) - human_known))}
    extra["label_origin"] = {source: {
        n: (completion.HUMAN if i + 1 in human_known else
            completion.PSEUDO if accepted_cases[i] else completion.UNKNOWN)
        for i, n in enumerate(CLASS_NAMES)}}
    extra["pseudo_cases"] = {source: {CLASS_NAMES[i - 1]: int(accepted_cases[i - 1])
                                      for i in pseudo_ids}}
    extra["completion"] = {
        **settings, "completed_from": os.path.abspath(shard_dir),
        "pseudo_rule": ("a class the source does not annotate is a label in a case when its "
                        f"confidence >= {settings['threshold']} (segmentation/completion.py); "
                        "else unknown in that case (annotated 0); human labels always win"),
        "record_field_pseudo": "(32,) uint8: 1 where the class is a pseudo label in this case"}
    extra["description"] = f"{manifest.get('description', '')}; completed with pseudo labels"
    writer.close(extra)
  return out


def _write_review(workdir: str, ranked: list[dict]) -> None:
  fields = ["rank", "source", "case", "split", "class", "status", "confidence", "mean_prob",
            "uncertain_fraction", "disagreement", "voxels", "volume_ml"]
  if ranked and "true_dsc" in ranked[0]:
    fields.append("true_dsc")
  buf = io.StringIO()
  w = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore", lineterminator="\n")
  w.writeheader()
  for r in ranked:
    w.writerow({k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in r.items()})
  atomic.write_text(os.path.join(workdir, "review.csv"), buf.getvalue())
  atomic.write_json(os.path.join(workdir, "review.json"), seg_metrics.to_jsonable(ranked),
                    indent=1)


def _review_overlays(workdir: str, ranked: list[dict], n: int) -> list[str]:
  """One PNG per row among the `n` worst: CT, the class's probability, the completed labels."""
  if n <= 0 or not ranked:
    return []
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  view = lambda a: np.flip(np.swapaxes(a, 0, 1), axis=(0, 1))  # radiological view, as reports
  colours = label_tables.palette().astype(np.float32) / 255.0
  written = []
  for r in ranked[:n]:
    path = os.path.join(workdir, "cases", r["source"], r["split"], f"{r['case']}.npz")
    k = CLASS_NAMES.index(r["class"])
    with np.load(path) as z:
      j = int(np.flatnonzero(z["slice_class"] == k)[0])
      img = view(z["slice_image"][j].astype(np.float32))
      prob = view(z["slice_prob"][j].astype(np.float32))
      labels = view(pp.bits_to_label_map(z["slice_bits"][j][..., None])[..., 0])
      zi = int(z["slice_z"][j])
    rgb = np.repeat(img[..., None], 3, -1)
    on = labels > 0
    rgb[on] = 0.5 * rgb[on] + 0.5 * colours[labels[on]]
    fig, axes = plt.subplots(1, 3, figsize=(7.8, 2.9))
    axes[0].imshow(img, cmap="gray", vmin=0, vmax=1)
    axes[0].set_title(f"#{r['rank']} {r['source']}/{r['case']} z={zi}", fontsize=7)
    axes[1].imshow(prob, cmap="magma", vmin=0, vmax=1)
    axes[1].set_title(f"p({r['class']})", fontsize=7)
    axes[2].imshow(rgb)
    title = f"completed labels\n{r['class']} {r['status']}, conf {r['confidence']:.2f}"
    if "true_dsc" in r:
      title += f", true DSC {r['true_dsc']:.2f}"
    axes[2].set_title(title, fontsize=7)
    for ax in axes:
      ax.axis("off")
    fig.tight_layout()
    out = os.path.join(workdir, "review", f"{r['rank']:03d}_{r['source']}_{r['case']}_"
                                          f"{r['class']}.png")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with atomic.temporary_path(out) as tmp:
      fig.savefig(tmp, dpi=90)
    plt.close(fig)
    written.append(out)
  return written


def _class_summary(rows: list[dict]) -> dict:
  """Per class: pseudo-labelled cases, accepted ones, mean confidence (and true DSC)."""
  out = {}
  for name in CLASS_NAMES:
    rs = [r for r in rows if r["class"] == name]
    if not rs:
      continue
    s = {"cases": len(rs), "accepted": sum(r["status"] == completion.PSEUDO for r in rs),
         "mean_confidence": float(np.mean([r["confidence"] for r in rs]))}
    if "true_dsc" in rs[0]:
      s["mean_true_dsc"] = float(np.mean([r["true_dsc"] for r in rs]))
    out[name] = s
  return out


# ------------------------------------------------------------------------------------------------
# Round 2 on real data.

def _round2_real(config, first_run: str, completed_dirs, workdir: str) -> dict:
  """Round 2 with the first run's own recipe (its config.json), on the completed shards."""
  c = config.complete
  with open(os.path.join(first_run, trained_run.CONFIG_FILE)) as f:
    recipe = ml_collections.ConfigDict(json.load(f))
  steps = int(c.round2_steps) or int(recipe.num_steps)
  cfg = assembly_data.with_fields(recipe, **{
      "num_steps": steps, "data.shard_dirs": tuple(completed_dirs), "data.test_dirs": (),
      "init_from": ""})
  round2 = os.path.join(workdir, "runs", "round2")
  train_loop.train_and_evaluate(cfg, round2)
  tests = list(config.data.test_dirs)
  r1, _ = evaluate.evaluate_run(first_run, tests)
  r2, _ = evaluate.evaluate_run(round2, tests)
  out = {"round1": r1["summary"]["all"]["dsc"], "round2": r2["summary"]["all"]["dsc"]}
  atomic.write_json(os.path.join(workdir, "round2.json"), seg_metrics.to_jsonable(out))
  return out


# ------------------------------------------------------------------------------------------------
# The phantom study.

def _phantom_truth_fn(config, seed: int):
  d = config.data

  def fn(record, source, case_id):
    return phantom_truth.truth_bits(record, source, case_id, seed=seed,
                                    shape=tuple(d.phantom_shape),
                                    native_spacing=tuple(d.phantom_native_spacing),
                                    spacing=float(d.spacing))
  return fn


def phantom_seed(config, workdir: str, seed: int) -> dict:
  """One seed of the phantom study (resumable: training, completion and evaluation resume)."""
  c = config.complete
  cfg = assembly_data.with_fields(config, seed=int(seed))
  data = assembly_data.phantom_data(cfg, os.path.join(workdir, "data"))
  d = cfg.data
  truth_tests = []
  for name, test_dir in data["test"].items():
    out = os.path.join(workdir, "data", "truth_test", name)
    if not os.path.exists(os.path.join(out, arrayrecord_io.MANIFEST_NAME)):
      phantom_truth.write_truth_shards(
          test_dir, out, seed=int(seed) + assembly_data.TEST_SEED_OFFSET,
          shape=tuple(d.phantom_shape), native_spacing=tuple(d.phantom_native_spacing))
    truth_tests.append(out)
  train_dirs = [str(p) for p in data["train"].values()]
  steps = universal_job.assembly_steps(cfg, len(train_dirs))
  common = {"num_steps": steps, "data.test_dirs": (),
            "data.val_dirs": tuple(str(p) for p in data["val"].values())}
  runs = []
  for m in range(max(1, int(c.phantom_models))):
    name = "round1" if m == 0 else f"round1_m{m}"
    print(f"\n=== seed {seed}: model '{name}', {steps} steps on the partial labels ===",
          flush=True)
    mcfg = assembly_data.with_fields(cfg, **common, seed=int(seed) + 100 * m,
                                     **{"data.shard_dirs": tuple(train_dirs)})
    train_loop.train_and_evaluate(mcfg, os.path.join(workdir, "runs", name))
    runs.append(os.path.join(workdir, "runs", name))
  print(f"\n=== seed {seed}: completing the assembly with {len(runs)} model(s) ===", flush=True)
  done = complete_assembly(cfg, runs, train_dirs, os.path.join(workdir, "completion"),
                           truth_fn=_phantom_truth_fn(cfg, int(seed)))
  print(f"\n=== seed {seed}: model 'round2', {steps} steps on the completed assembly ===",
        flush=True)
  r2cfg = assembly_data.with_fields(cfg, **common,
                                    **{"data.shard_dirs": tuple(done["completed_dirs"])})
  train_loop.train_and_evaluate(r2cfg, os.path.join(workdir, "runs", "round2"))
  heldout = {}
  for name in ("round1", "round2"):
    path = os.path.join(workdir, "runs", name, "heldout_truth.json")
    if not os.path.exists(path):
      res, step = evaluate.evaluate_run(os.path.join(workdir, "runs", name), truth_tests)
      atomic.write_json(path, seg_metrics.to_jsonable(
          {"step": step, "dsc": res["summary"]["all"]["dsc"],
           "per_source": {s: v["dsc"] for s, v in res["summary"]["per_source"].items()}}))
    with open(path) as f:
      heldout[name] = json.load(f)
  with open(os.path.join(workdir, "completion", "review.json")) as f:
    rows = json.load(f)
  return {"seed": int(seed), "rows": rows, "heldout": heldout, "steps": steps,
          "models": len(runs)}


def phantom_study(config, workdir: str) -> dict:
  """Every seed of `complete.seeds`, then the tables across seeds (completion_study.*)."""
  t0 = time.perf_counter()
  if config.model.class_code == "text" and not config.model.embedding_table:
    train_loop.class_table(config, workdir)
    config = assembly_data.with_fields(config, **{
        "model.embedding_table": os.path.join(workdir, trained_run.EMBEDDINGS_FILE)})
  seeds = [phantom_seed(config, os.path.join(workdir, f"seed_{s}"), int(s))
           for s in config.complete.seeds]
  study = completion_study.study_tables(seeds, float(config.complete.threshold))
  study["seconds"] = time.perf_counter() - t0
  study["config"] = json.loads(config.to_json())
  atomic.write_text(os.path.join(workdir, "completion_study.txt"), study["text"])
  atomic.write_json(os.path.join(workdir, "completion_study.json"),
                    seg_metrics.to_jsonable({k: v for k, v in study.items() if k != "text"}),
                    indent=1)
  print("\n" + study["text"], flush=True)
  print(f"study done in {study['seconds']:.0f} s; {workdir}/completion_study.txt", flush=True)
  return study
