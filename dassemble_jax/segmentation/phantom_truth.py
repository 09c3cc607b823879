"""The phantom's hidden ground truth: every painted class of a converted phantom case.

A phantom source annotates only its dataset's classes, but `ct.phantom.make_case` paints every
organ in every case: regenerating a case from its seed gives the labels its source hides. This is
what makes the phantom the place to measure pseudo labels honestly (jobs/complete.py).

`truth_bits(record, ...)` regenerates the case a converted record came from and brings its masks
onto the record's grid the way `ct.convert` brought the source's label there: in the file's own
orientation (the phantom stores x and y flipped), to RAS, nearest-neighbour resampling to the
model spacing, then the record's body crop (read from its affine). `agreement` checks it against
the record's human labels (DSC of every class the source annotates), so a wrong seed or grid
cannot pass unnoticed.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence

import numpy as np

from dassemble_jax.ct import bitmask, nifti_io, phantom, resample, taxonomy
from dassemble_jax.data import arrayrecord_io

# Lesion classes the phantom can paint, by the name make_case takes.
_LESIONS = ("liver_tumor", "kidney_tumor", "pancreas_tumor")


def painted_classes() -> np.ndarray:
  """(32,) bool: the classes the phantom paints (its organs and lesion kinds)."""
  names = [n for n in phantom_structures() if n in taxonomy.BY_NAME] + list(_LESIONS)
  return taxonomy.annotated_vector([taxonomy.BY_NAME[n].id for n in names]).astype(bool)


def phantom_structures() -> list[str]:
  """Names of the phantom's structures (one tiny case's mask keys)."""
  case = phantom.make_case(np.random.default_rng(0), shape=(8, 8, 8), spacing=(20.0,) * 3)
  return list(case.masks)


def case_number(case_id: str) -> int:
  """The case index i a phantom case id ends with ('volume-3', 'case_00003', 'img0003')."""
  m = re.search(r"(\d+)$", case_id)
  if not m:
    raise ValueError(f"{case_id!r} is not a phantom case id (no trailing number)")
  return int(m.group(1))


def source_tumors(source: str) -> list[str]:
  """The lesion kinds a phantom source paints: the lesion classes its spec annotates."""
  spec = phantom.source_spec(source)
  return [c.name for c in taxonomy.CLASSES if c.id in spec.annotated and c.name in _LESIONS]


def truth_bits(record, source: str, case_id: str, *, seed: int, shape: Sequence[int],
               native_spacing: Sequence[float], spacing) -> np.ndarray:
  """(X, Y, Z) uint32 bitmask of every painted class on the record's (cropped, model) grid."""
  i = case_number(case_id)
  rng = np.random.default_rng([seed, phantom.ALL_SOURCE_NAMES.index(source), i])
  case = phantom.make_case(rng, tuple(shape), tuple(native_spacing), source_tumors(source))
  bits = np.zeros(case.hu.shape, np.uint32)
  for name, mask in case.masks.items():
    if name in taxonomy.BY_NAME:
      bits[mask] |= np.uint32(taxonomy.bit(taxonomy.BY_NAME[name].id))
  # As the phantom wrote the file (x and y flipped), then as convert read it.
  file_bits = np.ascontiguousarray(np.flip(bits, (0, 1)))
  if tuple(file_bits.shape) != tuple(int(n) for n in record["original_shape"]):
    raise ValueError(f"{source}/{case_id}: regenerated shape {file_bits.shape} differs from the "
                     f"record's original shape {tuple(record['original_shape'])}")
  ras, ras_affine = nifti_io.ras_view(file_bits, np.asarray(record["original_affine"]))
  grid, grid_affine = resample.resample_to_spacing(ras, ras_affine, spacing, order=0)
  start = np.linalg.solve(grid_affine, np.r_[np.asarray(record["affine"])[:3, 3], 1.0])[:3]
  start = np.round(start).astype(int)
  size = np.asarray(record["label"].shape)
  if np.any(start < 0) or np.any(start + size > grid.shape):
    raise ValueError(f"{source}/{case_id}: the record's crop does not fit the regenerated grid")
  return np.ascontiguousarray(grid[tuple(slice(s, s + n) for s, n in zip(start, size))])


def agreement(record, truth: np.ndarray) -> dict[str, float]:
  """DSC of the record's human labels vs the regenerated truth, per class the case annotates."""
  human = bitmask.unpack(record["label"])
  full = bitmask.unpack(truth)
  out = {}
  for k in np.flatnonzero(np.asarray(record["annotated"], bool)):
    a, b = human[..., k], full[..., k]
    total = int(a.sum()) + int(b.sum())
    out[taxonomy.CLASSES[k].name] = 1.0 if total == 0 else 2.0 * int(np.sum(a & b)) / total
  return out


def write_truth_shards(src_dir, out_dir, *, seed: int, shape, native_spacing) -> dict:
  """A copy of a converted phantom folder whose labels are the full truth (every painted class
  annotated): held-out cases on which every class can be scored. Returns the manifest."""
  manifest = arrayrecord_io.read_manifest(src_dir)
  source = manifest["sources"][0]
  known = painted_classes()
  extra = {k: v for k, v in manifest.items() if k not in ("format", "splits", "fields")}
  ids = sorted(int(i) + 1 for i in np.flatnonzero(known))
  extra.update(annotated={source: ids}, optional={source: []}, known_classes={source: ids},
               description=f"{manifest.get('description', '')}; full hidden truth")
  checks = []
  with arrayrecord_io.DatasetWriter(out_dir, shards_per_split=1, overwrite=True) as writer:
    for split, case_ids in manifest["cases"].items():
      for record in arrayrecord_io.read_records(src_dir, split):
        case_id = case_ids[int(record["case_index"])]
        truth = truth_bits(record, source, case_id, seed=seed, shape=shape,
                           native_spacing=native_spacing, spacing=manifest["spacing"])
        checks.append(min(agreement(record, truth).values(), default=1.0))
        writer.add(split, {**record, "label": truth, "annotated": known.astype(np.uint8)})
    writer.close(extra)
  if checks and min(checks) < 0.9:
    raise ValueError(f"{os.fspath(src_dir)}: regenerated truth disagrees with the human labels "
                     f"(min DSC {min(checks):.3f}); wrong seed or phantom size?")
  return arrayrecord_io.read_manifest(out_dir)
