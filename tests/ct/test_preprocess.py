"""Orientation, resampling, HU scaling, label mapping, left/right split, body crop."""

import numpy as np
import pytest
from nibabel import orientations

from dassemble_jax.ct import bitmask, datasets, nifti_io, preprocess, resample, taxonomy
from dassemble_jax.ct.nifti_io import CaseError


def _world(affine, idx):
  return (affine @ np.r_[idx, 1.0])[:3]


@pytest.mark.parametrize("axcodes_perm", [((0, -1), (1, -1), (2, 1)),    # LPS
                                          ((2, 1), (0, -1), (1, 1))])     # S, L, A order
def test_reorient_to_ras_keeps_world_positions(axcodes_perm):
  rng = np.random.default_rng(0)
  data = rng.normal(size=(5, 6, 7)).astype(np.float32)
  # An affine whose voxel axis i runs along world axis perm[i][0] with sign perm[i][1].
  affine = np.zeros((4, 4))
  for i, (axis, sign) in enumerate(axcodes_perm):
    affine[axis, i] = sign * (1.0 + 0.5 * i)
  affine[:3, 3] = [10.0, -20.0, 30.0]
  affine[3, 3] = 1
  out, new_affine = nifti_io.reorient_to_ras(data, affine)
  assert orientations.aff2axcodes(new_affine) == ("R", "A", "S")
  # Every voxel keeps its world position: find each original voxel in the output.
  inv = np.linalg.inv(new_affine)
  for idx in [(0, 0, 0), (4, 5, 6), (1, 3, 2), (4, 0, 6)]:
    j = np.round(inv @ np.r_[_world(affine, idx), 1.0])[:3].astype(int)
    assert out[tuple(j)] == data[idx]


def test_resample_linear_ramp_is_exact_and_affine_updated():
  # f = 2 x + 3 y - z in world mm is reproduced exactly by linear interpolation.
  affine = np.diag([0.8, 1.2, 2.0, 1.0])
  affine[:3, 3] = [5, -7, 11]
  idx = np.stack(np.meshgrid(*[np.arange(n) for n in (20, 15, 9)], indexing="ij"), -1)
  world = idx @ affine[:3, :3].T + affine[:3, 3]
  f = world @ np.array([2.0, 3.0, -1.0])
  out, new_affine = resample.resample_to_spacing(f, affine, 1.5, order=1, out_dtype=np.float64)
  assert out.shape == resample.resampled_shape((20, 15, 9), (0.8, 1.2, 2.0), (1.5,) * 3) == (
      11, 12, 12)
  np.testing.assert_allclose(nifti_io.voxel_sizes(new_affine), 1.5)
  np.testing.assert_allclose(new_affine[:3, 3], affine[:3, 3])  # voxel 0 stays put
  new_idx = np.stack(np.meshgrid(*[np.arange(n) for n in out.shape], indexing="ij"), -1)
  new_world = new_idx @ new_affine[:3, :3].T + new_affine[:3, 3]
  expected = new_world @ np.array([2.0, 3.0, -1.0])
  # Inside the old extent (border samples beyond the last voxel repeat the edge).
  inside = np.all(new_idx * 1.5 <= (np.array([19, 14, 8]) * [0.8, 1.2, 2.0]) + 1e-9, axis=-1)
  np.testing.assert_allclose(out[inside], expected[inside], atol=1e-9)


def test_resample_nearest_keeps_label_values_and_round_trips():
  labels = np.zeros((12, 12, 12), np.uint8)
  labels[2:6, 3:9, 4:10] = 3
  labels[7:11, 1:5, 1:5] = 7
  affine = np.diag([1.0, 1.0, 1.0, 1.0])
  down, down_affine = resample.resample_to_spacing(labels, affine, 0.5, order=0)
  assert down.shape == (24, 24, 24) and set(np.unique(down)) == {0, 3, 7}
  back = resample.to_original_grid(down, down_affine, affine, labels.shape, order=0)
  np.testing.assert_array_equal(back, labels)


def test_scale_hu_hand_values():
  hu = np.array([-1000, -175, 37.5, 250, 3000], np.float32)
  np.testing.assert_allclose(preprocess.scale_hu(hu), [0, 0, 0.5, 1, 1], atol=1e-7)


def _two_blobs(shape=(20, 10, 8)):
  mask = np.zeros(shape, bool)
  mask[2:6, 3:7, 2:6] = True      # small x
  mask[13:18, 3:7, 2:6] = True    # large x
  return mask


def test_split_pair_label_by_ras_world_x():
  mask = _two_blobs()
  right, left = preprocess.split_pair_label(mask, np.eye(4))
  # RAS: x grows towards the patient's right, so the larger-x blob is the right organ.
  assert right[15, 4, 3] and not right[3, 4, 3] and left[3, 4, 3]
  assert (right | left).sum() == mask.sum() and not (right & left).any()
  # Same voxels, x axis stored flipped (world x = -i): the sides swap.
  flipped = np.diag([-1.0, 1, 1, 1])
  right2, left2 = preprocess.split_pair_label(mask, flipped)
  np.testing.assert_array_equal(right2, left)
  np.testing.assert_array_equal(left2, right)


def test_split_pair_label_assigns_fragments_and_single_blob():
  mask = _two_blobs()
  mask[17, 9, 7] = True  # an isolated voxel on the right side
  right, _ = preprocess.split_pair_label(mask, np.eye(4))
  assert right[17, 9, 7]
  single = np.zeros((20, 10, 8), bool)
  single[14:17, 2:5, 2:5] = True
  right, left = preprocess.split_pair_label(single, np.eye(4))
  assert right.sum() == single.sum() and not left.any()


def test_map_labels_kits_tumor_in_kidney_and_pair_split():
  spec = datasets.get("kits")
  local = _two_blobs().astype(np.uint8)
  local[14:16, 4:6, 3:5] = 2  # tumor in the right (large-x) kidney
  local[3, 4, 3] = 3          # a cyst in the left kidney
  bits, annotated = preprocess.map_labels(local, spec, np.eye(4))
  ch = bitmask.unpack(bits, dtype=np.uint8)
  tumor = local == 2
  assert ch[..., 25][tumor].all() and ch[..., 1][tumor].all()      # tumor (26) + right kidney (2)
  assert ch[3, 4, 3, 31] and ch[3, 4, 3, 2]                        # cyst (32) + left kidney (3)
  assert ch[..., 1].sum() == 5 * 4 * 4 and ch[..., 2].sum() == 4 * 4 * 4
  np.testing.assert_array_equal(np.flatnonzero(annotated) + 1, [2, 3, 26, 32])


def test_map_labels_lits_optional_and_errors():
  local = np.zeros((6, 6, 6), np.int16)
  local[1:4, 1:4, 1:4] = 1
  local[2, 2, 2] = 2
  bits, _ = preprocess.map_labels(local, datasets.get("lits"), np.eye(4))
  assert bits[2, 2, 2] == taxonomy.bit(6) | taxonomy.bit(27)
  assert bits[1, 1, 1] == taxonomy.bit(6) and bits[0, 0, 0] == 0
  # BTCV's duodenum (14) counts as annotated only where the case has it.
  btcv = datasets.get("btcv")
  assert preprocess.map_labels(local, btcv, np.eye(4))[1][13] == 0
  local14 = local.copy()
  local14[5, 5, 5] = 14
  assert preprocess.map_labels(local14, btcv, np.eye(4))[1][13] == 1
  with pytest.raises(CaseError, match=r"lab.nii.*\['5'\] are outside the mapping"):
    bad = local.copy()
    bad[0, 0, 0] = 5
    preprocess.map_labels(bad, datasets.get("lits"), np.eye(4), where="lab.nii")
  with pytest.raises(CaseError, match="non-integer"):
    preprocess.map_labels(local + 0.5, datasets.get("lits"), np.eye(4))


def test_map_labels_by_name():
  spec = datasets.get("totalsegmentator")
  local = np.array([[[0, 1, 2, 3]]], np.uint8)
  names = {1: "lung_upper_lobe_left", 2: "heart", 3: "kidney_cyst_right"}
  bits, annotated = preprocess.map_labels(local, spec, np.eye(4), names=names)
  assert list(bits[0, 0]) == [0, taxonomy.bit(17), 0, taxonomy.bit(32) | taxonomy.bit(2)]
  assert annotated[15] == annotated[16] == 1 and annotated[14] == 0  # hepatic vessel unknown


def test_body_box_includes_labels_and_rejects_empty():
  image = np.zeros((10, 10, 10), np.float32)
  image[2:5, 3:6, 4:8] = 0.4
  bits = np.zeros((10, 10, 10), np.uint32)
  bits[8, 8, 8] = 1
  assert preprocess.body_box(image) == (slice(2, 5), slice(3, 6), slice(4, 8))
  assert preprocess.body_box(image, bits) == (slice(2, 9), slice(3, 9), slice(4, 9))
  with pytest.raises(CaseError, match="scan.nii: empty volume"):
    preprocess.body_box(np.zeros((4, 4, 4)), where="scan.nii")


def test_crop_centres_categories():
  bits = np.zeros((8, 8, 8), np.uint32)
  bits[1:3, 1:3, 1:3] = taxonomy.bit(6)
  bits[2, 2, 2] |= taxonomy.bit(27)
  c = preprocess.crop_centres(bits, np.random.default_rng(0), max_points=5)
  assert c["fg"].shape == (5, 3) and c["organ"].shape == (5, 3)
  np.testing.assert_array_equal(c["tumor"], [[2, 2, 2]])
  assert all(bits[tuple(p)] & taxonomy.bit(6) for p in c["organ"])
