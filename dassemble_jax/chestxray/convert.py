"""Chest X-ray datasets in their own layouts -> one assembled set of ArrayRecord shards.

Once per workdir (the classification job's `prepare` calls `convert`), or from the command line:

  python -m dassemble_jax.chestxray.convert --setting=D0+D1 --output=/data/cxr_d0d1 \
      --nih=/data/ChestX-ray14 --chexpert=/data/CheXpert-v1.0 [--image-size=256] [--workers=8]

Each source of the data config is one dataset annotating some shared classes
(`label_space.py`). Per source: read its label files, keep the configured views, split by patient
(`splits.py`: the dataset's own test split; validation drawn from the training pool by patient),
optionally subsample, map its labels onto the config's label space (targets + known mask under
the uncertainty policy; classes it does not annotate are unknown), check that every image it
will use exists, then decode and resize them (a thread pool: Pillow releases the GIL) into
records {image uint8 (S, S, 1), targets (C,), known (C,), source int32, row int32 (the image's
data row in its label file: CheXpert's test split is valid.csv, COVIDx's test.txt)}.
The manifest holds the label space, the synonym table used, and per source and split: images,
patients, positives / negatives / unknown per class, and CheXpert's uncertain counts. Any bad input
(missing column, unknown class name, label outside {1, 0, -1, blank}, image missing or
unreadable) raises DataFormatError naming the file and row, and nothing is left at the output.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import pathlib
import sys
from collections.abc import Callable, Sequence

import numpy as np

from dassemble_jax import cli
from dassemble_jax import progress as progress_lib
from dassemble_jax.chestxray import chexpert, covidx, images, label_space, nih, splits
from dassemble_jax.data import arrayrecord_io
from dassemble_jax.data.errors import DataFormatError

SPLITS = ("train", "validation", "test")
_CHUNK = 64  # images decoded per batch of thread-pool work (bounds memory)


@dataclasses.dataclass(frozen=True)
class SourceSpec:
  """One source of a chest X-ray assembly (see classification/experiments.py)."""
  name: str
  dataset: str                    # 'nih' | 'chexpert' | 'covidx'
  classes: tuple[str, ...]        # shared classes it annotates
  num_train: int                  # -1: all
  num_validation: int
  num_test: int


def source_specs(config_sources) -> list[SourceSpec]:
  return [SourceSpec(str(s["name"]), str(s["dataset"]), tuple(str(c) for c in s["classes"]),
                     int(s.get("num_train", -1)), int(s.get("num_validation", -1)),
                     int(s.get("num_test", -1))) for s in config_sources]


def _get(d, key, default=None):
  """A field of the data config (a ConfigDict or a plain dict) with a default."""
  return d.get(key, default)


def dataset_root(data_cfg, dataset: str) -> pathlib.Path:
  root = _get(data_cfg, f"{dataset}_root")
  if not root:
    raise DataFormatError(f"config.data.{dataset}_root is not set: point it at the "
                          f"{_TITLE[dataset]} folder")
  root = pathlib.Path(root)
  if not root.is_dir():
    raise DataFormatError(f"{root}: {_TITLE[dataset]} folder not found")
  return root


_TITLE = {"nih": "ChestX-ray14", "chexpert": "CheXpert-v1.0", "covidx": "COVIDx CXR"}


# ------------------------------------------------------------------------------------------------
# Per dataset: the label table, its own split pools and where each row's image is.

@dataclasses.dataclass
class Loaded:
  table: label_space.LabelTable
  pools: dict[str, np.ndarray]     # 'train_val' and 'test' row indices
  image_of: Callable[[int], pathlib.Path | None]  # row index -> its image file (None: absent)
  label_files: list[str]


def load_dataset(dataset: str, root: pathlib.Path, *, view: str, test_fraction: float,
                 seed: int) -> Loaded:
  """Reads a dataset's label files and its published split (or a patient split without one)."""
  if dataset == "nih":
    path = nih.find_csv(root)
    table = nih.read_labels(path)
    pools = nih.official_split(root, table)
    if pools is None:  # no official lists: a seeded patient split
      test = splits.patient_fraction_mask(table.patients, test_fraction, seed + 7)
      pools = {"train_val": np.nonzero(~test)[0], "test": np.nonzero(test)[0]}
    index = nih.index_images(root)
    files = [str(path)] + [str(root / f) for f in (nih.TRAIN_VAL_LIST, nih.TEST_LIST)
                           if (root / f).is_file()]
    return Loaded(table, pools, lambda i: index.get(table.paths[i]), files)
  if dataset == "chexpert":
    parts = [chexpert.read_labels(root / name) for name in ("train.csv", "valid.csv")]
    table = label_space.concat(parts)
    pools = {"train_val": np.arange(len(parts[0])),
             "test": np.arange(len(parts[0]), len(table))}
    return _filtered(Loaded(table, pools, lambda i: chexpert.image_path(root, table.paths[i]),
                            [p.source_file for p in parts]), view)
  if dataset == "covidx":
    found = {s: covidx.find_split_file(root, s) for s in ("train", "val", "test")}
    for s in ("train", "test"):
      if found[s] is None:
        raise DataFormatError(f"{root}: no COVIDx {s} split file (looked for "
                              f"{list(covidx.SPLIT_FILES[s])})")
    parts = [covidx.read_split_file(found[s], s) for s in ("train", "val", "test") if found[s]]
    table = label_space.concat(parts)
    n_test = len(parts[-1])
    pools = {"train_val": np.arange(len(table) - n_test),
             "test": np.arange(len(table) - n_test, len(table))}
    return Loaded(table, pools, lambda i: root / table.paths[i], [p.source_file for p in parts])
  raise ValueError(f"unknown chest X-ray dataset {dataset!r}; expected 'nih', 'chexpert' or "
                   "'covidx'")


def _filtered(loaded: Loaded, view: str) -> Loaded:
  if view == "all":
    return loaded
  if view not in chexpert.VIEWS:
    raise ValueError(f"view {view!r}: expected one of {chexpert.VIEWS}")
  keep = loaded.table.views == view
  new_index = np.cumsum(keep) - 1
  pools = {k: new_index[v[keep[v]]] for k, v in loaded.pools.items()}
  old = np.nonzero(keep)[0]
  image_of = loaded.image_of
  return Loaded(loaded.table.take(old), pools, lambda i: image_of(old[i]), loaded.label_files)


# ------------------------------------------------------------------------------------------------
# The plan: which rows go where, with which targets (nothing decoded yet).

@dataclasses.dataclass
class Planned:
  rows: np.ndarray        # indices into the source's table
  file_rows: np.ndarray   # the data row of each in its label file (1-based; header excluded)
  targets: np.ndarray     # (n, C)
  known: np.ndarray       # (n, C)
  image_paths: list       # pathlib.Path per row
  where: list[str]        # 'file: row R (line L)' per row


def plan_source(spec: SourceSpec, data_cfg, label_space_names: Sequence[str],
                overrides) -> tuple[dict[str, Planned], dict]:
  """The rows of every split of one source, checked (images exist); and its manifest entry."""
  root = dataset_root(data_cfg, spec.dataset)
  seed = int(_get(data_cfg, "seed", 0))
  loaded = load_dataset(spec.dataset, root, view=str(_get(data_cfg, "view", "frontal")),
                        test_fraction=float(_get(data_cfg, "test_fraction", 0.2)), seed=seed)
  table = loaded.table
  bad = [c for c in spec.classes if c not in label_space_names]
  if bad:
    raise ValueError(f"source {spec.name!r} annotates {bad}, not in the label space "
                     f"{list(label_space_names)}")
  parts, dropped = splits.split_by_patient(
      table.patients, loaded.pools,
      validation_fraction=float(_get(data_cfg, "validation_fraction", 0.1)), seed=seed)
  limits = {"train": spec.num_train, "validation": spec.num_validation, "test": spec.num_test}
  raw = label_space.shared_values(table, spec.classes, overrides)
  policy = str(_get(data_cfg, "uncertainty", "ignore"))
  blank = str(_get(data_cfg, "blank", "negative"))
  columns = [list(label_space_names).index(c) for c in spec.classes]
  plans, entry = {}, {"name": spec.name, "dataset": spec.dataset, "root": str(root),
                      "label_files": loaded.label_files, "classes": list(spec.classes),
                      "dropped_for_patient_overlap": dropped, "splits": {}}
  for split in SPLITS:
    rows = splits.subsample(parts[split], limits[split], seed, f"{spec.name}/{split}")
    t, k = label_space.to_targets(raw[rows], policy=policy, blank=blank)
    targets = np.zeros((len(rows), len(label_space_names)), np.float32)
    known = np.zeros_like(targets)
    targets[:, columns], known[:, columns] = t, k
    paths, where = [], []
    for r in rows:
      path = loaded.image_of(int(r))
      if path is None or not pathlib.Path(path).is_file():
        shown = table.paths[r] if path is None else path
        raise DataFormatError(f"{table.where(int(r))}: image {shown} not found under {root}")
      paths.append(path)
      where.append(table.where(int(r)))
    plans[split] = Planned(rows, table.rows[rows], targets, known, paths, where)
    entry["splits"][split] = _split_stats(table, rows, raw[rows], spec.classes, t, k)
  return plans, entry


def _split_stats(table, rows, raw, classes, targets, known) -> dict:
  per_class = {}
  for j, c in enumerate(classes):
    per_class[c] = {"positive": int((targets[:, j] * known[:, j]).sum()),
                    "negative": int(((1 - targets[:, j]) * known[:, j]).sum()),
                    "unknown": int((1 - known[:, j]).sum()),
                    "uncertain_in_file": int((raw[:, j] == -1).sum()),
                    "blank_in_file": int(np.isnan(raw[:, j]).sum())}
  return {"images": len(rows), "patients": len(set(table.patients[rows].tolist())),
          "classes": per_class}


# ------------------------------------------------------------------------------------------------
# Writing.

def convert(data_cfg, out_dir: str | pathlib.Path, *, fingerprint: str = "",
            overwrite: bool = True, show_progress: bool = True) -> dict:
  """Writes the assembled shards + manifest for `data_cfg`; returns the manifest's extra keys."""
  names = [str(c) for c in data_cfg["label_space"]]
  if len(set(names)) != len(names):
    raise ValueError(f"duplicate class names in the label space {names}")
  overrides = label_space.parse_overrides(_get(data_cfg, "synonyms", ()) or ())
  specs = source_specs(data_cfg["sources"])
  if len({s.name for s in specs}) != len(specs):
    raise ValueError(f"duplicate source names in {[s.name for s in specs]}")
  orphans = [c for c in names if not any(c in s.classes for s in specs)]
  if orphans:
    raise ValueError(f"classes {orphans} are annotated by no source")
  size = int(_get(data_cfg, "image_size", 256))
  workers = max(1, int(_get(data_cfg, "workers", 4)))
  plans, entries = [], []
  for spec in specs:  # every label file read and every image checked before any decoding
    p, e = plan_source(spec, data_cfg, names, overrides)
    plans.append(p)
    entries.append(e)
  manifest = {
      "fingerprint": fingerprint, "dataset": "chestxray", "label_space": names,
      "image_size": size, "uncertainty": str(_get(data_cfg, "uncertainty", "ignore")),
      "blank": str(_get(data_cfg, "blank", "negative")),
      "view": str(_get(data_cfg, "view", "frontal")),
      "synonyms": {s.dataset: label_space.synonyms(s.dataset, overrides) for s in specs},
      "sources": entries,
  }
  total = sum(len(p[s].rows) for p in plans for s in SPLITS)
  bar = progress_lib.Progress(total, unit="images", prefix="convert") if show_progress else None
  done = reported = 0
  with arrayrecord_io.DatasetWriter(out_dir, shards_per_split=int(_get(data_cfg, "num_shards", 1)),
                                    overwrite=overwrite) as writer, \
      concurrent.futures.ThreadPoolExecutor(workers) as pool:
    for split in SPLITS:
      for sid, plan in enumerate(plans):
        p = plan[split]
        for start in range(0, len(p.rows), _CHUNK):
          stop = min(start + _CHUNK, len(p.rows))
          decoded = pool.map(lambda i, p=p: images.load(p.image_paths[i], size, p.where[i]),
                             range(start, stop))
          for i, image in zip(range(start, stop), decoded):
            writer.add(split, {"image": image, "targets": p.targets[i], "known": p.known[i],
                               "source": np.int32(sid), "row": np.int32(p.file_rows[i])})
          done += stop - start
          # About a hundred progress lines per conversion, not one per chunk.
          if bar is not None and (done - reported >= total // 100 or done == total):
            bar.report(done, split=split, source=specs[sid].name)
            reported = done
    writer.close(manifest)
  if bar is not None:
    bar.close()
  return manifest


def main(argv: Sequence[str] | None = None) -> int:
  # Settings live with the other experiment families; imported here only for the command line.
  from dassemble_jax.classification import experiments  # pylint: disable=import-outside-toplevel
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--setting", default="D0+D1",
                      help=f"one of {list(experiments.CHESTXRAY_SETTINGS)}, optionally ',tiny'")
  parser.add_argument("--output", required=True)
  parser.add_argument("--nih", default=None, help="ChestX-ray14 folder")
  parser.add_argument("--chexpert", default=None, help="CheXpert-v1.0 folder (train.csv)")
  parser.add_argument("--covidx", default=None, help="COVIDx CXR folder (train.txt, test.txt)")
  parser.add_argument("--image-size", type=int, default=None)
  parser.add_argument("--workers", type=int, default=None)
  parser.add_argument("--overwrite", action="store_true")
  cli.add_debug_argument(parser)
  a = parser.parse_args(argv)
  # Bad labels or images (DataFormatError), a bad setting (ValueError), an existing --output
  # without --overwrite, an unwritable one or a full disk (OSError): one line, exit status 1.
  return cli.run_main(lambda _: _convert_and_report(a, experiments), output=a.output,
                      user_errors=(DataFormatError, ValueError), debug=a.debug)


def _convert_and_report(a, experiments) -> int:
  cli.check_output_folder(a.output, "--output")
  config = experiments.chestxray_assemble(a.setting)
  d = config.data
  d.nih_root, d.chexpert_root, d.covidx_root = a.nih, a.chexpert, a.covidx
  if a.image_size:
    d.image_size = a.image_size
  if a.workers:
    d.workers = a.workers
  manifest = convert(d, a.output, overwrite=a.overwrite)
  counts = {s["name"]: {k: v["images"] for k, v in s["splits"].items()}
            for s in manifest["sources"]}
  print(f"wrote {a.output}: {counts}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
