"""A real abdominal CT + segmentation (TotalSegmentator's source distribution) through the
converter, with TotalSegmentator's own class map (parsed with ast, never imported)."""

import pathlib
import tarfile

import numpy as np
import pytest

from dassemble_jax import fetch
from dassemble_jax.ct import bitmask, convert, layouts, nifti_io, preprocess, taxonomy
from dassemble_jax.data import arrayrecord_io

pytestmark = pytest.mark.network_cache

_PREFIX = "totalsegmentator-2.18.0/"
_FILES = {"tests/reference_files/example_ct_sm.nii.gz": "s0001/ct.nii.gz",
          "tests/reference_files/example_seg.nii.gz": "s0001/seg.nii.gz",
          "totalsegmentator/map_to_binary.py": "map_to_binary.py"}


@pytest.fixture(scope="module")
def ts_root(tmp_path_factory):
  archive = fetch.pip_download("totalsegmentator==2.18.0", sdist=True)
  root = tmp_path_factory.mktemp("ts")
  with tarfile.open(archive) as tar:
    for member, target in _FILES.items():
      data = tar.extractfile(_PREFIX + member).read()
      (root / target).parent.mkdir(parents=True, exist_ok=True)
      (root / target).write_bytes(data)
  return root


def test_real_ct_through_the_class_map(ts_root: pathlib.Path, tmp_path):
  class_map = layouts.read_class_map(ts_root / "map_to_binary.py", "total")
  assert len(class_map) == 117 and class_map[5] == "liver" and class_map[2] == "kidney_right"
  seg, seg_affine = nifti_io.load(ts_root / "s0001" / "seg.nii.gz")
  # At the native 3 mm, resampling is the identity: voxel counts must survive exactly.
  m = convert.convert_dataset("totalsegmentator", ts_root, tmp_path / "native", spacing=3.0,
                              class_map=class_map, progress=False)
  assert m["cases"]["train"] == ["s0001"] and not m["skipped"]
  rec = next(arrayrecord_io.read_records(tmp_path / "native", "train"))
  ch = bitmask.unpack(rec["label"])
  names = {v: k for k, v in class_map.items()}
  assert ch[..., 5].sum() == (seg == names["liver"]).sum() > 1000          # liver
  assert ch[..., 1].sum() == (seg == names["kidney_right"]).sum() > 100    # right kidney
  lungs_left = np.isin(seg, [names["lung_upper_lobe_left"], names["lung_lower_lobe_left"]])
  assert ch[..., 16].sum() == lungs_left.sum() > 0                          # lobes merged
  assert ch[..., 18].sum() == (seg == names["small_bowel"]).sum()           # -> intestine
  np.testing.assert_array_equal(np.flatnonzero(rec["annotated"]) + 1,
                                [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 16, 17, 18, 19,
                                 21, 22, 23, 24, 32])
  assert 0.0 <= rec["image"].min() and rec["image"].max() <= 1.0

  # The left/right rule, checked on real anatomy: split the union of both kidneys and compare
  # with TotalSegmentator's named sides.
  both = np.isin(seg, [names["kidney_right"], names["kidney_left"]])
  right, left = preprocess.split_pair_label(both, seg_affine)
  assert right.sum() > 100
  np.testing.assert_array_equal(right, seg == names["kidney_right"])
  np.testing.assert_array_equal(left, seg == names["kidney_left"])


def test_real_ct_at_default_spacing(ts_root: pathlib.Path, tmp_path):
  class_map = layouts.read_class_map(ts_root / "map_to_binary.py")
  convert.convert_dataset("totalsegmentator", ts_root, tmp_path / "out", class_map=class_map,
                          progress=False)
  rec = next(arrayrecord_io.read_records(tmp_path / "out", "train"))
  np.testing.assert_allclose(rec["spacing"], 1.5)
  seg, _ = nifti_io.load(ts_root / "s0001" / "seg.nii.gz")
  liver_ml = (seg == 5).sum() * 27 / 1000
  converted_ml = ((rec["label"] & taxonomy.bit(6)) != 0).sum() * 1.5 ** 3 / 1000
  assert abs(converted_ml - liver_ml) / liver_ml < 0.05  # nearest resampling keeps volume
