"""Label spaces and their assembly from partially labelled sources.

A *label space* is the ordered union of the classes of every source. A *source* declares which of
those classes it annotates and how its own (local) label values map onto them. Assembly gives, for
every example, a multi-hot target and a known-class mask: the model is trained with one sigmoid
per class, and the loss only sees the (example, class) pairs that the example's source annotates.

Two regimes for the classes a source does *not* annotate:
- unknown (default, as in the papers): they are masked out of the loss;
- implied negatives (`exclusive=True`): when the user declares the classes mutually exclusive
  (a single-label problem such as MNIST), an example whose class is known to be c is known to be
  negative for every other class of the label space, whichever source annotates it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np


class LabelSpaceError(ValueError):
  """An assembly is malformed: unknown or duplicate names, or a class nobody annotates."""


@dataclasses.dataclass(frozen=True)
class Source:
  """One dataset of an assembly.

  Attributes:
    name: unique name of the source (e.g. 'D0').
    classes: names of the assembled classes this source annotates.
    local_to_class: local label value -> class name (one of `classes`). A local value missing from
      the mapping means "none of my classes": the example is a negative for every class the
      source annotates (e.g. MNIST-zero: only "0" is mapped, every other digit is a negative).
  """
  name: str
  classes: tuple[str, ...]
  local_to_class: Mapping[int, str]


@dataclasses.dataclass(frozen=True)
class Assembled:
  """Targets of an assembly. Shapes: targets/known (N, C) float32, source (N,) int32."""
  targets: np.ndarray
  known: np.ndarray
  source: np.ndarray


def validate(label_space: Sequence[str], sources: Sequence[Source]) -> None:
  """Raises LabelSpaceError unless the assembly is well formed."""
  _check_unique(label_space, "class names in the label space")
  _check_unique([s.name for s in sources], "source names")
  space = set(label_space)
  covered = set()
  for s in sources:
    _check_unique(s.classes, f"classes of source {s.name!r}")
    unknown = [c for c in s.classes if c not in space]
    if unknown:
      raise LabelSpaceError(
          f"source {s.name!r} annotates {unknown}, which are not in the label space "
          f"{list(label_space)}")
    stray = {v: c for v, c in s.local_to_class.items() if c not in s.classes}
    if stray:
      raise LabelSpaceError(
          f"source {s.name!r} maps local labels {stray} to classes it does not annotate "
          f"{list(s.classes)}")
    covered.update(s.classes)
  orphans = [c for c in label_space if c not in covered]
  if orphans:
    raise LabelSpaceError(
        f"classes {orphans} are annotated by no source; the model could never learn them. "
        "Drop them from the label space or add a source that labels them.")


def _check_unique(names: Sequence[str], what: str) -> None:
  seen, dup = set(), []
  for n in names:
    if n in seen:
      dup.append(n)
    seen.add(n)
  if dup:
    raise LabelSpaceError(f"duplicate {what}: {sorted(set(dup))}")


def assemble(label_space: Sequence[str], sources: Sequence[Source],
             local_labels: Sequence[np.ndarray], *, exclusive: bool = False) -> Assembled:
  """Assembles single-label sources into multi-hot targets and known masks.

  Args:
    label_space: ordered class names (C of them).
    sources: the sources, one per entry of `local_labels`.
    local_labels: per source, an int array (N_s,) of its examples' local label values.
    exclusive: the classes are mutually exclusive, so a positive for class c is a known negative
      for every other class of the label space (even those its source does not annotate).

  Returns:
    Assembled targets of the concatenation of all sources' examples, in source order.
  """
  validate(label_space, sources)
  if len(local_labels) != len(sources):
    raise LabelSpaceError(f"{len(sources)} sources but {len(local_labels)} label arrays")
  index = {c: i for i, c in enumerate(label_space)}
  num_classes = len(label_space)
  targets, known, source_ids = [], [], []
  for sid, (src, labels) in enumerate(zip(sources, local_labels)):
    labels = np.asarray(labels).astype(np.int64)
    n = labels.shape[0]
    # Local value -> column of its class, or -1 for "none of this source's classes".
    lut_keys = np.array(sorted(src.local_to_class), dtype=np.int64)
    lut_vals = np.array([index[src.local_to_class[k]] for k in lut_keys], dtype=np.int64)
    pos = np.searchsorted(lut_keys, labels) if lut_keys.size else np.zeros(n, np.int64)
    pos = np.clip(pos, 0, max(lut_keys.size - 1, 0))
    hit = (lut_keys[pos] == labels) if lut_keys.size else np.zeros(n, bool)
    column = np.where(hit, lut_vals[pos] if lut_keys.size else 0, -1)

    t = np.zeros((n, num_classes), np.float32)
    rows = np.nonzero(column >= 0)[0]
    t[rows, column[rows]] = 1.0
    k = np.zeros((n, num_classes), np.float32)
    k[:, [index[c] for c in src.classes]] = 1.0
    if exclusive:
      # A known positive rules out every other class; a "none of mine" example only rules out
      # this source's classes (it may belong to a class of another source).
      k[rows] = 1.0
    targets.append(t)
    known.append(k)
    source_ids.append(np.full((n,), sid, np.int32))
  return Assembled(np.concatenate(targets), np.concatenate(known), np.concatenate(source_ids))


def fully_labelled(label_space: Sequence[str], labels: np.ndarray,
                   class_of_label: Mapping[int, str]) -> Assembled:
  """Every class known for every example (a test set, or a fully labelled source)."""
  src = Source("all", tuple(label_space), dict(class_of_label))
  return assemble(label_space, [src], [labels], exclusive=True)
