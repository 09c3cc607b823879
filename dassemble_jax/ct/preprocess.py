"""Per-case preprocessing after RAS reorientation and resampling: intensities, labels, crop.

* `scale_hu`: clip HU to [-175, 250] and scale to [0, 1] (the anchor's window): the one HU window.
* `prepare_image`: a CT in its file's orientation -> the model's input (RAS, resampled, HU
  window), for conversion and prediction alike.
* `map_labels`: a local label map -> a uint32 bitmask in universal ids (bit k = class k + 1),
  with tumor voxels added to their host organ and left/right pairs split.
* `split_pair_label`: a dataset label covering both organs of a pair -> (right, left), every
  voxel kept: the two largest connected components are the organs, the one lying more to the
  patient's right (larger RAS world x) the right one, fragments join the nearer side.
  (Prediction's lung split keeps only the two largest components:
  `segmentation.postprocess.keep_two_largest_by_side`.)
* `body_box`: the bounding box of the body (HU > -175) and of every labelled voxel.
* `crop_centres`: a few thousand voxel coordinates per category (foreground, organ, tumor), drawn
  once at conversion so the input pipeline picks crop centres without scanning the volume.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from scipy import ndimage

from dassemble_jax.ct import bitmask, nifti_io, resample, taxonomy
from dassemble_jax.ct.datasets import DatasetSpec
from dassemble_jax.ct.nifti_io import CaseError

HU_MIN, HU_MAX = -175.0, 250.0
_TUMOR_BITS = np.uint32(sum(int(taxonomy.bit(i)) for i in taxonomy.TUMOR_IDS))
_FULL_CONNECTIVITY = np.ones((3, 3, 3), bool)


def scale_hu(hu: np.ndarray, *, in_place: bool = False) -> np.ndarray:
  """HU -> float32 in [0, 1]: clip to [-175, 250], then (hu + 175) / 425.

  `in_place`: `hu` is a float32 array and is overwritten (no copy of a whole CT).
  """
  if in_place:
    if hu.dtype != np.float32:
      raise ValueError(f"in-place HU window needs float32, got {hu.dtype}")
    out = np.clip(hu, HU_MIN, HU_MAX, out=hu)
  else:
    out = np.clip(hu.astype(np.float32, copy=False), HU_MIN, HU_MAX)
  out -= HU_MIN
  out *= np.float32(1.0 / (HU_MAX - HU_MIN))
  return out


def prepare_image(volume: np.ndarray, affine: np.ndarray, spacing
                  ) -> tuple[np.ndarray, np.ndarray]:
  """CT HU (X, Y, Z, file orientation, any real dtype) -> ([0, 1] float32 image, its affine).

  Reoriented to RAS (`nifti_io.ras_view`, no copy), resampled linearly to `spacing` mm
  (`resample.resample_to_spacing`, reading the view and writing the only full-size array), HU
  window in place: the model's input, for training records and prediction alike.
  """
  ras, ras_affine = nifti_io.ras_view(np.asarray(volume), affine)
  image, new_affine = resample.resample_to_spacing(ras, ras_affine, spacing, order=1,
                                                   out_dtype=np.float32)
  if np.may_share_memory(image, volume):  # nothing resampled, nothing copied: don't overwrite
    image = image.copy()
  return scale_hu(image, in_place=True), new_affine


def split_pair_label(mask: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Splits a paired organ's label (X, Y, Z) into (right, left) boolean masks, every voxel kept.

  The two largest 26-connected components are the two organs; the one whose centroid has the
  larger RAS world x is the right one (RAS+: x grows towards the patient's right; in the
  reference's words, the smaller index along the right-to-left axis). Smaller components join
  the side of the midpoint between the two organs they lie on, so no labelled voxel is lost.
  A single component is assigned by the side of the volume's centre it lies on.
  """
  mask = np.asarray(mask, bool)
  right = np.zeros_like(mask)
  left = np.zeros_like(mask)
  components, n = ndimage.label(mask, structure=_FULL_CONNECTIVITY)
  if n == 0:
    return right, left
  index = np.arange(1, n + 1)
  sizes = np.bincount(components.ravel(), minlength=n + 1)[1:]
  centres = np.asarray(ndimage.center_of_mass(mask, components, index), np.float64)  # (n, 3)
  world_x = (np.c_[centres, np.ones(n)] @ np.asarray(affine, np.float64).T)[:, 0]
  if n == 1:
    centre = (np.asarray(mask.shape, np.float64) - 1) / 2
    split_x = (np.asarray(affine) @ np.r_[centre, 1.0])[0]
  else:
    a, b = np.argsort(-sizes, kind="stable")[:2]
    split_x = (world_x[a] + world_x[b]) / 2
  is_right = np.r_[False, world_x > split_x]  # per component id, 0 = background
  right = is_right[components] & mask
  left = mask & ~right
  return right, left


def _keys(values: np.ndarray, spec: DatasetSpec, names: Mapping[int, str] | None, where: str):
  """Local voxel values -> keys of spec.labels (the value itself, or its class name)."""
  keys = {}
  for v in values.tolist():
    if spec.by_name:
      if v == 0:
        continue
      if names is None or v not in names:
        raise CaseError(f"{where}: label value {v} has no class name in the class map")
      keys[v] = names[v]
    else:
      keys[v] = v
  unknown = sorted({str(k) for k in keys.values() if k not in spec.labels})
  if unknown and not spec.drop_unlisted:
    raise CaseError(f"{where}: label values {unknown} are outside the mapping of dataset "
                    f"{spec.name!r} (known: {sorted(spec.labels)})")
  return {v: k for v, k in keys.items() if k in spec.labels}


def map_labels(local: np.ndarray, spec: DatasetSpec, affine: np.ndarray, *,
               names: Mapping[int, str] | None = None,
               where: str = "label") -> tuple[np.ndarray, np.ndarray]:
  """Local label map (X, Y, Z) ints -> (bitmask (X, Y, Z) uint32, annotated (32,) uint8).

  `names` maps voxel values to class names for name-keyed datasets (TotalSegmentator).
  """
  if local.dtype.kind == "f":
    if not np.all(np.isfinite(local)):
      raise CaseError(f"{where}: label map has NaN or infinite values")
    if np.any(local != np.round(local)):
      raise CaseError(f"{where}: label map has non-integer values")
  local = local.astype(np.int64, copy=False)
  values = np.unique(local)
  if values[0] < 0:
    raise CaseError(f"{where}: negative label values {values[values < 0].tolist()}")
  keys = _keys(values, spec, names, where)

  # One table lookup writes every direct class; pairs collect a mask first, split below.
  lut = np.zeros(int(values[-1]) + 1, np.uint32)
  pair_values: dict[str, list[int]] = {}
  for v, key in keys.items():
    for t in spec.targets(key):
      if isinstance(t, str):
        pair_values.setdefault(t, []).append(v)
      else:
        lut[v] |= taxonomy.bit(t)
  bits = lut[local]
  pairs = {name: np.isin(local, vals) for name, vals in pair_values.items()}

  # Tumor voxels also belong to their host organ, when the dataset annotates it.
  known = set(spec.annotated) | set(spec.optional)
  for tumor in sorted(spec.output_ids() & taxonomy.TUMOR_IDS):
    host = taxonomy.TUMOR_HOST[tumor]
    if isinstance(host, int) and host not in known:
      continue
    if isinstance(host, str) and host not in spec.pair_targets():
      continue  # unannotated, or annotated per side and mapped explicitly in the table
    in_tumor = (bits & taxonomy.bit(tumor)) != 0
    if not in_tumor.any():
      continue
    if isinstance(host, str):
      pairs[host] = pairs.get(host, np.zeros(local.shape, bool)) | in_tumor
    else:
      bits[in_tumor] |= taxonomy.bit(host)

  for name, mask in pairs.items():
    right, left = split_pair_label(mask, affine)
    right_id, left_id = taxonomy.PAIRS[name]
    bits[right] |= taxonomy.bit(right_id)
    bits[left] |= taxonomy.bit(left_id)

  present = [i for i in spec.optional if np.any(bits & taxonomy.bit(i))]
  return bits, taxonomy.annotated_vector(list(spec.annotated) + present)


def body_box(image01: np.ndarray, bits: np.ndarray | None = None, *,
             where: str = "image") -> tuple[slice, slice, slice]:
  """Bounding box (3 slices) of the body (scaled image > 0, i.e. HU > -175) and the labels."""
  mask = image01 > 0
  if bits is not None:
    mask |= bits != 0
  box = bitmask.class_boxes(mask[..., None])[0]
  if box is None:
    raise CaseError(f"{where}: empty volume (no voxel above {HU_MIN:g} HU and no label)")
  return box


def crop_centres(bits: np.ndarray, rng: np.random.Generator,
                 max_points: int = 2048) -> dict[str, np.ndarray]:
  """Up to `max_points` voxel coordinates (N, 3) int16 per category of crop centre.

  'fg': any labelled voxel; 'tumor': any lesion voxel; 'organ': labelled but not lesion.
  Background centres need no list: the pipeline draws them uniformly and rejects labelled ones.
  """
  if max(bits.shape) > np.iinfo(np.int16).max:
    raise ValueError(f"volume {bits.shape} too large for int16 coordinates")
  fg = bits != 0
  tumor = (bits & _TUMOR_BITS) != 0
  out = {}
  for name, mask in (("fg", fg), ("organ", fg & ~tumor), ("tumor", tumor)):
    flat = np.flatnonzero(mask)
    if flat.size > max_points:
      flat = np.sort(rng.choice(flat, size=max_points, replace=False))
    out[name] = np.stack(np.unravel_index(flat, bits.shape), axis=-1).astype(np.int16)
  return out
