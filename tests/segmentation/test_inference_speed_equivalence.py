"""The fast host-side prediction code equals the implementation it replaced.

The old code is kept verbatim in benchmarks/predict_host.py (`ref_*`, also what
`predict_host.py --reference` times); every test here compares the new code with it, or with
SciPy, on random phantom masks and volumes with odd shapes, anisotropic spacing and flipped axes.
"""

import jax.numpy as jnp
import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from benchmarks import predict_host as ref
from dassemble_jax.ct import bitmask, nifti_io, resample
from dassemble_jax.segmentation import inference
from dassemble_jax.segmentation import postprocess as pp

SHAPE = (23, 19, 17)


def random_masks(seed: int, shape=SHAPE, c: int = 32) -> np.ndarray:
  """(X, Y, Z, C) bool: per class 0-3 ellipsoids (some cut by the border) plus crumbs."""
  rng = np.random.default_rng(seed)
  grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1)
  masks = np.zeros(tuple(shape) + (c,), bool)
  for k in range(c):
    for _ in range(rng.integers(0, 4)):
      centre = rng.uniform(-2, np.asarray(shape) + 1)
      radii = rng.uniform(1.0, 6.0, 3)
      masks[..., k] |= np.sum(((grid - centre) / radii) ** 2, -1) <= 1
    if rng.random() < 0.5:
      masks[..., k] |= rng.random(shape) < 0.003
  return masks


def affine_for(seed: int) -> np.ndarray | None:
  """None, a RAS scaling, or an LAS one (the right lung is then at low x indices)."""
  return [None, np.diag([1.5, 1.5, 2.0, 1.0]), np.diag([-0.8, 1.0, 1.0, 1.0])][seed % 3]


@pytest.mark.parametrize("seed", range(12))
def test_postprocess_equals_reference(seed):
  masks = random_masks(seed)
  affine = affine_for(seed)
  want = ref.ref_postprocess(masks, affine)
  assert not np.array_equal(want, masks)       # the steps do change these masks
  got = pp.postprocess(masks, affine)
  np.testing.assert_array_equal(got, want)
  bits = pp.postprocess_bits(bitmask.pack(masks), 32, affine)
  np.testing.assert_array_equal(bitmask.unpack(bits, 32), want)
  inplace = masks.copy()
  assert pp.postprocess(inplace, affine, copy=False, workers=2) is inplace
  np.testing.assert_array_equal(inplace, want)


def test_postprocess_options_and_class_counts():
  masks = random_masks(100)
  for kw in [{"closing": 3, "dilation": 7}, {"closing": 4, "dilation": 2}, {"lungs": False},
             {"lcc_ids": (1, 6), "host_filter_ids": (27,)}, {"closing": 1, "dilation": 1}]:
    np.testing.assert_array_equal(pp.postprocess(masks, **kw), ref.ref_postprocess(masks, **kw))
  for c in (27, 29, 40):  # fewer classes than lesions' ids; not a multiple of 8; > 32 bits
    m = random_masks(101, c=c)
    want = ref.ref_postprocess(m)
    np.testing.assert_array_equal(pp.postprocess(m), want)
    np.testing.assert_array_equal(bitmask.unpack(pp.postprocess_bits(bitmask.pack(m), c), c),
                                  want)
  with pytest.raises(ValueError, match="beyond"):
    pp.postprocess_bits(np.full((2, 2, 2), 1 << 30, np.uint32), 20)
  with pytest.raises(ValueError, match="bits must be"):
    pp.postprocess_bits(np.zeros((2, 2, 2), np.int32), 32)


def test_single_mask_functions_equal_reference():
  masks = random_masks(7)
  for k in range(32):
    np.testing.assert_array_equal(pp.largest_components(masks[..., k]),
                                  ref.ref_largest_components(masks[..., k]))
    for got, want in zip(pp.keep_two_largest_by_side(masks[..., k], affine_for(k)),
                         ref.ref_keep_two_largest_by_side(masks[..., k], affine_for(k))):
      np.testing.assert_array_equal(got, want)
    for closing, dilation in [(5, 5), (3, 7), (4, 2), (6, 3)]:
      np.testing.assert_array_equal(pp.host_region(masks[..., k], closing, dilation),
                                    ref.ref_host_region(masks[..., k], closing, dilation))
  np.testing.assert_array_equal(pp.split_lungs(masks), ref.ref_split_lungs(masks))


def test_box_filter_equals_scipy_at_the_border():
  m = np.random.default_rng(3).random((15, 12, 9)) < 0.3
  for size in (3, 5, 7):
    s = np.ones((size,) * 3, bool)
    np.testing.assert_array_equal(pp._box_filter(m, size, True), ndimage.binary_dilation(m, s))
    np.testing.assert_array_equal(pp._box_filter(m, size, False), ndimage.binary_erosion(m, s))


def test_boxes_pack_unpack_and_label_map():
  for c in (5, 32, 40):
    m = random_masks(11, c=c)
    want = [ref._ref_bbox(m[..., k]) for k in range(c)]
    assert bitmask.class_boxes(m) == want
    bits = bitmask.pack(m)
    assert bits.dtype == (np.uint32 if c <= 32 else np.uint64) and bits.shape == SHAPE
    assert bitmask.class_boxes(bits, c) == want
    assert bitmask.class_boxes(np.asfortranarray(bits), c) == want  # NIfTI's order
    np.testing.assert_array_equal(bitmask.unpack(bits, c), m)
    labels = pp.masks_to_label_map(m)
    np.testing.assert_array_equal(labels, ref.ref_masks_to_label_map(m))
    np.testing.assert_array_equal(pp.bits_to_label_map(bits, c), labels)
  rng = np.random.default_rng(12)
  for c in (1, 8, 29, 32, 33, 64):  # the flat (32, 64) and per-voxel forms, any memory order
    m = rng.random((5, 4, 3, c)) < 0.5
    want = sum(m[..., k].astype(np.uint64) << np.uint64(k) for k in range(c))
    for layout in (m, np.asfortranarray(m), m[::-1, :, ::-1]):
      bits = bitmask.pack(layout)
      np.testing.assert_array_equal(bits.astype(np.uint64), want[::-1, :, ::-1]
                                    if layout.strides[0] < 0 else want)
      np.testing.assert_array_equal(bitmask.unpack(bits, c), layout)
  # Bit k is class k + 1, as in the training records (taxonomy.bit).
  one = np.zeros((1, 1, 1, 32), bool)
  one[..., 26] = True
  assert bitmask.pack(one)[0, 0, 0] == 1 << 26 and pp.bits_to_label_map(bitmask.pack(one)) == 27


# An LPS-like affine with a permutation: the RAS view flips two axes and swaps y and z.
PERMUTED = np.array([[-0.7, 0.0, 0.0, 90.0],
                     [0.0, 0.0, -1.3, 40.0],
                     [0.0, 0.9, 0.0, -20.0],
                     [0.0, 0.0, 0.0, 1.0]])


@pytest.mark.parametrize("affine", [np.diag([-0.78, -0.78, 1.0, 1.0]), PERMUTED])
@pytest.mark.parametrize("spacing", [1.5, (0.5, 1.1, 2.0)])
def test_to_model_grid_equals_scipy(affine, spacing):
  hu = np.random.default_rng(0).integers(-1024, 2000, (26, 21, 13)).astype(np.int16)
  want, want_grid = ref.ref_to_model_grid(hu.astype(np.float32), affine, spacing)
  got, grid = inference.to_model_grid(hu, affine, spacing)  # the int16 volume, as predict_file
  assert got.dtype == np.float32 and got.shape == want.shape == grid.shape == want_grid.shape
  np.testing.assert_allclose(grid.affine, want_grid.affine, rtol=0, atol=1e-12)
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)
  # At the file's own spacing (in RAS axis order) nothing is interpolated: exactly equal.
  own = nifti_io.voxel_sizes(nifti_io.ras_view(hu, affine)[1])
  same, _ = inference.to_model_grid(hu, affine, own)
  np.testing.assert_array_equal(same, ref.ref_to_model_grid(hu, affine, own)[0])


def test_resample_linear_equals_scipy():
  rng = np.random.default_rng(1)
  data = rng.normal(size=(17, 12, 9)) * 100
  for scale, shape in [((1.9, 1.9, 1.5), (9, 6, 6)), ((0.4, 0.7, 1.0), (43, 18, 9)),
                       ((2.6, 0.3, 1.2), (7, 40, 8))]:
    # C order, Fortran order, and a flipped view: any strides, any loop axis.
    for view in (data, np.asfortranarray(data), data[::-1, :, ::-1]):
      want = ndimage.affine_transform(np.array(view), scale, output_shape=shape, order=1,
                                      mode="nearest", prefilter=False)
      got = resample.resample_linear(view, scale, shape)
      assert got.dtype == np.float32 and got.flags.c_contiguous
      np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)


@pytest.mark.parametrize("affine", [np.diag([-0.78, -0.78, 1.0, 1.0]), PERMUTED])
def test_to_original_grid_equals_reference(affine):
  rng = np.random.default_rng(2)
  original = inference.Grid((26, 21, 13), affine)
  _, grid = inference.to_model_grid(np.zeros(original.shape, np.int16), affine, 1.6)
  # A model grid cropped by 2 voxels at its end: the original voxels beyond it become 0.
  cropped = inference.Grid(tuple(n - 2 for n in grid.shape), grid.affine)
  for model in (grid, cropped):
    for data in [rng.integers(0, 33, model.shape).astype(np.uint8),
                 rng.integers(0, 2**32, model.shape, dtype=np.uint64).astype(np.uint32),
                 rng.random(model.shape + (3,)) < 0.5]:
      got = inference.to_original_grid(data, model, original)
      np.testing.assert_array_equal(got, ref.ref_to_original_grid(data, model, original))
      assert got.dtype == data.dtype
      if data.ndim == 3:
        assert got.flags.f_contiguous  # NIfTI's order: nibabel writes it without a copy


def test_threshold_bits_on_device_and_packed_predict():
  rng = np.random.default_rng(4)
  probs = rng.random((9, 8, 7, 32)).astype(np.float32)
  t = rng.uniform(0.3, 0.7, 32).astype(np.float32)
  bits = np.asarray(inference._threshold_bits_on_device(jnp.asarray(probs), jnp.asarray(t)))
  np.testing.assert_array_equal(bits, bitmask.pack(probs > t))

  def model(params, x):  # logits from the intensity: organs and lesions overlapping
    del params
    return jnp.concatenate([20.0 * (x - k / 32.0) for k in range(32)], -1)

  volume = rng.random((20, 18, 16)).astype(np.float32)
  kw = {"window": (8, 8, 8), "sw_batch_size": 2, "overlap": 0.25}
  for accumulate_on in ("device", "host"):
    masks = inference.predict_volume(model, volume, accumulate_on=accumulate_on, **kw)
    packed = inference.predict_volume(model, volume, accumulate_on=accumulate_on, packed=True,
                                    **kw)
    np.testing.assert_array_equal(bitmask.unpack(packed, 32), masks)
    raw = inference.predict_volume(model, volume, accumulate_on=accumulate_on, postprocess=False,
                                 **kw)
    np.testing.assert_array_equal(masks, ref.ref_postprocess(raw))


def test_save_per_class_from_packed_masks(tmp_path):
  masks = random_masks(5, c=6)
  names = [f"c{k}" for k in range(6)]
  bits = np.asfortranarray(bitmask.pack(masks))
  a = inference.save_per_class(tmp_path / "a", masks, np.eye(4), names)
  b = inference.save_per_class(tmp_path / "b", bits, np.eye(4), names)
  for pa, pb in zip(a, b):
    ia, ib = nib.load(str(pa)), nib.load(str(pb))
    assert ib.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(np.asanyarray(ia.dataobj), np.asanyarray(ib.dataobj))
  with pytest.raises(ValueError, match="class names"):
    inference.save_per_class(tmp_path / "c", bits.astype(np.uint8), np.eye(4), names * 2)
