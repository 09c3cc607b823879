"""Resampling to a target voxel spacing, and back to the original grid: the one implementation
that conversion (training data) and prediction share.

`resample_to_spacing` keeps the axis directions of the affine and the world position of voxel
(0, 0, 0)'s centre; only the voxel size changes. New voxel i samples old voxel coordinate
i * new_spacing / old_spacing: linear interpolation for images, nearest for labels (labels are
never blended). `to_original_grid` maps a volume in the stored (resampled, cropped) grid back
onto the original file's grid through the two affines, so predictions can be written next to
the input scan.

Both are built for whole CTs on the host (benchmarks/predict_host.md): the linear resampling
(`resample_linear`) reads any strided view of any real dtype (an int16 scan as a RAS view, no
float copy) one output slice at a time, and the way back is, for the usual axis-aligned grids,
three 1D gathers instead of SciPy's general affine transform (used for oblique grids).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from dassemble_jax.ct import nifti_io


def resampled_shape(shape, old_spacing, new_spacing) -> tuple[int, ...]:
  """Round(n * old / new), at least 1 (the anchor's MONAI Spacing does the same)."""
  return tuple(max(1, round(n * o / s)) for n, o, s in zip(shape, old_spacing, new_spacing))


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


def _linear_taps(n_out: int, n_in: int, scale: float, dtype):
  """Linear interpolation along one axis: new i samples old i * scale, edge repeated beyond.

  Returns (lower index, upper index, upper weight), what scipy's order-1 'nearest' mode uses.
  """
  c = np.minimum(np.arange(n_out, dtype=np.float64) * scale, n_in - 1)
  lo = np.floor(c).astype(np.intp)
  return lo, np.minimum(lo + 1, n_in - 1), (c - lo).astype(dtype)


def resample_linear(data: np.ndarray, scale: Sequence[float], shape: Sequence[int],
                    dtype=np.float32) -> np.ndarray:
  """`ndimage.affine_transform(data, scale, output_shape=shape, order=1, mode='nearest')`.

  Trilinear interpolation on an axis-scaled grid is three 1D interpolations. They run one
  output slice at a time along the axis `data` varies slowest in memory (z for a Fortran-ordered
  NIfTI array, however flipped), so each slice reads two contiguous planes, every temporary is a
  plane (cache-resident), `data` may be any strided view of any real dtype (the int16 file) and
  only the C-ordered `dtype` output is allocated. Equal to SciPy's float64 result to `dtype`
  rounding.
  """
  data = np.asarray(data)
  # Loop axis first: the one with the largest stride; then the other two in stride order.
  order = sorted(range(3), key=lambda a: -abs(data.strides[a]))
  src = data.transpose(order)
  (al, ah, aw), (bl, bh, bw), (cl, ch, cw) = (
      _linear_taps(shape[a], data.shape[a], scale[a], dtype) for a in order)
  out = np.empty(tuple(shape[a] for a in order), dtype)
  bw, cw = bw[:, None], cw[None, :]

  def rows(plane):  # (B_in, C_in) -> (B, C_in); the row gathers shrink it first
    lo = plane[bl].astype(dtype)
    return lo + (plane[bh] - lo) * bw

  for i in range(out.shape[0]):
    s = rows(src[al[i]])
    if aw[i]:
      s += (rows(src[ah[i]]) - s) * aw[i]                    # (B, C_in)
    out[i] = s[:, cl] + (s[:, ch] - s[:, cl]) * cw           # (B, C)
  return c_order_copy(out.transpose(np.argsort(order)))


def resample_to_spacing(data: np.ndarray, affine: np.ndarray, spacing, *, order: int,
                        out_dtype=None) -> tuple[np.ndarray, np.ndarray]:
  """Resamples `data` (X, Y, Z, any strides) to `spacing` mm; returns (C-ordered data, affine).

  order=1 (linear, `resample_linear`) for images, order=0 (nearest) for label maps. Samples
  beyond the last voxel repeat the edge ('nearest' mode), which is what a rounded-up shape needs
  at the border. The output is `out_dtype` (default: float32 for order=1 unless `data` is
  float64, else `data`'s dtype).
  """
  spacing = np.broadcast_to(np.asarray(spacing, np.float64), (3,))
  old = nifti_io.voxel_sizes(affine)
  scale = spacing / old  # old voxel coordinate per new voxel index, per axis
  new_affine = np.array(affine, np.float64)
  new_affine[:3, :3] = affine[:3, :3] * scale[None, :]
  shape = resampled_shape(data.shape, old, spacing)
  if order == 1:
    dtype = np.dtype(out_dtype or (np.float64 if data.dtype == np.float64 else np.float32))
  else:
    dtype = np.dtype(out_dtype or data.dtype)
  if np.allclose(scale, 1.0) and shape == data.shape:  # nothing to interpolate
    if data.flags.c_contiguous:
      return data.astype(dtype, copy=False), new_affine
    return c_order_copy(data, dtype), new_affine
  if order == 1:
    work = np.float64 if dtype == np.float64 else np.float32
    return resample_linear(data, scale, shape, work).astype(dtype, copy=False), new_affine
  out = ndimage.affine_transform(data, scale, output_shape=shape, order=order, mode="nearest",
                                 output=dtype, prefilter=False)
  return out, new_affine


def _axis_aligned_map(mapping: np.ndarray) -> list[int] | None:
  """For a 4x4 voxel mapping with one nonzero per row/column: source axis of each row."""
  m = mapping[:3, :3]
  nz = np.abs(m) > 1e-9 * np.abs(m).max()
  if not (np.all(nz.sum(0) == 1) and np.all(nz.sum(1) == 1)):
    return None
  return [int(np.flatnonzero(row)[0]) for row in nz]


def to_original_grid(data: np.ndarray, affine: np.ndarray, original_affine: np.ndarray,
                     original_shape, *, order: int = 0, cval: float = 0.0) -> np.ndarray:
  """Maps (X, Y, Z[, C]) `data` on grid `affine` onto the grid (original_affine, original_shape).

  For every original voxel v the value is sampled at inv(affine) @ original_affine @ v; more
  than half a voxel outside the stored volume (cropped-away background) it is `cval` (SciPy's
  'grid-constant' mode). Channels are resampled alike.

  Nearest (order=0) on the usual grids (permuted, flipped and rescaled copies of the file's
  grid: an axis-aligned voxel mapping) is 1D gathers, `np.take` along one axis at a time, with
  a `cval` slab appended to `data` for samples outside it; a 3D result is Fortran-ordered, as
  NIfTI stores it (nibabel writes it without a transposing copy). Other orders and oblique
  mappings go through `ndimage.affine_transform`.
  """
  data = np.asarray(data)
  original_shape = tuple(int(n) for n in original_shape)
  mapping = np.linalg.inv(affine) @ np.asarray(original_affine, np.float64)
  axes = _axis_aligned_map(mapping) if order == 0 else None
  if axes is None:
    def one(x):
      return ndimage.affine_transform(x, mapping[:3, :3], offset=mapping[:3, 3],
                                      output_shape=original_shape, order=order,
                                      mode="grid-constant", cval=cval, prefilter=False)
    if data.ndim == 3:
      return one(data)
    return np.stack([one(data[..., k]) for k in range(data.shape[-1])], -1)
  # Index into the model axis i that original axis j = axes[i] maps onto; n_i: the cval slab.
  index = [None] * 3
  for i, j in enumerate(axes):
    v = np.arange(original_shape[j], dtype=np.float64)
    coord = np.floor(mapping[i, j] * v + mapping[i, 3] + 0.5).astype(np.intp)
    index[j] = np.where((coord >= 0) & (coord < data.shape[i]), coord, data.shape[i])
  padded = np.pad(data, [(0, 1)] * 3 + [(0, 0)] * (data.ndim - 3), constant_values=cval)
  src = padded.transpose([axes.index(j) for j in range(3)] + list(range(3, data.ndim)))
  if data.ndim == 3:
    # Filled in reversed axis order, (Z, Y, X), and returned transposed: Fortran order. The
    # innermost axis is gathered on the small model grid; every output plane is then whole
    # rows of it, copied straight into the result.
    wide = np.take(c_order_copy(src.T), index[0], axis=2)          # (Z_model, Y_model, X)
    out = np.empty(original_shape[::-1], data.dtype)                 # (Z, Y, X)
    for z, k in enumerate(index[2]):
      np.take(wide[k], index[1], axis=0, out=out[z])
    return out.T
  out = src
  for axis in (2, 1, 0):
    out = np.take(out, index[axis], axis=axis)
  return out
