"""Post-processing of predicted masks on the host (NumPy/SciPy), in universal class ids.

Masks are (X, Y, Z, C) bool in the model's grid (RAS-oriented: array axis 0 runs towards the
patient's right, `dassemble_jax.ct.nifti_io`); channel k is class id k + 1. Classes overlap: a
tumor voxel is also a voxel of its host organ.

The steps, as in the anchor:
1. thresholds per class;
2. the largest 26-connected component per organ (never for lesions: a liver may carry many);
3. lungs: the union of both lung channels is split into its two largest components, the one
   further to the patient's right (larger world x) being the right lung;
4. kidney and liver lesions are kept only inside their host organ, closed then dilated (a 5^3
   box each), so a tumor at the organ's border is not cut away.

Every connected-component pass runs on the bounding box of its mask only: organs are small
compared with a CT, and labelling the whole volume 25 times would dominate the prediction time.
"""

from __future__ import annotations

from typing import Iterable, Mapping, Sequence

import numpy as np
from scipy import ndimage

from dassemble_jax.ct import taxonomy

NUM_CLASSES = taxonomy.NUM_CLASSES
LUNG_RIGHT, LUNG_LEFT = taxonomy.PAIRS["lung"]
_FULL = np.ones((3, 3, 3), bool)  # 26-connectivity

# Organs whose prediction is reduced to its largest component. Excluded: the hepatic vessels (a
# tree that a threshold legitimately breaks into pieces) and the lungs (split as a pair instead).
LCC_IDS: tuple[int, ...] = tuple(
    i for i in range(1, NUM_CLASSES + 1)
    if i not in taxonomy.TUMOR_IDS and i not in (15, LUNG_RIGHT, LUNG_LEFT))

# Lesions kept only inside their host organ: kidney tumor, kidney cyst, liver tumor.
HOST_FILTER_IDS: tuple[int, ...] = (26, 27, 32)


def host_ids(lesion_id: int) -> tuple[int, ...]:
  """Universal ids of a lesion's host organ(s): a pair (right, left) or a single organ."""
  host = taxonomy.TUMOR_HOST[lesion_id]
  return tuple(taxonomy.PAIRS[host]) if isinstance(host, str) else (host,)


def apply_thresholds(probs: np.ndarray, thresholds: float | Sequence[float]) -> np.ndarray:
  """(X, Y, Z, C) probabilities -> bool masks, prob > threshold (one per class or one for all)."""
  probs = np.asarray(probs)
  t = np.asarray(thresholds, np.float32)
  if t.ndim == 1 and t.shape[0] != probs.shape[-1]:
    raise ValueError(f"{t.shape[0]} thresholds for {probs.shape[-1]} classes")
  return probs > t


def _bbox(mask: np.ndarray) -> tuple[slice, ...] | None:
  """Tight bounding box of a nonempty mask as slices, None when empty."""
  slices = []
  for axis in range(mask.ndim):
    others = tuple(a for a in range(mask.ndim) if a != axis)
    nz = np.flatnonzero(mask.any(axis=others))
    if nz.size == 0:
      return None
    slices.append(slice(nz[0], nz[-1] + 1))
  return tuple(slices)


def largest_components(mask: np.ndarray, k: int = 1) -> np.ndarray:
  """Keeps the k largest 26-connected components of a boolean mask (ties: lower label first)."""
  mask = np.asarray(mask, bool)
  out = np.zeros_like(mask)
  box = _bbox(mask)
  if box is None:
    return out
  components, n = ndimage.label(mask[box], structure=_FULL)
  if n <= k:
    out[box] = mask[box]
    return out
  sizes = np.bincount(components.ravel(), minlength=n + 1)[1:]
  keep = np.zeros(n + 1, bool)
  keep[1 + np.argsort(-sizes, kind="stable")[:k]] = True
  out[box] = keep[components]
  return out


def _world_x(points: np.ndarray, affine: np.ndarray | None) -> np.ndarray:
  """RAS world x (mm) of voxel coordinates (n, 3); identity affine when None."""
  if affine is None:
    return points[:, 0]
  affine = np.asarray(affine, np.float64)
  return points @ affine[0, :3] + affine[0, 3]


def split_left_right(mask: np.ndarray, affine: np.ndarray | None = None
                     ) -> tuple[np.ndarray, np.ndarray]:
  """Two largest components of a paired organ's mask -> (right, left) bool masks.

  The component whose centroid has the larger RAS world x (through `affine`; array axis 0 when
  None, i.e. an array already in RAS orientation) is the patient's right organ. Smaller
  components are dropped. With a single component, it is assigned to the side of the volume's
  centre it lies on, and the other side is empty.
  """
  mask = np.asarray(mask, bool)
  right, left = np.zeros_like(mask), np.zeros_like(mask)
  box = _bbox(mask)
  if box is None:
    return right, left
  components, n = ndimage.label(mask[box], structure=_FULL)
  offset = np.array([s.start for s in box], np.float64)
  sizes = np.bincount(components.ravel(), minlength=n + 1)[1:]
  top = 1 + np.argsort(-sizes, kind="stable")[:2]
  centres = np.asarray(ndimage.center_of_mass(mask[box], components, top), np.float64) + offset
  x = _world_x(centres.reshape(-1, 3), affine)
  if n == 1:
    middle = (np.asarray(mask.shape, np.float64) - 1) / 2
    is_right = x[0] > _world_x(middle[None], affine)[0]
    (right if is_right else left)[box] = components == top[0]
    return right, left
  r, l = (top[0], top[1]) if x[0] > x[1] else (top[1], top[0])
  right[box] = components == r
  left[box] = components == l
  return right, left


def split_lungs(masks: np.ndarray, affine: np.ndarray | None = None) -> np.ndarray:
  """Re-assigns the two lung channels by position; returns new (X, Y, Z, C) masks.

  The union of both lung channels is split into its two largest components. If the lungs touch
  (one component), the model's own channels are kept, restricted to that component.
  """
  masks = np.array(masks, bool, copy=True)
  r, l = LUNG_RIGHT - 1, LUNG_LEFT - 1
  union = masks[..., r] | masks[..., l]
  box = _bbox(union)
  if box is None:
    return masks
  _, n = ndimage.label(union[box], structure=_FULL)
  if n >= 2:
    masks[..., r], masks[..., l] = split_left_right(union, affine)
  else:
    masks[..., r] &= union
    masks[..., l] &= union
  return masks


def _padded_morphology(mask: np.ndarray, size: int, op) -> np.ndarray:
  """Binary morphology with a size^3 box, padded so objects at the array border are not cut."""
  pad = size
  padded = np.pad(mask, pad)
  out = op(padded, structure=np.ones((size,) * 3, bool))
  return out[pad:-pad, pad:-pad, pad:-pad]


def host_region(host: np.ndarray, closing: int = 5, dilation: int = 5) -> np.ndarray:
  """The region a lesion may occupy: the host organ closed, then dilated (size^3 boxes)."""
  host = np.asarray(host, bool)
  out = np.zeros_like(host)
  box = _bbox(host)
  if box is None:
    return out
  # Work on the bounding box grown by the dilation radius: the result cannot leave it.
  grow = dilation // 2 + 1
  big = tuple(slice(max(s.start - grow, 0), min(s.stop + grow, n))
              for s, n in zip(box, host.shape))
  region = host[big]
  if closing > 1:
    region = _padded_morphology(region, closing, ndimage.binary_closing)
  if dilation > 1:
    region = _padded_morphology(region, dilation, ndimage.binary_dilation)
  out[big] = region
  return out


def postprocess(masks: np.ndarray, affine: np.ndarray | None = None, *,
                lcc_ids: Iterable[int] = LCC_IDS, lungs: bool = True,
                host_filter_ids: Iterable[int] = HOST_FILTER_IDS,
                closing: int = 5, dilation: int = 5) -> np.ndarray:
  """The anchor's post-processing on (X, Y, Z, C) bool masks; returns new masks.

  Args:
    masks: (X, Y, Z, C) bool, channel k = class id k + 1; C may be smaller than 32 (ids beyond
      C are skipped).
    affine: voxel -> RAS world affine of the masks' grid (None: the array is in RAS order).
    lcc_ids: organs reduced to their largest component.
    lungs: split the lungs into right/left by position.
    host_filter_ids: lesions kept only inside their closed, dilated host organ(s).
  """
  masks = np.array(masks, bool, copy=True)
  c = masks.shape[-1]
  for i in lcc_ids:
    if i <= c:
      masks[..., i - 1] = largest_components(masks[..., i - 1], 1)
  if lungs and max(LUNG_RIGHT, LUNG_LEFT) <= c:
    masks = split_lungs(masks, affine)
  for lesion in host_filter_ids:
    hosts = [h for h in host_ids(lesion) if h <= c]
    if lesion > c or not hosts or not masks[..., lesion - 1].any():
      continue
    host = np.logical_or.reduce([masks[..., h - 1] for h in hosts])
    masks[..., lesion - 1] &= host_region(host, closing, dilation)
  return masks


def masks_to_label_map(masks: np.ndarray) -> np.ndarray:
  """(X, Y, Z, C) bool -> (X, Y, Z) uint8 universal ids, 0 = background.

  Organs are drawn in id order, then lesions over them (a liver tumor voxel, also liver, shows
  as the tumor).
  """
  masks = np.asarray(masks, bool)
  c = masks.shape[-1]
  if c > 255:
    raise ValueError(f"{c} classes do not fit a uint8 label map")
  labels = np.zeros(masks.shape[:-1], np.uint8)
  organs = [i for i in range(1, c + 1) if i not in taxonomy.TUMOR_IDS]
  lesions = [i for i in range(1, c + 1) if i in taxonomy.TUMOR_IDS]
  for i in organs + lesions:
    labels[masks[..., i - 1]] = i
  return labels


def label_map_to_masks(labels: np.ndarray, num_classes: int = NUM_CLASSES, *,
                       add_hosts: bool = True) -> np.ndarray:
  """(X, Y, Z) ids -> (X, Y, Z, C) bool; lesion voxels are also set in their host organ.

  For a paired host (kidneys, lungs) each lesion voxel joins the side of the nearest voxel
  labelled with either organ of the pair; with no such voxel in the map it joins neither.
  """
  labels = np.asarray(labels)
  if labels.size and int(labels.max()) > num_classes:
    raise ValueError(f"label {int(labels.max())} exceeds num_classes={num_classes}")
  masks = np.zeros(labels.shape + (num_classes,), bool)
  for i in np.unique(labels):
    if i:
      masks[..., i - 1] = labels == i
  if not add_hosts:
    return masks
  for lesion in sorted(taxonomy.TUMOR_IDS):
    if lesion > num_classes or not masks[..., lesion - 1].any():
      continue
    hosts = [h for h in host_ids(lesion) if h <= num_classes]
    lesion_mask = masks[..., lesion - 1]
    if len(hosts) == 1:
      masks[..., hosts[0] - 1] |= lesion_mask
      continue
    host_voxels = np.isin(labels, hosts)
    if not host_voxels.any():
      continue
    # Nearest host voxel of every lesion voxel: an EDT of the non-host region with indices, on
    # the bounding box of lesion + hosts (every host voxel is inside it, so it is exact there).
    box = _bbox(host_voxels | lesion_mask)
    _, nearest = ndimage.distance_transform_edt(~host_voxels[box], return_indices=True)
    nearest_label = labels[box][tuple(nearest)]
    for h in hosts:
      masks[box + (h - 1,)] |= lesion_mask[box] & (nearest_label == h)
  return masks


def tumor_present(masks: np.ndarray, lesion_ids: Iterable[int] = taxonomy.TUMOR_IDS
                  ) -> dict[int, bool]:
  """Per-scan detection: lesion id -> whether any voxel of it survived post-processing."""
  c = masks.shape[-1]
  return {i: bool(masks[..., i - 1].any()) for i in sorted(lesion_ids) if i <= c}


def thresholds_from_mapping(mapping: Mapping[int, float], default: float = 0.5,
                            num_classes: int = NUM_CLASSES) -> np.ndarray:
  """(C,) thresholds from {class id: threshold} with a default for the others."""
  t = np.full((num_classes,), default, np.float32)
  for i, v in mapping.items():
    t[i - 1] = v
  return t
