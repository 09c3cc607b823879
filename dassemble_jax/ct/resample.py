"""Resampling to a target voxel spacing (SciPy), and back to the original grid.

`resample_to_spacing` keeps the axis directions of the affine and the world position of voxel
(0, 0, 0)'s centre; only the voxel size changes. New voxel i samples old voxel coordinate
i * new_spacing / old_spacing: linear interpolation for images, nearest for labels (labels are
never blended). `to_original_grid` maps a volume in the stored (resampled, cropped) grid back
onto the original file's grid through the two affines, so predictions can be written next to
the input scan.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from dassemble_jax.ct import nifti_io


def resampled_shape(shape, old_spacing, new_spacing) -> tuple[int, ...]:
  """Round(n * old / new), at least 1 (the anchor's MONAI Spacing does the same)."""
  return tuple(max(1, int(round(n * o / s))) for n, o, s in zip(shape, old_spacing, new_spacing))


def resample_to_spacing(data: np.ndarray, affine: np.ndarray, spacing, *, order: int,
                        out_dtype=None) -> tuple[np.ndarray, np.ndarray]:
  """Resamples `data` (X, Y, Z) to `spacing` mm; returns (data, new affine).

  order=1 (linear) for images, order=0 (nearest) for label maps. Samples beyond the last voxel
  repeat the edge ('nearest' mode), which is what a rounded-up shape needs at the border.
  """
  spacing = np.broadcast_to(np.asarray(spacing, np.float64), (3,))
  old = nifti_io.voxel_sizes(affine)
  scale = spacing / old  # old voxel coordinate per new voxel index, per axis
  new_affine = np.array(affine, np.float64)
  new_affine[:3, :3] = affine[:3, :3] * scale[None, :]
  shape = resampled_shape(data.shape, old, spacing)
  if np.allclose(scale, 1.0) and shape == data.shape:
    return data.astype(out_dtype or data.dtype, copy=False), new_affine
  out = ndimage.affine_transform(data, scale, output_shape=shape, order=order, mode="nearest",
                                 output=out_dtype or data.dtype, prefilter=False)
  return out, new_affine


def to_original_grid(data: np.ndarray, affine: np.ndarray, original_affine: np.ndarray,
                     original_shape, *, order: int = 0, cval: float = 0.0) -> np.ndarray:
  """Maps `data` on grid `affine` onto the grid (original_affine, original_shape).

  For every original voxel v the value is sampled at inv(affine) @ original_affine @ v;
  outside the stored volume (cropped-away background) it is `cval`.
  """
  mapping = np.linalg.inv(affine) @ np.asarray(original_affine, np.float64)
  return ndimage.affine_transform(data, mapping[:3, :3], offset=mapping[:3, 3],
                                  output_shape=tuple(int(n) for n in original_shape),
                                  order=order, mode="constant", cval=cval, prefilter=False)
