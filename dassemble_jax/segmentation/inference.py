"""Whole-scan prediction plumbing: NIfTI in, label-map NIfTI (and optional per-class files) out.

The path of one scan, independent of which trained model is used:
  load (file orientation) -> reorient to RAS -> resample to the model spacing -> scale HU ->
  sliding window (probabilities) -> thresholds -> post-processing -> back to the file's own grid
  (nearest) -> write a uint8 label map with the file's affine, so it overlays the input in
  3D Slicer / ITK-SNAP.

NIfTI reading, RAS reorientation, resampling and HU scaling follow the CT data modules
(`dassemble_jax.ct.nifti_io`, `.resample`, `.preprocess`), so training and prediction see the same
voxels (equal within 1e-6 after the HU window: tests/segmentation/test_inference_speed_equivalence.py). Every
write goes to a temporary name and is renamed: an interrupted run leaves no half-written file.

Host time (benchmarks/predict_host.md): the scan stays int16 and is resampled as a RAS view,
slice by slice, with no full-size float copy; thresholds are applied and the 32 class masks
packed into one uint32 per voxel on the device, so 4 bytes a voxel cross to the host;
post-processing and the label map work on the packed masks; the way back to the file's grid is
three 1D gathers of the uint8 label map.

The model is any `apply_fn(params, windows) -> logits` on (n, d, h, w, 1) float32 windows in
[0, 1]; loading a checkpoint into such a function is the caller's (the CLI's) job.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import time
from typing import Any, Callable, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from nibabel import orientations

from dassemble_jax.ct import nifti_io, preprocess, resample
from dassemble_jax.ct.nifti_io import CaseError
from dassemble_jax.segmentation import postprocess as pp
from dassemble_jax.segmentation import sliding_window as sw

NIFTI_SUFFIXES = (".nii.gz", ".nii")


# ---------------------------------------------------------------------------------------------
# Reading and writing.


def load_nifti_for_prediction(path: str | os.PathLike, dtype=np.float32
                              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Reads a CT -> (volume (X, Y, Z) float32, file orientation; affine (4, 4); spacing (3,) mm).

  `dtype=None` keeps the stored type (int16 for most CTs: `to_model_grid` reads it directly,
  sparing a float32 copy of the whole scan). Raises CaseError (a ValueError) naming the file if
  it is unreadable, truncated, not 3D (a trailing singleton 4th axis is dropped) or has a
  singular affine.
  """
  data, affine = nifti_io.load(path, dtype=dtype)
  return data, affine, nifti_io.voxel_sizes(affine)


def save_label_map(path: str | os.PathLike, labels: np.ndarray, affine: np.ndarray) -> None:
  """Writes an (X, Y, Z) uint8 label map with `affine` (qform and sform), atomically."""
  labels = np.asarray(labels)
  if labels.ndim != 3:
    raise ValueError(f"{path}: a label map must be 3D, got shape {labels.shape}")
  if labels.dtype != np.uint8 and labels.size and (labels.min() < 0 or labels.max() > 255):
    raise ValueError(f"{path}: labels outside 0..255 do not fit uint8")
  nifti_io.save(path, labels.astype(np.uint8, copy=False), affine)


def save_per_class(directory: str | os.PathLike, masks: np.ndarray, affine: np.ndarray,
                   class_names: Sequence[str], *, compress: bool = True,
                   skip_empty: bool = False) -> list[pathlib.Path]:
  """One uint8 0/1 NIfTI per class, `{directory}/{name}.nii.gz` (or `.nii` uncompressed).

  `masks`: (X, Y, Z, C) bool, or packed (X, Y, Z) unsigned ints, bit k = channel k
  (`postprocess.pack_masks`). Fast by construction (1.06 -> 0.013 s a file at 512 x 512 x 300,
  benchmarks/per_class_write.md; the anchor took ~6 s): every class's bounding box comes from
  three projections of all classes at once, only the box is read out of `masks` into one reused
  Fortran-ordered (NIfTI's x-fastest) uint8 volume that is zero elsewhere, and the file is
  deflated with ISA-L (`nifti_io.save`). Each file is written atomically.
  """
  masks = np.asarray(masks)
  packed = masks.ndim == 3 and masks.dtype.kind == "u"
  if packed and len(class_names) > 8 * masks.itemsize:
    raise ValueError(f"{len(class_names)} class names for {8 * masks.itemsize}-bit masks")
  if not packed and (masks.ndim != 4 or masks.shape[-1] != len(class_names)):
    raise ValueError(f"masks {masks.shape} do not match {len(class_names)} class names")
  directory = pathlib.Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  suffix = ".nii.gz" if compress else ".nii"
  boxes = class_boxes(masks, len(class_names))
  volume = np.zeros(masks.shape[:3], np.uint8, order="F")
  written = []
  for k, name in enumerate(class_names):
    box = boxes[k]
    if box is None and skip_empty:
      continue
    if box is not None:
      part = masks[box]
      volume[box] = (part >> part.dtype.type(k)) & 1 if packed else part[..., k]
    nifti_io.save(directory / f"{name}{suffix}", volume, affine)
    if box is not None:
      volume[box] = 0  # the buffer is all zeros again for the next class
    written.append(directory / f"{name}{suffix}")
  return written


def class_boxes(masks: np.ndarray, num_classes: int) -> list[tuple[slice, ...] | None]:
  """Per class, the bounding box (three slices) of its voxels, None when it has none.

  `masks` as in `save_per_class`. One OR (any) projection per axis serves every class.
  """
  packed = masks.ndim == 3
  projections = []
  for axis in range(3):
    others = tuple(a for a in range(3) if a != axis)
    if packed:
      p = np.bitwise_or.reduce(masks, axis=others)                 # (n,) bits
      projections.append((p[:, None] >> np.arange(num_classes, dtype=p.dtype)) & 1)
    else:
      projections.append(masks.any(axis=others))                   # (n, C)
  boxes = []
  for k in range(num_classes):
    spans = [np.flatnonzero(p[:, k]) for p in projections]
    boxes.append(None if not spans[0].size else
                 tuple(slice(int(i[0]), int(i[-1]) + 1) for i in spans))
  return boxes


# ---------------------------------------------------------------------------------------------
# Grids: the model's (RAS, fixed spacing) and the file's.


@dataclasses.dataclass(frozen=True)
class Grid:
  """A voxel grid: shape (3,) and voxel -> world affine (4, 4)."""
  shape: tuple[int, int, int]
  affine: np.ndarray


def ras_view(volume: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """`nifti_io.reorient_to_ras` without its copy: the RAS array as a view (flips, transpose)."""
  current = orientations.io_orientation(affine)
  transform = orientations.ornt_transform(current, orientations.axcodes2ornt(("R", "A", "S")))
  view = orientations.apply_orientation(volume, transform)
  return view, affine @ orientations.inv_ornt_aff(transform, volume.shape)


def c_order_copy(view: np.ndarray, dtype=None, block: int = 32) -> np.ndarray:
  """C-ordered copy of a 3D view of any strides (a transpose, flips), in 32 x 32 column tiles.

  NIfTI arrays are x-fastest, model arrays z-fastest: `np.ascontiguousarray` of one as the
  other reads each cache line once per element it holds (2.6 s for 512 x 512 x 300 float32);
  copying tile by tile keeps a tile's lines in cache (1.0 s).
  """
  out = np.empty(view.shape, dtype or view.dtype)
  for x in range(0, view.shape[0], block):
    for y in range(0, view.shape[1], block):
      out[x:x + block, y:y + block] = view[x:x + block, y:y + block]
  return out


def _linear_taps(n_out: int, n_in: int, scale: float):
  """Linear interpolation along one axis: new i samples old i * scale, edge repeated beyond.

  Returns (lower index, upper index, upper weight), what scipy's order-1 'nearest' mode uses.
  """
  c = np.minimum(np.arange(n_out, dtype=np.float64) * scale, n_in - 1)
  lo = np.floor(c).astype(np.intp)
  return lo, np.minimum(lo + 1, n_in - 1), (c - lo).astype(np.float32)


def resample_linear(data: np.ndarray, scale: Sequence[float], shape: Sequence[int]
                    ) -> np.ndarray:
  """`ndimage.affine_transform(data, scale, output_shape=shape, order=1, mode='nearest')`.

  Trilinear interpolation on an axis-scaled grid is three 1D interpolations. They run one
  output slice at a time along the axis `data` varies slowest in memory (z for a Fortran-ordered
  NIfTI array, however flipped), so each slice reads two contiguous planes, every temporary is a
  plane (cache-resident), `data` may be any strided view of any real dtype (the int16 file) and
  only the float32 output is allocated. Equal to SciPy's float64 result to float32 rounding.
  """
  data = np.asarray(data)
  # Loop axis first: the one with the largest stride; then the other two in stride order.
  order = sorted(range(3), key=lambda a: -abs(data.strides[a]))
  src = data.transpose(order)
  (al, ah, aw), (bl, bh, bw), (cl, ch, cw) = (
      _linear_taps(shape[a], data.shape[a], scale[a]) for a in order)
  out = np.empty(tuple(shape[a] for a in order), np.float32)
  bw, cw = bw[:, None], cw[None, :]

  def rows(plane):  # (B_in, C_in) -> (B, C_in) float32; the row gathers shrink it first
    lo = plane[bl].astype(np.float32)
    return lo + (plane[bh] - lo) * bw

  for i in range(out.shape[0]):
    s = rows(src[al[i]])
    if aw[i]:
      s += (rows(src[ah[i]]) - s) * aw[i]                    # (B, C_in)
    out[i] = s[:, cl] + (s[:, ch] - s[:, cl]) * cw           # (B, C)
  return c_order_copy(out.transpose(np.argsort(order)))


def to_model_grid(volume: np.ndarray, affine: np.ndarray, spacing: float | Sequence[float]
                  ) -> tuple[np.ndarray, Grid]:
  """File-orientation HU volume -> ([0, 1] float32 volume in RAS at `spacing` mm, its Grid).

  The same reorientation, linear resampling and HU window as the training data
  (`resample.resample_to_spacing`, `preprocess.scale_hu`), equal to them within 1e-6 after the
  window, without their three full-size float copies (benchmarks/predict_host.md).
  """
  ras, ras_affine = ras_view(np.asarray(volume), affine)
  spacing = np.broadcast_to(np.asarray(spacing, np.float64), (3,))
  old = nifti_io.voxel_sizes(ras_affine)
  scale = spacing / old  # old voxel coordinate per new voxel index, per axis
  res_affine = np.array(ras_affine, np.float64)
  res_affine[:3, :3] = ras_affine[:3, :3] * scale[None, :]
  shape = resample.resampled_shape(ras.shape, old, spacing)
  if np.allclose(scale, 1.0) and shape == ras.shape:
    out = c_order_copy(ras, np.float32)  # resample_to_spacing does not interpolate either
  else:
    out = resample_linear(ras, scale, shape)
  # preprocess.scale_hu's operations, in place.
  np.clip(out, preprocess.HU_MIN, preprocess.HU_MAX, out=out)
  out -= preprocess.HU_MIN
  out *= np.float32(1.0 / (preprocess.HU_MAX - preprocess.HU_MIN))
  return out, Grid(tuple(shape), res_affine)


def _axis_aligned_map(mapping: np.ndarray) -> list[int] | None:
  """For a 4x4 voxel mapping with one nonzero per row/column: source axis of each row."""
  m = mapping[:3, :3]
  nz = np.abs(m) > 1e-9 * np.abs(m).max()
  if not (np.all(nz.sum(0) == 1) and np.all(nz.sum(1) == 1)):
    return None
  return [int(np.flatnonzero(row)[0]) for row in nz]


def to_original_grid(data: np.ndarray, model: Grid, original: Grid) -> np.ndarray:
  """Nearest-neighbour resampling of (X, Y, Z[, C]) `data` on `model` onto `original` (0 outside).

  Model grids are permuted, flipped and rescaled copies of the file's grid, so the voxel mapping
  is usually axis-aligned: then the result is 1D gathers (`np.take` along one axis at a time),
  with a zero slab appended to `data` for samples outside it. Oblique mappings fall back to
  `dassemble_jax.ct.resample.to_original_grid` per channel.
  """
  data = np.asarray(data)
  mapping = np.linalg.inv(model.affine) @ np.asarray(original.affine, np.float64)
  axes = _axis_aligned_map(mapping)
  if axes is None:
    if data.ndim == 3:
      return resample.to_original_grid(data, model.affine, original.affine, original.shape)
    return np.stack([resample.to_original_grid(data[..., k], model.affine, original.affine,
                                               original.shape)
                     for k in range(data.shape[-1])], -1)
  # Index into the model axis i that original axis j = axes[i] maps onto; n_i: the zero slab.
  index = [None] * 3
  for i, j in enumerate(axes):
    v = np.arange(original.shape[j], dtype=np.float64)
    coord = np.floor(mapping[i, j] * v + mapping[i, 3] + 0.5).astype(np.intp)
    index[j] = np.where((coord >= 0) & (coord < data.shape[i]), coord, data.shape[i])
  padded = np.pad(data, [(0, 1)] * 3 + [(0, 0)] * (data.ndim - 3))
  src = padded.transpose([axes.index(j) for j in range(3)] + list(range(3, data.ndim)))
  if data.ndim == 3:
    # Filled in reversed axis order, (Z, Y, X), and returned transposed: the same values,
    # Fortran-ordered, the order NIfTI stores, so nibabel writes it without a transposing copy.
    # The innermost axis is gathered on the small model grid; every output plane is then
    # whole rows of it, copied straight into the result.
    wide = np.take(c_order_copy(src.T), index[0], axis=2)          # (Z_model, Y_model, X)
    out = np.empty(tuple(original.shape[::-1]), data.dtype)         # (Z, Y, X)
    for z, k in enumerate(index[2]):
      np.take(wide[k], index[1], axis=0, out=out[z])
    return out.T
  out = src
  for axis in (2, 1, 0):
    out = np.take(out, index[axis], axis=axis)
  return out


# ---------------------------------------------------------------------------------------------
# Prediction.


@jax.jit
def _threshold_on_device(probs, thresholds):
  return probs > thresholds


@jax.jit
def _threshold_bits_on_device(probs, thresholds):
  """(X, Y, Z, C <= 32) probabilities -> (X, Y, Z) uint32, bit k = probs[..., k] > thresholds[k]."""
  weights = jnp.left_shift(jnp.uint32(1), jnp.arange(probs.shape[-1], dtype=jnp.uint32))
  return jnp.sum(jnp.where(probs > thresholds, weights, jnp.uint32(0)), axis=-1,
                 dtype=jnp.uint32)


def predict_volume(apply_fn: Callable[[Any, jax.Array], jax.Array], volume: np.ndarray, *,
                   params: Any = None, window: Sequence[int] = (96, 96, 96),
                   overlap: float = 0.5, sw_batch_size: int = 4, sigma_scale: float = 0.125,
                   thresholds: float | Sequence[float] = 0.5, affine: np.ndarray | None = None,
                   postprocess: bool = True, accumulate_on: sw.Accumulate = "auto",
                   packed: bool | None = False, **postprocess_kwargs) -> np.ndarray:
  """Sliding-window probabilities -> thresholds -> post-processing: (X, Y, Z, C) bool masks.

  Args:
    apply_fn: `apply_fn(params, windows)`, (n, d, h, w, 1) -> (n, d, h, w, C) logits.
    volume: (X, Y, Z) model-ready volume (RAS, model spacing, intensities scaled).
    params: the model's parameters, passed to apply_fn.
    window, overlap, sw_batch_size, sigma_scale, accumulate_on: see
      `sliding_window_inference` (`inference_spec.InferenceSpec` holds a config's).
    thresholds: one probability threshold, or (C,) per class.
    affine: the volume's voxel -> RAS affine (left/right decisions); None = RAS array order.
    postprocess: run `postprocess.postprocess` (LCC, lung split, host-filtered lesions).
    packed: return the masks packed, (X, Y, Z) uint32 with bit k = class k + 1
      (`postprocess.pack_masks`; C <= 32), never unpacking them on the host; None: packed when
      C <= 32.
    **postprocess_kwargs: passed on to `postprocess.postprocess`.
  """
  probs = sw.sliding_window_inference(apply_fn, volume, params=params, window=window,
                                      overlap=overlap, sw_batch_size=sw_batch_size,
                                      sigma_scale=sigma_scale, output="probs",
                                      accumulate_on=accumulate_on)
  c = probs.shape[-1]
  if packed and c > 32:
    raise ValueError(f"packed masks hold at most 32 classes, the model has {c}")
  packed = c <= 32 if packed is None else packed
  return _threshold_and_postprocess(probs, thresholds, affine, postprocess, packed,
                                    **postprocess_kwargs)


def _threshold_and_postprocess(probs, thresholds, affine, postprocess: bool, packed: bool,
                               **postprocess_kwargs) -> np.ndarray:
  """(X, Y, Z, C) probabilities (device or host) -> masks, or packed masks when C <= 32."""
  c = probs.shape[-1]
  t = np.broadcast_to(np.asarray(thresholds, np.float32), (c,))
  if c > 32:
    masks = (np.asarray(_threshold_on_device(probs, jnp.asarray(t)))
             if isinstance(probs, jax.Array) else pp.apply_thresholds(probs, t))
    return pp.postprocess(masks, affine, **postprocess_kwargs) if postprocess else masks
  if isinstance(probs, jax.Array):
    # Threshold and pack where the probabilities are: 4 bytes per voxel cross to the host, not
    # one per voxel and class (512 x 512 x 300 x 32 bools took 1.7 s on an H100 host).
    bits = np.array(_threshold_bits_on_device(probs, jnp.asarray(t)))
  else:
    bits = pp.pack_masks(pp.apply_thresholds(probs, t))
  if postprocess:
    bits = pp.postprocess_bits(bits, c, affine, copy=False, **postprocess_kwargs)
  return bits if packed else pp.unpack_bits(bits, c)


def find_inputs(path: str | os.PathLike) -> list[pathlib.Path]:
  """A NIfTI file, or the NIfTI files of a folder (sorted); CaseError if there are none."""
  path = pathlib.Path(path)
  if path.is_file():
    return [path]
  if path.is_dir():
    files = sorted(p for p in path.iterdir() if p.is_file()
                   and p.name.endswith(NIFTI_SUFFIXES) and not p.name.startswith("."))
    if files:
      return files
    raise CaseError(f"{path}: no .nii or .nii.gz files in this folder")
  raise CaseError(f"{path}: no such file or folder")


def case_name(path: pathlib.Path) -> str:
  """'case_001.nii.gz' -> 'case_001'."""
  for suffix in NIFTI_SUFFIXES:
    if path.name.endswith(suffix):
      return path.name[:-len(suffix)]
  return path.stem


@dataclasses.dataclass
class ScanResult:
  """What predict_file wrote and how long each stage took (seconds)."""
  label_map: pathlib.Path
  per_class: list[pathlib.Path]
  timings: dict[str, float]


def predict_file(apply_fn: Callable[[Any, jax.Array], jax.Array], in_path: str | os.PathLike,
                 out_path: str | os.PathLike, *, params: Any = None,
                 spacing: float | Sequence[float] = 1.5, class_names: Sequence[str] | None = None,
                 per_class_dir: str | os.PathLike | None = None, compress: bool = True,
                 **predict_kwargs) -> ScanResult:
  """One scan end to end: read, predict in the model grid, write in the file's grid.

  The label map (uint8 universal ids, lesions over organs) goes to `out_path`; with
  `per_class_dir`, one 0/1 file per class too (needs `class_names`, one per output channel).
  """
  timings = {}
  start = time.perf_counter()
  volume, affine, _ = load_nifti_for_prediction(in_path, dtype=None)
  original = Grid(tuple(volume.shape), affine)
  model_volume, model_grid = to_model_grid(volume, affine, spacing)
  del volume
  timings["load_resample"] = time.perf_counter() - start

  start = time.perf_counter()
  # Packed masks (X, Y, Z) uint32 when the model has <= 32 classes, else (X, Y, Z, C) bool.
  masks = predict_volume(apply_fn, model_volume, params=params, affine=model_grid.affine,
                         packed=None, **predict_kwargs)
  timings["predict"] = time.perf_counter() - start

  start = time.perf_counter()
  packed = masks.ndim == 3
  labels = pp.bits_to_label_map(masks) if packed else pp.masks_to_label_map(masks)
  save_label_map(out_path, to_original_grid(labels, model_grid, original), affine)
  written = []
  if per_class_dir is not None:
    # (Packed masks do not say how many channels the model has: at least every class present.)
    present = int(np.bitwise_or.reduce(masks, axis=None)).bit_length() if packed else None
    if class_names is None or (len(class_names) != masks.shape[-1] if not packed
                               else len(class_names) < present):
      raise ValueError("per-class output needs class names, one per output channel")
    # One gather for all classes (packed: 4 bytes a voxel), then one file per class.
    written = save_per_class(per_class_dir, to_original_grid(masks, model_grid, original),
                             affine, class_names, compress=compress)
  timings["write"] = time.perf_counter() - start
  return ScanResult(pathlib.Path(out_path), written, timings)


def predict_paths(apply_fn: Callable[[Any, jax.Array], jax.Array], inputs: str | os.PathLike,
                  out_dir: str | os.PathLike, *, per_class: bool = False,
                  class_names: Sequence[str] | None = None, **kwargs) -> Iterator[ScanResult]:
  """predict_file over a file or a folder: `{out_dir}/{case}.nii.gz` (+ `{out_dir}/{case}/`)."""
  out_dir = pathlib.Path(out_dir)
  for path in find_inputs(inputs):
    name = case_name(path)
    yield predict_file(apply_fn, path, out_dir / f"{name}.nii.gz", class_names=class_names,
                       per_class_dir=(out_dir / name) if per_class else None, **kwargs)
