"""`predict --preview`: the radiological convention, checked on a phantom whose sides differ."""

import matplotlib.image
import numpy as np

from dassemble_jax.segmentation import preview

SHAPE = (30, 24, 20)  # RAS voxel order: x towards the patient's right, y front, z head


def _phantom_ras():
  """A liver block on the patient's right (large x), a spleen block on the left (small x), a
  stomach (id 7) at the front (large y), all in the upper half (large z)."""
  labels = np.zeros(SHAPE, np.uint8)
  labels[20:28, 8:16, 12:18] = 6       # liver: patient's right
  labels[2:8, 8:14, 12:16] = 1         # spleen: patient's left
  labels[12:16, 19:23, 13:17] = 7      # stomach: anterior
  hu = np.where(labels > 0, 80, -50).astype(np.int16)
  affine = np.diag([1.5, 1.0, 2.5, 1.0])
  return hu, labels, affine


def _as_lps(hu, labels, affine):
  """The same scan stored with the x and y axes reversed (what DICOM conversions give)."""
  flip = np.diag([-1.0, -1.0, 1.0, 1.0])
  flip[:2, 3] = [SHAPE[0] - 1, SHAPE[1] - 1]
  return hu[::-1, ::-1].copy(), labels[::-1, ::-1].copy(), affine @ flip


def _columns(image2d, value):
  return np.argwhere(image2d == value)[:, 1]


def test_patient_right_is_on_the_image_left_whatever_the_storage_order():
  ras = preview.radiological_views(*_phantom_ras())
  lps = preview.radiological_views(*_as_lps(*_phantom_ras()))
  for view in preview.VIEWS:  # the same pictures from both storage orders
    for a, b in zip(ras[view][:2], lps[view][:2]):
      np.testing.assert_array_equal(a, b)
  # Axial (seen from the feet): liver (patient's right) on the image's left, spleen on its
  # right, stomach (anterior) at the top; pixels 1.0 mm high, 1.5 mm wide.
  image, labels, aspect = ras["axial"]
  assert labels.shape == (SHAPE[1], SHAPE[0]) and aspect == 1.0 / 1.5
  assert _columns(labels, 6).max() < _columns(labels, 1).min()
  assert _columns(labels, 6).max() < labels.shape[1] / 2 < _columns(labels, 1).min()
  stomach_rows, liver_rows = np.argwhere(labels == 7)[:, 0], np.argwhere(labels == 6)[:, 0]
  assert stomach_rows.max() < liver_rows.min()
  assert image[labels == 6].min() == 80 and image[labels == 0].max() == -50
  # Coronal (seen from the front): right on the left, head at the top.
  _, labels, aspect = ras["coronal"]
  assert labels.shape == (SHAPE[2], SHAPE[0]) and aspect == 2.5 / 1.5
  assert _columns(labels, 6).max() < labels.shape[1] / 2 < _columns(labels, 1).min()
  assert np.argwhere(labels > 0)[:, 0].max() < SHAPE[2] / 2  # organs in the upper half
  # Sagittal: anterior (the stomach's side) on the left, head at the top.
  _, labels, aspect = ras["sagittal"]
  assert labels.shape == (SHAPE[2], SHAPE[1]) and aspect == 2.5 / 1.0


def test_sagittal_front_on_the_left():
  hu, labels, affine = _phantom_ras()
  labels[:] = 0
  labels[14, 18:22, 5:8] = 7   # anterior, low
  labels[14, 2:5, 14:18] = 1   # posterior, high
  _, cut, _ = preview.radiological_views(hu, labels, affine)["sagittal"]
  front, back = np.argwhere(cut == 7), np.argwhere(cut == 1)
  assert front[:, 1].max() < back[:, 1].min()       # anterior left of posterior
  assert back[:, 0].max() < front[:, 0].min()       # superior above inferior


def test_preview_png(tmp_path):
  hu, labels, affine = _as_lps(*_phantom_ras())
  path = preview.write_preview(tmp_path / "case.png", hu, labels, affine, title="case.nii.gz")
  image = matplotlib.image.imread(path)
  assert image.ndim == 3 and image.shape[1] > 2 * image.shape[0]  # three panels side by side
  assert sorted(p.name for p in tmp_path.iterdir()) == ["case.png"]
  # The liver's palette colour is drawn (blended over the grey CT).
  assert image[..., :3].std() > 0.05
