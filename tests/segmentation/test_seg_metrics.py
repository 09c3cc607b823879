"""DSC / NSD against hand-computed and analytic values and a brute-force implementation."""

import itertools
import json
import math

import numpy as np
import pytest

from dassemble_jax.segmentation import seg_metrics


def test_dice_hand_computed_and_empty_conventions():
  pred = np.zeros((4, 4, 4), bool)
  gt = np.zeros((4, 4, 4), bool)
  pred[0, 0, :4] = True          # 4 voxels
  gt[0, 0, 1:4] = True           # 3 shared
  gt[1, 1, 1:4] = True           # 6 voxels in all
  assert seg_metrics.dice(pred, gt) == pytest.approx(2 * 3 / 10)
  empty = np.zeros((4, 4, 4), bool)
  assert seg_metrics.dice(empty, empty) == 1.0
  assert seg_metrics.dice(pred, empty) == 0.0 and seg_metrics.dice(empty, gt) == 0.0
  assert seg_metrics.nsd(empty, empty, (1, 1, 1), 1.0) == 1.0
  assert seg_metrics.nsd(pred, empty, (1, 1, 1), 1.0) == 0.0


def test_nsd_offset_cubes_analytic():
  # Cube A = [0, n)^3, B = A shifted by k voxels along axis 0; spacing (1.5, 4, 4) mm with
  # 4 >= k * 1.5 so the in-plane directions never give a shorter path. The distance of each
  # surface voxel of A to the surface of B (by symmetry the same counts hold from B to A):
  #   side ring at x in [k, n-1] (shared with B's sides): 0           -> (n-k)(4n-4) = 80
  #   side ring at x in [1, k-1]: (k - x) * 1.5 = 1.5 mm                -> (k-1)(4n-4) = 20
  #   face x = 0 (n^2) and the inner part of face x = n-1 ((n-2)^2): k * 1.5 = 3 mm -> 52
  # total surface voxels n^3 - (n-2)^3 = 152.
  n, k = 6, 2
  grid = np.zeros((n + k + 4, n + 4, n + 4), bool)
  a, b = grid.copy(), grid.copy()
  a[2:2 + n, 2:2 + n, 2:2 + n] = True
  b[2 + k:2 + k + n, 2:2 + n, 2:2 + n] = True
  spacing = (1.5, 4.0, 4.0)
  assert seg_metrics.surface(a).sum() == 152
  assert seg_metrics.nsd(a, b, spacing, 1.0) == pytest.approx(80 / 152)
  assert seg_metrics.nsd(a, b, spacing, 1.5) == pytest.approx(100 / 152)
  assert seg_metrics.nsd(a, b, spacing, 2.99) == pytest.approx(100 / 152)
  assert seg_metrics.nsd(a, b, spacing, 3.0) == pytest.approx(1.0)
  assert seg_metrics.dice(a, b) == pytest.approx((n - k) / n)
  # The spacing is used: at 1 mm isotropic every distance is at most k = 2 mm, and now the
  # in-plane direction is shorter for the 12 inner-face voxels next to the sides (1 mm away
  # from B's side faces): (80 + 20 + 12) / 152 within 1 mm.
  assert seg_metrics.nsd(a, b, (1.0, 1.0, 1.0), 2.0) == pytest.approx(1.0)
  assert seg_metrics.nsd(a, b, (1.0, 1.0, 1.0), 1.0) == pytest.approx(112 / 152)


def _brute_surface(mask):
  padded = np.pad(mask, 1)
  out = np.zeros_like(mask)
  for idx in zip(*np.nonzero(mask)):
    p = tuple(i + 1 for i in idx)
    for axis, step in itertools.product(range(3), (-1, 1)):
      q = list(p)
      q[axis] += step
      if not padded[tuple(q)]:
        out[idx] = True
  return out


def _brute_nsd(pred, gt, spacing, tol):
  sp, sg = _brute_surface(pred), _brute_surface(gt)
  if not sp.any() and not sg.any():
    return 1.0
  if not sp.any() or not sg.any():
    return 0.0
  p = np.argwhere(sp) * np.asarray(spacing)
  g = np.argwhere(sg) * np.asarray(spacing)
  d = np.sqrt(((p[:, None, :] - g[None, :, :]) ** 2).sum(-1))  # all pairs
  hits = np.sum(d.min(1) <= tol) + np.sum(d.min(0) <= tol)
  return hits / (len(p) + len(g))


@pytest.mark.parametrize("seed", range(6))
def test_nsd_matches_brute_force(seed):
  rng = np.random.default_rng(seed)
  shape = (7, 6, 5)
  pred = rng.random(shape) < 0.4
  gt = rng.random(shape) < 0.4
  if seed == 0:
    gt[:] = False
    gt[2:5, 1:4, 1:4] = True
  spacing = rng.uniform(0.5, 3.0, 3)
  for tol in (0.0, 0.7, 1.5, 3.0):
    assert seg_metrics.nsd(pred, gt, spacing, tol) == pytest.approx(
        _brute_nsd(pred, gt, spacing, tol), abs=1e-12)
  np.testing.assert_array_equal(seg_metrics.surface(pred), _brute_surface(pred))


def test_case_metrics_nan_for_unannotated_and_aggregation():
  shape = (6, 6, 6, 3)
  gt = np.zeros(shape, bool)
  pred = np.zeros(shape, bool)
  gt[1:3, 1:3, 1:3, 0] = True
  pred[1:3, 1:3, 1:2, 0] = True   # class 0: DSC = 2*4/(8+4) = 2/3
  pred[4, 4, 4, 2] = True          # class 2: predicted, but this source does not annotate it
  m = seg_metrics.case_metrics(pred, gt, [True, True, False], (1, 1, 1), 1.0)
  assert m["dsc"][0] == pytest.approx(2 / 3)
  assert m["dsc"][1] == 1.0 and m["nsd"][1] == 1.0            # both empty
  assert math.isnan(m["dsc"][2]) and math.isnan(m["nsd"][2])
  names = ["spleen", "liver", "pancreas"]
  cases = [
      {"source": "A", "dsc": m["dsc"], "nsd": m["nsd"]},
      {"source": "A", "dsc": np.array([np.nan, 0.5, np.nan]), "nsd": np.array([np.nan] * 3)},
      {"source": "B", "dsc": np.array([np.nan, np.nan, 0.25]), "nsd": np.array([np.nan] * 3)},
  ]
  s = seg_metrics.aggregate_by_source(cases, names)
  a = s["per_source"]["A"]
  assert a["n_cases"] == 2
  assert a["dsc"]["spleen"] == pytest.approx(2 / 3)           # NaN skipped, not counted as 0
  assert a["dsc"]["liver"] == pytest.approx(0.75)
  assert math.isnan(a["dsc"]["pancreas"])
  assert a["mean_dsc"] == pytest.approx((2 / 3 + 0.75) / 2)
  assert s["all"]["dsc"]["pancreas"] == pytest.approx(0.25)
  assert s["all"]["mean_dsc"] == pytest.approx((2 / 3 + 0.75 + 0.25) / 3)
  table = seg_metrics.format_table(s, "dsc")
  assert "spleen" in table and "all" in table and " -" in table and "0.750" in table
  json.loads(json.dumps(seg_metrics.to_jsonable(s), allow_nan=False))


def test_detection():
  pred = np.zeros((4, 4, 4, 32), bool)
  gt = np.zeros((4, 4, 4, 32), bool)
  pred[0, 0, 0, 26] = True          # liver tumor predicted
  gt[1, 1, 1, 26] = True            # and present (elsewhere: detection is per scan)
  annotated = np.zeros(32, bool)
  annotated[[5, 26]] = True
  det = seg_metrics.scan_detection(pred, gt, annotated, range(26, 33))
  assert det == {27: (True, True)}  # unannotated lesions are not counted as negatives
  stats = seg_metrics.detection_stats([(True, True), (False, True), (False, False), (True, False),
                                   (False, False)])
  assert stats["sensitivity"] == 0.5 and stats["specificity"] == pytest.approx(2 / 3)
  assert math.isnan(seg_metrics.detection_stats([(False, False)])["sensitivity"])
