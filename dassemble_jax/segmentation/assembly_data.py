"""The data of a segmentation job: the phantom sources converted once, configs pointed at them.

With no converted datasets named (`config.data.shard_dirs` empty), every segmentation job
(universal, add-a-class, liver-synthetic) and the trainer itself generate the embedded phantom's
sources and convert them into WORKDIR/data: training cases, held-out cases drawn with another
seed, validation cases with a third. A rerun finds them converted and reuses them.
"""

from __future__ import annotations

import os
import pathlib

import jax
from jax.experimental import multihost_utils

from dassemble_jax.ct import convert, phantom
from dassemble_jax.data import arrayrecord_io

TEST_SEED_OFFSET = 1000  # held-out phantom cases: same generator, another seed
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
           ("test", d.phantom_test_cases, config.seed + TEST_SEED_OFFSET)]
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
