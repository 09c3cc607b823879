"""Build an assembled classification dataset (train / validation / test) from a raw one.

A raw dataset is {'train'|'validation'|'test': (images uint8 (N,H,W,C), labels int (N,))}. Each
source of the config draws its own examples from the raw training and validation pools: the pools
are shuffled once with `data_seed` and sources take, in order, the first examples whose raw label
is one of their *members* (by default, the labels of the classes they annotate). Sources never
share an image. The test set holds every test image whose label is in `test_labels` with every
class known: the question asked is always "how well is class c told apart from everything
else in the experiment's world", whatever the training sources saw.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np

from dassemble_jax.classification import labels as labels_lib
from dassemble_jax.cli import ConfigError

Raw = Mapping[str, tuple[np.ndarray, np.ndarray]]


@dataclasses.dataclass(frozen=True)
class SourceSpec:
  """A source of a classification assembly (see configs/mnist_*.py)."""
  name: str
  classes: tuple[str, ...]        # assembled class names it annotates
  members: tuple[int, ...]        # raw labels of the images it holds
  num_train: int                  # examples drawn from the training pool (-1: all available)
  num_validation: int             # examples drawn from the validation pool (-1: all available)


def source_specs(config_sources) -> list[SourceSpec]:
  """Reads the `sources` list of a config into SourceSpecs."""
  specs = []
  for s in config_sources:
    classes = tuple(str(c) for c in s["classes"])
    members = tuple(int(m) for m in s.get("members") or [int(c) for c in classes])
    specs.append(SourceSpec(str(s["name"]), classes, members, int(s["num_train"]),
                            int(s["num_validation"])))
  return specs


def _draw(pool_labels: np.ndarray, specs: Sequence[SourceSpec], counts: Sequence[int],
          seed: int, split: str) -> list[np.ndarray]:
  """Disjoint index sets, one per source, drawn from a shuffled pool."""
  order = np.random.default_rng(seed).permutation(pool_labels.shape[0])
  taken = np.zeros(pool_labels.shape[0], bool)
  picks = []
  for spec, n in zip(specs, counts):
    eligible = order[np.isin(pool_labels[order], spec.members) & ~taken[order]]
    if n >= 0:
      if eligible.size < n:
        raise ConfigError(f"source {spec.name!r} asks for {n} {split} examples of labels "
                         f"{spec.members}, but only {eligible.size} are left in the pool")
      eligible = eligible[:n]
    taken[eligible] = True
    picks.append(np.sort(eligible))
  return picks


def build_splits(raw: Raw, label_space: Sequence[str], specs: Sequence[SourceSpec], *,
                 class_of_label: Mapping[int, str], test_labels: Sequence[int],
                 exclusive: bool, data_seed: int) -> dict[str, dict[str, np.ndarray]]:
  """Returns {'train'|'validation'|'test': {'image', 'targets', 'known', 'source', 'label'}}."""
  sources = [labels_lib.Source(s.name, s.classes,
                               {v: c for v, c in class_of_label.items() if c in s.classes})
             for s in specs]
  labels_lib.validate(label_space, sources)
  out = {}
  for split, counts in (("train", [s.num_train for s in specs]),
                        ("validation", [s.num_validation for s in specs])):
    images, labels = raw[split]
    picks = _draw(np.asarray(labels), specs, counts, data_seed + (split == "validation"), split)
    assembled = labels_lib.assemble(label_space, sources, [labels[p] for p in picks],
                                    exclusive=exclusive)
    idx = np.concatenate(picks)
    out[split] = {"image": images[idx], "targets": assembled.targets, "known": assembled.known,
                  "source": assembled.source, "label": np.asarray(labels[idx], np.int32)}
  images, labels = raw["test"]
  keep = np.isin(labels, np.asarray(test_labels))
  full = labels_lib.fully_labelled(label_space, labels[keep], class_of_label)
  out["test"] = {"image": images[keep], "targets": full.targets, "known": full.known,
                 "source": full.source, "label": np.asarray(labels[keep], np.int32)}
  return out
