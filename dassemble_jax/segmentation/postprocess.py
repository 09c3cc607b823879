"""Post-processing of predicted masks on the host (NumPy/SciPy), in universal class ids.

Masks are (X, Y, Z, C) bool in the model's grid (RAS-oriented: array axis 0 runs towards the
patient's right, `dassemble_jax.ct.nifti_io`); channel k is class id k + 1. Classes overlap: a
tumor voxel is also a voxel of its host organ. `postprocess_bits` takes them packed
(`ct.bitmask`: (X, Y, Z) uint32, bit k = class id k + 1), as `predict` moves them off the device.

The steps, as in the anchor:
1. thresholds per class;
2. the largest 26-connected component per organ (never for lesions: a liver may carry many);
3. lungs: the union of both lung channels is split into its two largest components, the one
   further to the patient's right (larger world x) being the right lung;
4. kidney and liver lesions are kept only inside their host organ, closed then dilated (a 5^3
   box each), so a tumor at the organ's border is not cut away.

Every step runs on a class's bounding box only (organs are small compared with a CT), and all C
boxes come from two passes over the array (`bitmask.class_boxes`), not 3 C passes over strided
channel views: with a separable box morphology, 266 x 266 x 200 x 32 masks take 0.2 s, not 6 s
(benchmarks/predict_host.md). Label maps are drawn from bool or packed masks (lesions over
organs: for packed masks the highest set bit).
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
from scipy import ndimage

from dassemble_jax.ct import bitmask, taxonomy

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

Box = bitmask.Box


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


# ---------------------------------------------------------------------------------------------
# Bounding boxes.


def _bbox(mask: np.ndarray) -> Box | None:
  """Tight bounding box of a (X, Y, Z) mask as slices, None when empty."""
  return bitmask.class_boxes(np.asarray(mask, bool)[..., None])[0]


def _union_box(boxes: Iterable[Box | None]) -> Box | None:
  """The smallest box holding all the given boxes (None when all are None)."""
  boxes = [b for b in boxes if b is not None]
  if not boxes:
    return None
  return tuple(slice(min(b[a].start for b in boxes), max(b[a].stop for b in boxes))
               for a in range(3))


def _shrink(box: Box, crop: np.ndarray) -> Box | None:
  """The tight box of `crop` (a mask over `box`) in the full array's coordinates."""
  inner = _bbox(crop)
  if inner is None:
    return None
  return tuple(slice(o.start + s.start, o.start + s.stop) for o, s in zip(box, inner))


def _grown(box: Box, by: int, shape: Sequence[int]) -> Box:
  return tuple(slice(max(s.start - by, 0), min(s.stop + by, n)) for s, n in zip(box, shape))


# ---------------------------------------------------------------------------------------------
# Channel stores: the steps read and write one class on one box, whatever the layout.


class _MaskStore:
  """(X, Y, Z, C) bool masks, modified in place."""

  def __init__(self, masks: np.ndarray):
    self.array, self.shape, self.num_classes = masks, masks.shape[:3], masks.shape[-1]
    self.boxes = bitmask.class_boxes(masks)

  def get(self, k: int, box: Box) -> np.ndarray:
    return self.array[box + (k,)]

  def set(self, k: int, box: Box, crop: np.ndarray | bool) -> None:
    self.array[box + (k,)] = crop


class _BitStore:
  """(X, Y, Z) bitmask, modified in place."""

  def __init__(self, bits: np.ndarray, num_classes: int):
    self.array, self.shape, self.num_classes = bits, bits.shape, num_classes
    self.boxes = bitmask.class_boxes(bits, num_classes)

  def _bit(self, k: int):
    return self.array.dtype.type(1) << self.array.dtype.type(k)

  def get(self, k: int, box: Box) -> np.ndarray:
    return (self.array[box] & self._bit(k)) != 0

  def set(self, k: int, box: Box, crop: np.ndarray | bool) -> None:
    view = self.array[box]
    view &= ~self._bit(k)
    view |= np.asarray(crop, self.array.dtype) << self.array.dtype.type(k)


# ---------------------------------------------------------------------------------------------
# The steps, on a class's box.


def _largest_in_box(crop: np.ndarray, k: int = 1) -> np.ndarray | None:
  """k largest 26-components of a mask cropped to its tight box; None when nothing is removed.

  Components are numbered in raster order, which a crop keeps, so ties (lower label first) are
  broken as on the full array.
  """
  components, n = ndimage.label(crop, structure=_FULL)
  if n <= k:
    return None
  sizes = np.bincount(components.ravel(), minlength=n + 1)[1:]
  keep = np.zeros(n + 1, bool)
  keep[1 + np.argsort(-sizes, kind="stable")[:k]] = True
  return keep[components]


def largest_components(mask: np.ndarray, k: int = 1) -> np.ndarray:
  """Keeps the k largest 26-connected components of a boolean mask (ties: lower label first)."""
  mask = np.asarray(mask, bool)
  out = np.zeros_like(mask)
  box = _bbox(mask)
  if box is None:
    return out
  kept = _largest_in_box(mask[box], k)
  out[box] = mask[box] if kept is None else kept
  return out


def _world_x(points: np.ndarray, affine: np.ndarray | None) -> np.ndarray:
  """RAS world x (mm) of voxel coordinates (n, 3); identity affine when None."""
  if affine is None:
    return points[:, 0]
  affine = np.asarray(affine, np.float64)
  return points @ affine[0, :3] + affine[0, 3]


def _two_largest_by_side_in_box(crop: np.ndarray, box: Box, shape: Sequence[int],
                                affine: np.ndarray | None,
                                labelled: tuple[np.ndarray, int] | None = None
                                ) -> tuple[np.ndarray, np.ndarray]:
  """`keep_two_largest_by_side` of a mask cropped to its tight `box` in a `shape` volume."""
  components, n = labelled if labelled is not None else ndimage.label(crop, structure=_FULL)
  offset = np.array([s.start for s in box], np.float64)
  sizes = np.bincount(components.ravel(), minlength=n + 1)[1:]
  top = 1 + np.argsort(-sizes, kind="stable")[:2]
  centres = np.asarray(ndimage.center_of_mass(crop, components, top), np.float64) + offset
  x = _world_x(centres.reshape(-1, 3), affine)
  if n == 1:
    middle = (np.asarray(shape, np.float64) - 1) / 2
    one, empty = components == top[0], np.zeros(crop.shape, bool)
    return (one, empty) if x[0] > _world_x(middle[None], affine)[0] else (empty, one)
  r, l = (top[0], top[1]) if x[0] > x[1] else (top[1], top[0])
  return components == r, components == l


def keep_two_largest_by_side(mask: np.ndarray, affine: np.ndarray | None = None
                             ) -> tuple[np.ndarray, np.ndarray]:
  """Two largest components of a predicted paired organ's mask -> (right, left) bool masks.

  The component whose centroid has the larger RAS world x (through `affine`; array axis 0 when
  None, i.e. an array already in RAS orientation) is the patient's right organ. Smaller
  components are dropped (prediction noise; `ct.preprocess.split_pair_label`, for dataset labels,
  keeps every voxel instead). With a single component, it is assigned to the side of the
  volume's centre it lies on, and the other side is empty.
  """
  mask = np.asarray(mask, bool)
  right, left = np.zeros_like(mask), np.zeros_like(mask)
  box = _bbox(mask)
  if box is not None:
    right[box], left[box] = _two_largest_by_side_in_box(mask[box], box, mask.shape, affine)
  return right, left


def _split_lungs(store, affine: np.ndarray | None) -> None:
  """Lungs re-assigned by position (see `split_lungs`), in place on a channel store."""
  r, l = LUNG_RIGHT - 1, LUNG_LEFT - 1
  box = _union_box([store.boxes[r], store.boxes[l]])
  if box is None:
    return
  union = store.get(r, box) | store.get(l, box)
  labelled = ndimage.label(union, structure=_FULL)
  if labelled[1] < 2:
    return  # touching lungs: the model's channels are kept (each lies inside the union)
  right, left = _two_largest_by_side_in_box(union, box, store.shape, affine, labelled)
  store.set(r, box, right)
  store.set(l, box, left)
  store.boxes[r], store.boxes[l] = _shrink(box, right), _shrink(box, left)


def split_lungs(masks: np.ndarray, affine: np.ndarray | None = None) -> np.ndarray:
  """Re-assigns the two lung channels by position; returns new (X, Y, Z, C) masks.

  The union of both lung channels is split into its two largest components. If the lungs touch
  (one component), the model's own channels are kept, restricted to that component.
  """
  store = _MaskStore(np.array(masks, bool, order="C", copy=True))
  _split_lungs(store, affine)
  return store.array


def _box_filter(mask: np.ndarray, size: int, dilate: bool) -> np.ndarray:
  """Binary dilation or erosion with a size^3 box, voxels outside the array counting as 0.

  A box is the sum of three segments, so for an odd size this is three 1D max (min) filters
  (`ndimage.maximum_filter` runs them separably): bit for bit SciPy's `binary_dilation` /
  `binary_erosion` with a size^3 structure, ~size^2 / 3 times fewer operations.
  """
  if size % 2 == 0:  # an even box's centre follows SciPy's origin rules: leave it to SciPy
    op = ndimage.binary_dilation if dilate else ndimage.binary_erosion
    return op(mask, structure=np.ones((size,) * 3, bool))
  f = ndimage.maximum_filter if dilate else ndimage.minimum_filter
  return f(mask.view(np.uint8), size=size, mode="constant", cval=0).view(bool)


def _padded_morphology(mask: np.ndarray, size: int, closing: bool) -> np.ndarray:
  """Binary closing or dilation with a size^3 box, padded so objects at the border are not cut."""
  pad = size
  out = _box_filter(np.pad(mask, pad), size, dilate=True)
  if closing:
    out = _box_filter(out, size, dilate=False)
  return out[pad:-pad, pad:-pad, pad:-pad]


def _region_in_box(host: np.ndarray, closing: int, dilation: int) -> np.ndarray:
  """`host_region` of a host cropped to its box grown by dilation // 2 + 1 (same shape)."""
  if closing > 1:
    host = _padded_morphology(host, closing, closing=True)
  if dilation > 1:
    host = _padded_morphology(host, dilation, closing=False)
  return host


def host_region(host: np.ndarray, closing: int = 5, dilation: int = 5) -> np.ndarray:
  """The region a lesion may occupy: the host organ closed, then dilated (size^3 boxes)."""
  host = np.asarray(host, bool)
  out = np.zeros_like(host)
  box = _bbox(host)
  if box is None:
    return out
  # Work on the bounding box grown by the dilation radius: the result cannot leave it.
  big = _grown(box, dilation // 2 + 1, host.shape)
  out[big] = _region_in_box(host[big], closing, dilation)
  return out


def _filter_lesion(store, lesion: int, hosts: Sequence[int], closing: int,
                   dilation: int) -> None:
  """lesion &= host_region(union of hosts), on the lesion's and the hosts' boxes only."""
  k, lesion_box = lesion - 1, store.boxes[lesion - 1]
  host_box = _union_box([store.boxes[h - 1] for h in hosts])
  inter = None
  if host_box is not None:
    big = _grown(host_box, dilation // 2 + 1, store.shape)
    inter = tuple(slice(max(a.start, b.start), min(a.stop, b.stop))
                  for a, b in zip(lesion_box, big))
  if inter is None or any(s.start >= s.stop for s in inter):
    store.set(k, lesion_box, False)  # no host, or none near: no lesion voxel survives
    store.boxes[k] = None
    return
  region = _region_in_box(np.logical_or.reduce([store.get(h - 1, big) for h in hosts]),
                          closing, dilation)                                # over `big`
  keep = np.zeros(tuple(s.stop - s.start for s in lesion_box), bool)     # over the lesion's box
  keep[tuple(slice(i.start - o.start, i.stop - o.start) for i, o in zip(inter, lesion_box))] = (
      region[tuple(slice(i.start - o.start, i.stop - o.start) for i, o in zip(inter, big))])
  crop = store.get(k, lesion_box) & keep
  store.set(k, lesion_box, crop)
  store.boxes[k] = _shrink(lesion_box, crop)


def _run(store, affine, lcc_ids, lungs, host_filter_ids, closing, dilation, workers) -> None:
  """The post-processing steps in place on a channel store."""
  c = store.num_classes
  ids = [i for i in lcc_ids if i <= c and store.boxes[i - 1] is not None]

  def lcc(i: int):  # (SciPy's label works on its own copy; only the write-back is shared)
    box = store.boxes[i - 1]
    return i, box, _largest_in_box(store.get(i - 1, box), 1)

  if workers > 1 and len(ids) > 1:
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
      results = list(pool.map(lcc, ids))
  else:
    results = [lcc(i) for i in ids]
  for i, box, kept in results:
    if kept is not None:
      store.set(i - 1, box, kept)
      store.boxes[i - 1] = _shrink(box, kept)
  if lungs and max(LUNG_RIGHT, LUNG_LEFT) <= c:
    _split_lungs(store, affine)
  for lesion in host_filter_ids:
    hosts = [h for h in host_ids(lesion) if h <= c]
    if lesion > c or not hosts or store.boxes[lesion - 1] is None:
      continue
    _filter_lesion(store, lesion, hosts, closing, dilation)


def postprocess(masks: np.ndarray, affine: np.ndarray | None = None, *,
                lcc_ids: Iterable[int] = LCC_IDS, lungs: bool = True,
                host_filter_ids: Iterable[int] = HOST_FILTER_IDS,
                closing: int = 5, dilation: int = 5, copy: bool = True,
                workers: int = 1) -> np.ndarray:
  """The anchor's post-processing on (X, Y, Z, C) bool masks; returns new masks.

  Args:
    masks: (X, Y, Z, C) bool, channel k = class id k + 1; C may be smaller than 32 (ids beyond
      C are skipped).
    affine: voxel -> RAS world affine of the masks' grid (None: the array is in RAS order).
    lcc_ids: organs reduced to their largest component.
    lungs: split the lungs into right/left by position.
    host_filter_ids: lesions kept only inside their closed, dilated host organ(s).
    closing, dilation: box sizes of the host region's closing and dilation.
    copy: False modifies a writable, C-ordered bool `masks` in place and returns it (saves a
      copy of the whole array: at 266 x 266 x 200 x 32 as long as all the steps).
    workers: threads for the largest-component step (SciPy's label releases the GIL).
  """
  masks = np.asarray(masks)
  if masks.ndim != 4:
    raise ValueError(f"masks must be (X, Y, Z, C), got shape {masks.shape}")
  in_place = (not copy and masks.dtype == bool and masks.flags.c_contiguous
              and masks.flags.writeable)
  out = masks if in_place else np.array(masks, bool, order="C", copy=True)
  _run(_MaskStore(out), affine, lcc_ids, lungs, host_filter_ids, closing, dilation, workers)
  return out


def postprocess_bits(bits: np.ndarray, num_classes: int = NUM_CLASSES,
                     affine: np.ndarray | None = None, *, lcc_ids: Iterable[int] = LCC_IDS,
                     lungs: bool = True, host_filter_ids: Iterable[int] = HOST_FILTER_IDS,
                     closing: int = 5, dilation: int = 5, copy: bool = True,
                     workers: int = 1) -> np.ndarray:
  """`postprocess` on packed masks: (X, Y, Z) bitmask (see `bitmask.pack`) -> new bitmask.

  Equal to bitmask.pack(postprocess(bitmask.unpack(bits, num_classes))), without ever holding the
  (X, Y, Z, C) bool array. `copy=False` works in place on a writable C-ordered `bits`.
  """
  bits = np.asarray(bits)
  dtype = bitmask.bits_dtype(num_classes)
  if bits.ndim != 3 or bits.dtype != dtype:
    raise ValueError(f"bits must be (X, Y, Z) {dtype} for {num_classes} classes, got "
                     f"{bits.dtype} {bits.shape}")
  if num_classes < 64 and bits.size and int(np.bitwise_or.reduce(bits, axis=None)) >> num_classes:
    raise ValueError(f"bits set beyond the {num_classes} classes")
  in_place = not copy and bits.flags.c_contiguous and bits.flags.writeable
  out = bits if in_place else np.array(bits, order="C", copy=True)
  _run(_BitStore(out, num_classes), affine, lcc_ids, lungs, host_filter_ids, closing, dilation,
       workers)
  return out


# ---------------------------------------------------------------------------------------------
# Label maps and per-scan summaries.


def draw_order(num_classes: int) -> list[int]:
  """Class ids in drawing order: organs by id, then lesions (a lesion shows over its organ)."""
  organs = [i for i in range(1, num_classes + 1) if i not in taxonomy.TUMOR_IDS]
  lesions = [i for i in range(1, num_classes + 1) if i in taxonomy.TUMOR_IDS]
  return organs + lesions


def _highest_bit(x: np.ndarray) -> np.ndarray:
  """1-based index of the highest set bit of uint32 values (0 for 0), as uint8.

  frexp's exponent of x > 0 is its bit length; float64 holds every uint32 exactly. Done in slabs
  of ~1M values, so the float64 temporaries stay small instead of 20 bytes per voxel.
  """
  out = np.empty(x.shape, np.uint8)
  flat_in, flat_out = x.reshape(-1), out.reshape(-1)
  step = 1 << 20
  for i in range(0, flat_in.size, step):
    flat_out[i:i + step] = np.frexp(flat_in[i:i + step].astype(np.float64))[1]
  return out


def bits_to_label_map(bits: np.ndarray, num_classes: int = NUM_CLASSES) -> np.ndarray:
  """(X, Y, Z) bitmask -> (X, Y, Z) uint8 ids, as `postprocess.masks_to_label_map`."""
  bits = np.asarray(bits)
  order = draw_order(num_classes)
  if order == sorted(order):
    # Every lesion id is above every organ id (taxonomy: lesions are 26..32), so the class
    # drawn last at a voxel is its highest set bit.
    if bits.dtype.itemsize <= 4:
      return _highest_bit(bits)
    high = (bits >> np.uint64(32)).astype(np.uint32)
    low = (bits & np.uint64(0xFFFFFFFF)).astype(np.uint32)
    return np.where(high != 0, _highest_bit(high) + np.uint8(32), _highest_bit(low))
  labels = np.zeros(bits.shape, np.uint8)
  for i in order:  # a taxonomy with lesions below organs: draw class by class
    labels[(bits & (bits.dtype.type(1) << bits.dtype.type(i - 1))) != 0] = i
  return labels


def masks_to_label_map(masks: np.ndarray) -> np.ndarray:
  """(X, Y, Z, C) bool -> (X, Y, Z) uint8 universal ids, 0 = background.

  Organs are drawn in id order, then lesions over them (a liver tumor voxel, also liver, shows
  as the tumor).
  """
  masks = np.asarray(masks, bool)
  c = masks.shape[-1]
  if c > 255:
    raise ValueError(f"{c} classes do not fit a uint8 label map")
  if c <= 64:
    return bits_to_label_map(bitmask.pack(masks), c)
  labels = np.zeros(masks.shape[:-1], np.uint8)
  for i in draw_order(c):
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
