"""Post-processing on synthetic blobs (RAS arrays: axis 0 runs towards the patient's right)."""

import numpy as np
import pytest

from dassemble_jax.segmentation import postprocess as pp

SHAPE = (32, 24, 20)
C = 32


def ball(centre, radius, shape=SHAPE):
  grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1)
  return np.sum((grid - np.asarray(centre)) ** 2, -1) <= radius**2


def empty_masks(shape=SHAPE):
  return np.zeros(shape + (C,), bool)


def test_thresholds():
  probs = np.zeros((2, 2, 2, 3), np.float32)
  probs[..., 0] = 0.6
  probs[..., 1] = 0.4
  probs[..., 2] = 0.5
  np.testing.assert_array_equal(pp.apply_thresholds(probs, 0.5)[0, 0, 0], [True, False, False])
  np.testing.assert_array_equal(pp.apply_thresholds(probs, [0.7, 0.3, 0.45])[0, 0, 0],
                                [False, True, True])
  with pytest.raises(ValueError, match="thresholds"):
    pp.apply_thresholds(probs, [0.5, 0.5])
  t = pp.thresholds_from_mapping({27: 0.3}, default=0.5)
  assert t.shape == (32,) and t[26] == np.float32(0.3) and t[0] == 0.5


def test_largest_component_26_connected():
  m = np.zeros((10, 10, 10), bool)
  m[1:4, 1:4, 1:4] = True           # 27 voxels
  m[4, 4, 4] = True                 # touches the cube only at a corner: same 26-component
  m[7:9, 7:9, 7:9] = True           # 8 voxels, separate
  out = pp.largest_components(m)
  assert out.sum() == 28 and not out[7:9, 7:9, 7:9].any()
  assert pp.largest_components(m, k=2).sum() == 36
  assert not pp.largest_components(np.zeros((3, 3, 3), bool)).any()


def test_lcc_for_organs_not_tumors():
  masks = empty_masks()
  liver = ball((10, 12, 10), 6)
  spur = ball((26, 4, 4), 2)
  masks[..., 5] = liver | spur                                       # liver (id 6) + a false blob
  tumors = ball((8, 12, 10), 2) | ball((13, 12, 10), 1)              # two liver tumors (id 27)
  masks[..., 26] = tumors
  out = pp.postprocess(masks)
  np.testing.assert_array_equal(out[..., 5], liver)
  np.testing.assert_array_equal(out[..., 26], tumors)                # both kept


def test_keep_two_largest_by_side_by_position_and_affine():
  a, b = ball((6, 12, 10), 4), ball((24, 12, 10), 3)
  crumb = ball((15, 2, 2), 1)
  right, left = pp.keep_two_largest_by_side(a | b | crumb)
  # RAS array: larger index along axis 0 = further to the patient's right.
  np.testing.assert_array_equal(right, b)
  np.testing.assert_array_equal(left, a)                             # the crumb is dropped
  flip = np.diag([-1.0, 1.0, 1.0, 1.0])                              # an LAS array
  right, left = pp.keep_two_largest_by_side(a | b, flip)
  np.testing.assert_array_equal(right, a)
  np.testing.assert_array_equal(left, b)
  # One component: assigned to the side of the volume centre it lies on.
  right, left = pp.keep_two_largest_by_side(b)
  np.testing.assert_array_equal(right, b)
  assert not left.any()


def test_split_lungs_fixes_swapped_channels():
  masks = empty_masks()
  right_lung, left_lung = ball((24, 12, 10), 5), ball((7, 12, 10), 5)
  r, l = pp.LUNG_RIGHT - 1, pp.LUNG_LEFT - 1
  masks[..., r] = left_lung                 # the model put the lungs in the wrong channels
  masks[..., l] = right_lung | ball((15, 2, 2), 1)
  out = pp.postprocess(masks)
  np.testing.assert_array_equal(out[..., r], right_lung)
  np.testing.assert_array_equal(out[..., l], left_lung)
  # Touching lungs (one component): the model's channels are kept.
  masks = empty_masks()
  masks[12:20, 4:20, 4:16, r] = True
  masks[4:12, 4:20, 4:16, l] = True
  out = pp.postprocess(masks)
  np.testing.assert_array_equal(out[..., r], masks[..., r])
  np.testing.assert_array_equal(out[..., l], masks[..., l])


def test_lesions_kept_inside_closed_dilated_host():
  masks = empty_masks()
  liver = ball((10, 12, 10), 6)
  masks[..., 5] = liver
  inside = ball((10, 12, 10), 2)
  near = np.zeros(SHAPE, bool)
  near[17, 12, 10] = True                   # 1 voxel beyond the liver's edge (x = 16): kept
  far = ball((27, 4, 4), 1)                 # nowhere near the liver: removed
  masks[..., 26] = inside | near | far
  masks[..., 27] = far                      # pancreas tumor: not host-filtered by default
  out = pp.postprocess(masks)
  np.testing.assert_array_equal(out[..., 26], inside | near)
  np.testing.assert_array_equal(out[..., 27], far)
  # Kidney tumor inside the left kidney, with both kidneys as the host region.
  masks = empty_masks()
  masks[..., 1] = ball((24, 12, 10), 4)
  masks[..., 2] = ball((6, 12, 10), 4)
  kid_tumor = ball((6, 12, 10), 2)
  masks[..., 25] = kid_tumor | ball((15, 22, 18), 1)
  out = pp.postprocess(masks)
  np.testing.assert_array_equal(out[..., 25], kid_tumor)
  # No host at all: the lesion is removed.
  masks = empty_masks()
  masks[..., 26] = inside
  assert not pp.postprocess(masks)[..., 26].any()


def test_host_region_closes_holes_and_dilates():
  host = np.zeros((20, 20, 20), bool)
  host[5:15, 5:15, 5:15] = True
  host[9:11, 9:11, 0:20] &= False           # a tunnel through the organ
  region = pp.host_region(host, closing=5, dilation=5)
  assert region[10, 10, 10]                 # the tunnel is closed
  assert region[3, 10, 10] and not region[2, 10, 10]  # dilated by 2 voxels, not more


def test_label_map_round_trip():
  masks = empty_masks()
  masks[..., 1] = ball((24, 12, 10), 5)     # right kidney
  masks[..., 2] = ball((6, 12, 10), 4)      # left kidney
  masks[..., 5] = ball((15, 12, 10), 3)     # liver (touching nothing)
  kt = ball((25, 12, 10), 2)                # kidney tumor in the right kidney
  lt = ball((15, 12, 10), 1)                # liver tumor
  masks[..., 25] = kt
  masks[..., 26] = lt
  labels = pp.masks_to_label_map(masks)
  assert labels.dtype == np.uint8
  assert np.all(labels[kt] == 26) and np.all(labels[lt] == 27)       # lesions over organs
  assert np.all(labels[masks[..., 2]] == 3)
  assert set(np.unique(labels)) == {0, 2, 3, 6, 26, 27}
  back = pp.label_map_to_masks(labels)
  np.testing.assert_array_equal(back, masks)                         # hosts restored
  strict = pp.label_map_to_masks(labels, add_hosts=False)
  assert not strict[..., 1][kt].any()
  with pytest.raises(ValueError, match="num_classes"):
    pp.label_map_to_masks(labels, num_classes=20)


def test_tumor_present():
  masks = empty_masks()
  masks[3, 3, 3, 26] = True
  found = pp.tumor_present(masks)
  assert found[27] and not found[26] and len(found) == 7
