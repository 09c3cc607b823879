"""`predict --statistics`: per-class volumes, HU, boxes and lesions against NumPy/SciPy values."""

import csv
import io
import json

import numpy as np
from scipy import ndimage
from scipy.spatial.distance import pdist

from dassemble_jax.ct import bitmask
from dassemble_jax.segmentation import scan_statistics

# Anisotropic, axis-flipped (LPS-like) voxels: 0.8 x 1.0 x 2.5 mm = 2.0 mm^3.
AFFINE = np.array([[-0.8, 0.0, 0.0, 50.0], [0.0, -1.0, 0.0, 20.0], [0.0, 0.0, 2.5, -100.0],
                   [0.0, 0.0, 0.0, 1.0]])


def _scene():
  shape = (30, 26, 12)
  masks = np.zeros(shape + (32,), bool)
  masks[3:20, 4:22, 2:10, 5] = True                   # liver (id 6): a box
  masks[22:28, 10:15, 3:6, 0] = True                  # spleen (id 1)
  masks[5:9, 6:11, 3:6, 26] = True                    # liver tumor (27): a 4 x 5 x 3 box
  masks[14, 15, 7, 26] = True                         # ... and a one-voxel lesion
  masks[12:14, 18:20, 8:9, 26] = True                 # ... and a 2 x 2 x 1 one
  hu = np.random.default_rng(0).normal(60, 15, shape).astype(np.int16)
  return masks, bitmask.pack(masks), hu


def test_class_statistics_match_numpy_and_scipy(tmp_path):
  masks, bits, hu = _scene()
  rows = scan_statistics.class_statistics(bits, hu, AFFINE, [1, 6, 27, 11])
  by_id = {r["id"]: r for r in rows}
  assert [r["name"] for r in rows] == ["spleen", "liver", "liver_tumor", "pancreas"]
  for cid in (1, 6, 27):
    m = masks[..., cid - 1]
    r = by_id[cid]
    idx = np.argwhere(m)
    assert r["voxels"] == int(m.sum())
    np.testing.assert_allclose(r["volume_ml"], m.sum() * 0.8 * 1.0 * 2.5 / 1000.0, rtol=1e-12)
    np.testing.assert_allclose(r["hu_mean"], hu[m].astype(np.float64).mean(), rtol=1e-12)
    np.testing.assert_allclose(r["hu_std"], hu[m].astype(np.float64).std(), rtol=1e-12)
    assert r["bbox_min"] == idx.min(0).tolist() and r["bbox_max"] == idx.max(0).tolist()
  assert by_id[6]["voxels"] == 17 * 18 * 8 and "lesion_count" not in by_id[6]
  # An absent class still has its row.
  assert by_id[11]["voxels"] == 0 and by_id[11]["hu_mean"] is None
  # Lesions: three 26-connected components (SciPy's count), largest first; the diameter of the
  # 4 x 5 x 3 box is its corner-to-corner distance between voxel centres.
  tumor = by_id[27]
  assert tumor["lesion_count"] == 3 == ndimage.label(masks[..., 26], np.ones((3, 3, 3)))[1]
  assert [les["voxels"] for les in tumor["lesions"]] == [60, 4, 1]
  box_diameter = np.sqrt((3 * 0.8) ** 2 + (4 * 1.0) ** 2 + (2 * 2.5) ** 2)
  np.testing.assert_allclose(tumor["largest_diameter_mm"], box_diameter, rtol=1e-12)
  np.testing.assert_allclose(tumor["lesions"][1]["diameter_mm"], np.sqrt(0.8**2 + 1.0**2))
  assert tumor["lesions"][2]["diameter_mm"] == 0.0
  # Files: JSON with the rows, CSV with one line per class.
  scan_statistics.write(tmp_path / "s.json", tmp_path / "s.csv", rows, input="ct.nii.gz")
  assert json.loads((tmp_path / "s.json").read_text())["classes"][2]["lesion_count"] == 3
  table = list(csv.DictReader(io.StringIO((tmp_path / "s.csv").read_text())))
  assert [t["name"] for t in table] == ["spleen", "liver", "liver_tumor", "pancreas"]
  assert table[1]["bbox_min"] == "3 4 2" and table[2]["lesion_count"] == "3"
  assert float(table[0]["volume_ml"]) == round(by_id[1]["volume_ml"], 3)


def test_diameter_equals_brute_force_on_irregular_lesions():
  """Hull-based diameters (many points) equal the all-pairs maximum, on blobs and flat ones."""
  rng = np.random.default_rng(5)
  for shape in [(14, 11, 9), (16, 12, 1), (20, 1, 1)]:
    blob = ndimage.binary_opening(rng.random(shape) < 0.7) if min(shape) > 1 else (
        rng.random(shape) < 0.8)
    points = np.argwhere(blob)
    world = points @ AFFINE[:3, :3].T
    want = pdist(world).max()
    np.testing.assert_allclose(scan_statistics.max_diameter_mm(points, AFFINE), want,
                               rtol=1e-12)
  # A sphere of radius 6 voxels at 1 mm: the farthest centres are 12 mm apart.
  g = np.stack(np.meshgrid(*[np.arange(-7, 8)] * 3, indexing="ij"), -1)
  sphere = np.argwhere((g**2).sum(-1) <= 36)
  np.testing.assert_allclose(scan_statistics.max_diameter_mm(sphere, np.eye(4)), 12.0)
