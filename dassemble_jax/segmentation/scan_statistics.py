"""Per-class measurements of a predicted scan, in the scan's own grid: `predict --statistics`.

For every class the model predicted (its masks overlap: a liver tumor voxel is also liver):
  voxels         how many voxels carry the class
  volume_ml      voxels x the voxel volume (|det| of the affine's 3 x 3 part, mm^3) / 1000
  hu_mean/hu_std the scan's intensities (HU after the file's scl_slope/inter) inside the class;
                 the population standard deviation (ddof 0); null for an empty class
  bbox_min/max   the class's bounding box as inclusive voxel indices of the input file's array
and for the lesion classes (`taxonomy.TUMOR_IDS`) the lesions: 26-connected components, each
with its voxels, volume and diameter, the longest distance between two of its voxel centres in
world millimetres (0 for a one-voxel lesion); `lesion_count` and `largest_diameter_mm` sum them up.

The diameter is exact: the farthest pair of voxel centres is a pair of convex-hull vertices of
the component's surface voxels (SciPy's Qhull), so only those are compared.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Sequence

import numpy as np
from scipy import ndimage, spatial

from dassemble_jax import atomic
from dassemble_jax.ct import bitmask, taxonomy

_FULL = np.ones((3, 3, 3), bool)  # 26-connectivity, as the post-processing's components
CSV_FIELDS = ("id", "name", "voxels", "volume_ml", "hu_mean", "hu_std", "bbox_min", "bbox_max",
              "lesion_count", "largest_diameter_mm")


def max_diameter_mm(points: np.ndarray, affine: np.ndarray) -> float:
  """Longest distance (mm) between two of the (N, 3) voxel indices' centres under `affine`."""
  world = np.asarray(points, np.float64) @ np.asarray(affine, np.float64)[:3, :3].T
  if len(world) < 2:
    return 0.0
  if len(world) > 64:
    try:
      world = world[spatial.ConvexHull(world).vertices]
    except spatial.QhullError:  # flat (coplanar or collinear) lesions: compare all points
      pass
  best = 0.0
  for start in range(0, len(world), 1024):  # blocks keep the distance matrix small
    d = spatial.distance.cdist(world[start:start + 1024], world)
    best = max(best, float(d.max()))
  return best


def _lesions(mask: np.ndarray, offset: np.ndarray, affine: np.ndarray,
             voxel_ml: float) -> list[dict]:
  """The 26-connected components of a (box-cropped) lesion mask, largest first."""
  labels, _ = ndimage.label(mask, structure=_FULL)
  out = []
  for i, sl in enumerate(ndimage.find_objects(labels), start=1):
    component = labels[sl] == i
    # Surface voxels only: an interior voxel is never an end of the longest segment.
    surface = component & ~ndimage.binary_erosion(component, structure=_FULL)
    points = np.argwhere(surface) + offset + np.array([s.start for s in sl])
    voxels = int(component.sum())
    out.append({"voxels": voxels, "volume_ml": voxels * voxel_ml,
                "diameter_mm": max_diameter_mm(points, affine)})
  return sorted(out, key=lambda r: -r["voxels"])


def class_statistics(bits: np.ndarray, hu: np.ndarray, affine: np.ndarray,
                     class_ids: Sequence[int]) -> list[dict]:
  """One row per class id in `class_ids` (see the module docstring).

  Args:
    bits: (X, Y, Z) unsigned packed masks in the scan's grid, bit k = class id k + 1
      (`ct.bitmask.pack`).
    hu: (X, Y, Z) the scan's intensities, same grid.
    affine: the scan's voxel -> world (mm) affine.
    class_ids: universal ids to report (absent classes get a row with 0 voxels).
  """
  bits, hu = np.asarray(bits), np.asarray(hu)
  if bits.shape != hu.shape:
    raise ValueError(f"masks {bits.shape} and scan {hu.shape} differ in shape")
  voxel_ml = abs(float(np.linalg.det(np.asarray(affine, np.float64)[:3, :3]))) / 1000.0
  boxes = bitmask.class_boxes(bits, 8 * bits.itemsize)
  rows = []
  for cid in class_ids:
    row = {"id": int(cid), "name": taxonomy.CLASSES[cid - 1].name, "voxels": 0,
           "volume_ml": 0.0, "hu_mean": None, "hu_std": None, "bbox_min": None,
           "bbox_max": None}
    box = boxes[cid - 1]
    if box is not None:
      mask = ((bits[box] >> bits.dtype.type(cid - 1)) & 1).astype(bool)
      values = hu[box][mask].astype(np.float64)
      start = np.array([s.start for s in box])
      idx = np.argwhere(mask)
      row.update(voxels=int(mask.sum()), volume_ml=int(mask.sum()) * voxel_ml,
                 hu_mean=float(values.mean()), hu_std=float(values.std()),
                 bbox_min=(idx.min(0) + start).tolist(), bbox_max=(idx.max(0) + start).tolist())
    if cid in taxonomy.TUMOR_IDS:
      lesions = [] if box is None else _lesions(mask, start, affine, voxel_ml)
      row.update(lesion_count=len(lesions),
                 largest_diameter_mm=max((r["diameter_mm"] for r in lesions), default=None),
                 lesions=lesions)
    rows.append(row)
  return rows


def to_csv(rows: Sequence[dict]) -> str:
  """The rows as CSV (one line per class, floats to 3 decimals; the per-lesion list and the
  full precision stay in the JSON)."""
  buf = io.StringIO()
  writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, extrasaction="ignore", lineterminator="\n")
  writer.writeheader()
  for r in rows:
    writer.writerow({k: (" ".join(map(str, v)) if isinstance(v, list) else
                         "" if v is None else round(v, 3) if isinstance(v, float) else v)
                     for k, v in r.items()})
  return buf.getvalue()


def write(json_path: str | os.PathLike, csv_path: str | os.PathLike, rows: Sequence[dict],
          **header) -> None:
  """{**header, 'classes': rows} to JSON and the rows to CSV, each atomically."""
  atomic.write_json(json_path, {**header, "classes": list(rows)})
  atomic.write_text(csv_path, to_csv(rows))
