"""Convert a CT dataset from its own folder layout into ArrayRecord shards + a manifest.

  python -m dassemble_jax.ct.convert --dataset msd_task09_spleen --input /data/Task09_Spleen \
      --output /shards/msd_task09_spleen [--spacing 1.5] [--on-error fail|skip] [--workers 8]

Per case: read image (NIfTI, or a DICOM series folder or zip: `scan_input`) and label (NIfTI),
check they share shape and affine, reorient to RAS,
resample to `--spacing` mm (linear image, nearest label), clip HU to [-175, 250] and scale to
[0, 1], map local labels to universal ids (tumors into host organs, left/right pairs split),
crop to the body, and draw crop-centre candidates. Cases run in parallel worker processes and
are written in case-id order, so the output does not depend on `--workers`.

One record per case (arrays indexed in RAS voxel order: axis 0 -> patient right, 1 ->
anterior, 2 -> superior):
  image           (X, Y, Z) float16   HU window scaled to [0, 1]
  label           (X, Y, Z) uint32    bitmask: bit k set <=> the voxel is universal class k + 1
  annotated       (32,) uint8         1 for classes this case annotates (others are unknown)
  spacing         (3,) float32        voxel size in mm
  affine          (4, 4) float64      voxel -> RAS world mm of the stored (cropped) volume
  original_affine (4, 4) float64      of the input file (its own orientation)
  original_shape  (3,) int32          of the input file; see resample.to_original_grid
  source          () int32            index into manifest["sources"]
  case_index      () int32            index into manifest["cases"][split]
  centres_fg / centres_organ / centres_tumor  (N, 3) int16  crop-centre candidates (N varies)

A folder that is another dataset's (its dataset.json names the labels otherwise than the
`--dataset`'s own: `DatasetSpec.label_names`) is refused before any case, naming the file, the
labels that disagree and the dataset(s) the names match. A bad case (unreadable file, shape or
affine mismatch, labels outside the mapping, NaN voxels, empty volume, a DICOM series with a
missing slice or a gantry tilt) stops the run with an error naming its files (`--on-error fail`, the default) or
is skipped and listed in the manifest and the summary (`--on-error skip`). Shards are written
to a temporary folder and renamed at the end: a failed run leaves nothing at --output.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import pathlib
import re
import sys
import time
import zlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from dassemble_jax import cli
from dassemble_jax.ct import datasets, layouts, nifti_io, preprocess, resample, scan_input, taxonomy
from dassemble_jax.ct.nifti_io import CaseError
from dassemble_jax.data.arrayrecord_io import DatasetWriter
from dassemble_jax.progress import Progress

KIND = "dassemble_jax.ct/1"
# Two corresponding files may disagree in the last float bits of their affines.
_AFFINE_ATOL = 1e-3


class ConversionError(CaseError):
  """The run stopped on a bad case (--on-error fail), or no case could be converted."""


def _load_label(case: layouts.Case, spec: datasets.DatasetSpec, shape, affine):
  """-> (label map (X, Y, Z) int, names {value: class name} or None), in the file orientation."""
  if case.label is not None:
    label, label_affine = nifti_io.load(case.label)
    _check_same_grid(case.label, label.shape, label_affine, case.image, shape, affine)
    return label, case.names
  # TotalSegmentator's per-class files: stack the mapped ones into one map, value = position.
  label = np.zeros(shape, np.uint8 if len(case.label_files) < 255 else np.uint16)
  names = {}
  for name, path in case.label_files:
    if name not in spec.labels and spec.drop_unlisted:
      continue
    mask, mask_affine = nifti_io.load(path)
    _check_same_grid(path, mask.shape, mask_affine, case.image, shape, affine)
    value = len(names) + 1
    names[value] = name
    label[np.asarray(mask) > 0] = value
  return label, names


def _check_same_grid(label_path, label_shape, label_affine, image_path, shape, affine):
  if tuple(label_shape) != tuple(shape):
    raise CaseError(f"{label_path}: shape {tuple(label_shape)} differs from the image "
                    f"{image_path} shape {tuple(shape)}")
  if not np.allclose(label_affine, affine, atol=_AFFINE_ATOL):
    raise CaseError(f"{label_path}: affine differs from the image {image_path}:\n"
                    f"{np.round(label_affine, 4)}\nvs\n{np.round(affine, 4)}")


def convert_case(case: layouts.Case, spec: datasets.DatasetSpec, spacing=1.5, *,
                 seed: int = 0, max_centres: int = 2048) -> dict[str, np.ndarray]:
  """One case -> one record (see the module docstring). Raises CaseError naming its files."""
  loaded = scan_input.load(case.image)  # a NIfTI file, or a DICOM series folder or zip
  image, affine = loaded.data, loaded.affine
  if image.dtype.kind not in "iuf":
    raise CaseError(f"{case.image}: unsupported voxel type {image.dtype}")
  original_shape, original_affine = image.shape, affine
  label, names = _load_label(case, spec, image.shape, affine)

  # The image exactly as prediction prepares a scan; the label resampled on the same grid.
  image01, new_affine = preprocess.prepare_image(image, affine, spacing)
  label, ras_affine = nifti_io.ras_view(label, affine)
  label, _ = resample.resample_to_spacing(label, ras_affine, spacing, order=0)
  where = str(case.label or case.label_files[0][1].parent)
  bits, annotated = preprocess.map_labels(label, spec, new_affine, names=names, where=where)
  box = preprocess.body_box(image01, bits, where=str(case.image))
  image01, bits = image01[box], bits[box]
  start = np.array([s.start for s in box], np.float64)
  new_affine = new_affine.copy()
  new_affine[:3, 3] += new_affine[:3, :3] @ start  # voxel 0 of the crop is voxel `start`
  rng = np.random.default_rng([seed, zlib.crc32(case.case_id.encode())])
  centres = preprocess.crop_centres(bits, rng, max_centres)
  return {
      "image": image01.astype(np.float16),
      "label": np.ascontiguousarray(bits),
      "annotated": annotated,
      "spacing": nifti_io.voxel_sizes(new_affine).astype(np.float32),
      "affine": new_affine,
      "original_affine": np.asarray(original_affine, np.float64),
      "original_shape": np.asarray(original_shape, np.int32),
      **{f"centres_{k}": v for k, v in centres.items()},
  }


# ----------------------------------------------------------------------------------------------
# The folder is the dataset it is given as.


def _norm(name: str) -> str:
  return re.sub(r"[^a-z0-9]", "", str(name).lower())


def _accepted_names(spec: datasets.DatasetSpec, value: int) -> set[str]:
  """The names a dataset.json may give local label `value` of `spec` (normalised)."""
  names = {_norm(spec.label_names[value])} if value in spec.label_names else set()
  if value in spec.labels:
    for t in spec.targets(value):
      ids = taxonomy.PAIRS[t] if isinstance(t, str) else (t,)
      for i in ids:
        c = taxonomy.CLASSES[i - 1]
        names |= {_norm(c.name), _norm(c.display_name), _norm(c.prompt_name)}
      if isinstance(t, str):
        names.add(_norm(t))
  return names


def check_label_names(spec: datasets.DatasetSpec, input_dir: pathlib.Path) -> None:
  """ConversionError when the folder's dataset.json names its labels otherwise than `spec`.

  Only datasets that ship a dataset.json and whose spec records its names are checked; the
  names are compared without case, spaces or punctuation, a label may also carry the name of
  the universal class it maps to, and the background's name is not checked.
  """
  if not spec.label_names:
    return
  found = sorted(input_dir.glob("dataset.json")) or sorted(input_dir.glob("*/dataset.json"))
  if not found:
    return  # the layout says what is missing
  try:
    raw = json.loads(found[0].read_text())["labels"]
    labels = {int(k): str(v) for k, v in raw.items()}
  except (OSError, ValueError, KeyError, TypeError, AttributeError):
    return  # not an MSD-style {value: name} table; the layout reports a broken file
  labels.pop(0, None)  # background: 'background', 'bg', 'Background'... all mean the same
  wrong = [(v, name) for v, name in sorted(labels.items())
           if _norm(name) not in _accepted_names(spec, v)]
  if not wrong:
    return
  matches = [other.name for other in datasets.DATASETS.values()
             if set(other.label_names) - {0} == set(labels)
             and all(_norm(n) in _accepted_names(other, v) for v, n in labels.items())]
  told = ", ".join(f"{v} is {name!r} (expected {spec.label_names.get(v, 'no such label')!r})"
                   for v, name in wrong)
  hint = (f"; these are the label names of dataset {' or '.join(map(repr, matches))}"
          if matches else "")
  raise ConversionError(f"{found[0]}: not dataset {spec.name!r}: label {told}{hint}")


# ----------------------------------------------------------------------------------------------
# Parallel driver.


def _work(args):
  case, spec, spacing, seed, max_centres = args
  try:
    return case, convert_case(case, spec, spacing, seed=seed, max_centres=max_centres), None
  except CaseError as e:
    return case, None, str(e)
  except Exception as e:  # noqa: BLE001  (any failure is reported with the case's files)
    return case, None, f"{', '.join(case.files)}: {type(e).__name__}: {e}"


def split_of(case_id: str, val_fraction: float) -> str:
  """Deterministic split from the case id alone (stable when cases are added)."""
  return "val" if zlib.crc32(case_id.encode()) % 10000 < val_fraction * 10000 else "train"


def convert_dataset(spec: datasets.DatasetSpec | str, input_dir, output_dir, *,
                    spacing: float | Sequence[float] = 1.5, on_error: str = "fail",
                    workers: int = 0, shards: int | None = None, overwrite: bool = False,
                    val_fraction: float = 0.0, seed: int = 0, max_centres: int = 2048,
                    class_map: Mapping[int, str] | None = None, limit: int | None = None,
                    progress: bool = True) -> dict[str, Any]:
  """Converts every case of `input_dir`; returns the manifest (also at output_dir)."""
  spec = datasets.get(spec) if isinstance(spec, str) else spec
  if on_error not in ("fail", "skip"):
    raise ValueError(f"on_error must be 'fail' or 'skip', got {on_error!r}")
  input_dir = pathlib.Path(input_dir)
  if not input_dir.is_dir():
    raise ConversionError(f"{input_dir}: input folder does not exist")
  check_label_names(spec, input_dir)
  args = dict(spec.layout_args)
  if spec.layout == "totalsegmentator":
    args["class_map"] = class_map
  if spec.layout == "msd" and not spec.by_name:
    args["valid_labels"] = set(spec.labels)
  cases, problems = layouts.LAYOUTS[spec.layout](input_dir, **args)
  cases = cases[:limit] if limit else cases
  skipped = [{"case": pathlib.Path(p).name, "files": [p], "error": m} for p, m in problems]
  if skipped and on_error == "fail":
    raise ConversionError("; ".join(f"{p}: {m}" for p, m in problems))
  if not cases:
    raise ConversionError(f"{input_dir}: no cases found for layout {spec.layout!r} "
                          f"(dataset {spec.name!r})")
  spacing_list = [float(s) for s in np.broadcast_to(np.asarray(spacing, float), (3,))]
  shards = shards or max(1, min(16, len(cases) // 8))
  jobs = [(c, spec, spacing_list, seed, max_centres) for c in cases]
  case_ids: dict[str, list[str]] = {}
  # done/total, cases/s, ETA and the last case on stderr (a bar on a terminal, lines elsewhere).
  bar = (Progress(len(cases), unit="cases", prefix="convert", stream=sys.stderr)
         if progress else None)
  start = time.monotonic()
  try:
    with DatasetWriter(output_dir, shards_per_split=shards, overwrite=overwrite) as writer:
      for done, (case, record, error) in enumerate(_run(jobs, workers), 1):
        if bar is not None:
          bar.report(done, case=case.case_id)
        if error is not None:
          if on_error == "fail":
            raise ConversionError(f"case {case.case_id}: {error}")
          skipped.append({"case": case.case_id, "files": case.files, "error": error})
          continue
        split = split_of(case.case_id, val_fraction)
        ids = case_ids.setdefault(split, [])
        record["source"] = np.int32(0)
        record["case_index"] = np.int32(len(ids))
        ids.append(case.case_id)
        writer.add(split, record)
      if not case_ids:
        raise ConversionError(f"{input_dir}: every case failed; first: {skipped[0]['error']}")
      manifest = _manifest(spec, spacing_list, case_ids, skipped, time.monotonic() - start)
      writer.close(manifest)
  finally:
    if bar is not None:
      bar.close()
  if skipped and progress:
    print(f"skipped {len(skipped)} bad case(s):", file=sys.stderr)
    for s in skipped:
      print(f"  {s['case']}: {s['error']}", file=sys.stderr)
  return manifest


def _run(jobs, workers: int) -> Iterable:
  if workers <= 1:
    yield from map(_work, jobs)
    return
  # spawn, not fork: the caller may have started JAX or Grain threads, which fork copies badly.
  with multiprocessing.get_context("spawn").Pool(workers) as pool:
    yield from pool.imap(_work, jobs, chunksize=1)  # ordered: output independent of workers


def _manifest(spec, spacing, case_ids, skipped, seconds) -> dict[str, Any]:
  known = sorted(set(spec.annotated) | set(spec.optional))
  return {
      "kind": KIND,
      "dataset": spec.name,
      "description": spec.description,
      "sources": [spec.name],
      "annotated": {spec.name: sorted(spec.annotated)},
      "optional": {spec.name: sorted(spec.optional)},
      "known_classes": {spec.name: known},
      "has_tumor": {spec.name: spec.has_tumor},
      "zoom_augment": {spec.name: spec.zoom_augment},
      "classes": [c.name for c in taxonomy.CLASSES],
      "spacing": spacing,
      "hu_window": [preprocess.HU_MIN, preprocess.HU_MAX],
      "voxel_order": "RAS: axis 0 -> patient right, 1 -> anterior, 2 -> superior",
      "label_encoding": "uint32 bitmask per voxel; bit k set <=> universal class id k + 1",
      "cases": case_ids,
      "skipped": skipped,
      "seconds": round(seconds, 3),
  }


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--dataset", required=True, help=f"one of {sorted(datasets.DATASETS)}")
  parser.add_argument("--input", required=True, help="the dataset's folder, in its own layout")
  parser.add_argument("--output", required=True, help="folder for the shards and manifest")
  parser.add_argument("--spacing", type=float, nargs="+", default=[1.5], help="mm (1 or 3)")
  parser.add_argument("--on-error", choices=("fail", "skip"), default="fail")
  parser.add_argument("--workers", type=int, default=0, help="worker processes (0: in-process)")
  parser.add_argument("--shards", type=int, default=None)
  parser.add_argument("--val-fraction", type=float, default=0.0)
  parser.add_argument("--class-map", default=None,
                      help="TotalSegmentator multilabel files: JSON {value: name} or "
                           "map_to_binary.py (parsed, never executed)")
  parser.add_argument("--class-map-key", default="total")
  parser.add_argument("--limit", type=int, default=None, help="convert only the first N cases")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--overwrite", action="store_true")
  cli.add_debug_argument(parser)
  a = parser.parse_args(argv)
  problem = _flag_problem(a)
  if problem:
    print(f"error: {problem}", file=sys.stderr)
    return 2
  return cli.run_main(lambda _: _convert(a), output=a.output, debug=a.debug,
                      user_errors=(CaseError, FileExistsError, KeyError))


def _flag_problem(a) -> str | None:
  """What is wrong with the flags, before any file is read (None: nothing)."""
  if len(a.spacing) not in (1, 3):
    return f"--spacing {' '.join(map(str, a.spacing))}: give 1 or 3 values (mm)"
  if not all(np.isfinite(s) and s > 0 for s in a.spacing):
    return f"--spacing {' '.join(map(str, a.spacing))}: voxel sizes must be > 0 mm"
  if a.workers < 0:
    return f"--workers {a.workers}: must be >= 0"
  if a.shards is not None and a.shards < 1:
    return f"--shards {a.shards}: must be >= 1"
  if not 0.0 <= a.val_fraction < 1.0:
    return f"--val-fraction {a.val_fraction}: must be in [0, 1)"
  return None


def _convert(a) -> int:
  cli.check_output_folder(a.output, "--output")
  class_map = layouts.read_class_map(a.class_map, a.class_map_key) if a.class_map else None
  manifest = convert_dataset(
      a.dataset, a.input, a.output, spacing=a.spacing if len(a.spacing) == 3 else a.spacing[0],
      on_error=a.on_error, workers=a.workers, shards=a.shards, overwrite=a.overwrite,
      val_fraction=a.val_fraction, seed=a.seed, class_map=class_map, limit=a.limit)
  counts = {split: len(ids) for split, ids in manifest["cases"].items()}
  print(f"wrote {a.output}: {counts}, skipped {len(manifest['skipped'])}, "
        f"{manifest['seconds']:.1f} s")
  return 0


if __name__ == "__main__":
  sys.exit(main())
