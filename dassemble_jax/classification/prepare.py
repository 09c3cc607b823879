"""The convert step of a classification experiment: raw data -> assembled ArrayRecord shards.

Runs once per workdir: loads the raw dataset named by the config, assembles the sources' partial
labels (`assembly.build_splits`) and writes `workdir/data/` (shards + manifest with the label
space, each source's annotated classes, counts and checksums). A rerun verifies the checksums and
that the manifest was made from the same data settings, then reuses it.
"""

from __future__ import annotations

import hashlib
import json
import os

import jax
import numpy as np

from dassemble_jax.classification import assembly
from dassemble_jax.cli import ConfigError
from dassemble_jax.data import arrayrecord_io


def _data_fingerprint(config) -> str:
  """Hash of the settings the shards depend on (not training hyper-parameters)."""
  d = config.data.to_dict()
  # Shard counts and decoding threads change how the data is written, not what it is.
  keys = {k: d[k] for k in sorted(d) if k not in ("num_shards", "workers")}
  return hashlib.sha256(json.dumps(keys, sort_keys=True, default=str).encode()).hexdigest()[:16]


def load_raw(data_cfg):
  """{'train'|'validation'|'test': (images uint8 NHWC, labels)} of the configured dataset."""
  name = data_cfg.dataset
  if name == "mnist":
    from dassemble_jax.data import mnist
    return mnist.load_mnist(data_cfg.source, data_cfg.path), tuple(mnist.MNIST_CLASSES)
  if name == "cifar10":
    from dassemble_jax.data import cifar
    return cifar.load_cifar10(data_cfg.source, data_cfg.path), tuple(cifar.CIFAR10_CLASSES)
  raise ConfigError(f"unknown dataset {name!r}; expected 'mnist', 'cifar10' or 'chestxray'")


def prepare(config, workdir: str) -> str:
  """Makes sure workdir/data holds this config's assembled shards; returns that path."""
  out = os.path.join(workdir, "data")
  fingerprint = _data_fingerprint(config)
  if jax.process_index() == 0:
    if os.path.exists(os.path.join(out, arrayrecord_io.MANIFEST_NAME)):
      manifest = arrayrecord_io.read_manifest(out)
      if manifest.get("fingerprint") != fingerprint:
        raise ConfigError(
            f"{out}: converted from other data settings (fingerprint "
            f"{manifest.get('fingerprint')} != {fingerprint}); use a fresh --workdir")
      arrayrecord_io.verify_shards(out)
    elif config.data.dataset == "chestxray":
      # Multi-label sources with their own files and splits: chestxray/convert.py assembles them.
      from dassemble_jax.chestxray import convert as chestxray_convert
      chestxray_convert.convert(config.data, out, fingerprint=fingerprint)
    else:
      _convert(config, out, fingerprint)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices("dassemble_jax data prepared")
  return out


def _convert(config, out: str, fingerprint: str) -> None:
  d = config.data
  raw, raw_class_names = load_raw(d)
  specs = assembly.source_specs(d.sources)
  label_space = [str(c) for c in d.label_space]
  class_of_label = {i: n for i, n in enumerate(raw_class_names) if n in label_space}
  splits = assembly.build_splits(
      raw, label_space, specs, class_of_label=class_of_label,
      test_labels=[int(x) for x in d.test_labels], exclusive=bool(d.exclusive),
      data_seed=int(d.seed))
  manifest = {
      "fingerprint": fingerprint,
      "dataset": d.dataset,
      "label_space": label_space,
      "exclusive": bool(d.exclusive),
      "sources": [{"name": s.name, "classes": list(s.classes), "members": list(s.members),
                   "num_train": int((splits["train"]["source"] == i).sum()),
                   "num_validation": int((splits["validation"]["source"] == i).sum())}
                  for i, s in enumerate(specs)],
      "test_labels": [int(x) for x in d.test_labels],
  }
  with arrayrecord_io.DatasetWriter(out, shards_per_split=int(d.num_shards),
                                    overwrite=True) as writer:
    for split, arrays in splits.items():
      n = arrays["image"].shape[0]
      for i in range(n):
        writer.add(split, {k: np.asarray(v[i]) for k, v in arrays.items()})
    writer.close(manifest)
