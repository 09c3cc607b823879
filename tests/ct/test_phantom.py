"""The procedural abdomen phantom and its partially labelled sources."""

import numpy as np

from dassemble_jax.ct import phantom, taxonomy
from dassemble_jax.data import arrayrecord_io

_SMALL = {"shape": (32, 28, 20), "spacing": (6.0, 6.0, 8.0)}


def test_make_case_is_deterministic_and_anatomical():
  a = phantom.make_case(np.random.default_rng(3), tumors=("liver_tumor",), **_SMALL)
  b = phantom.make_case(np.random.default_rng(3), tumors=("liver_tumor",), **_SMALL)
  c = phantom.make_case(np.random.default_rng(4), tumors=("liver_tumor",), **_SMALL)
  np.testing.assert_array_equal(a.hu, b.hu)
  assert not np.array_equal(a.hu, c.hu)
  centre = lambda m: np.argwhere(m).mean(0)
  # RAS voxel order: larger x is the patient's right, larger y anterior, larger z superior.
  assert centre(a.masks["liver"])[0] > centre(a.masks["spleen"])[0]
  assert centre(a.masks["kidney_right"])[0] > centre(a.masks["kidney_left"])[0]
  assert centre(a.masks["bladder"])[2] < centre(a.masks["liver"])[2]
  assert a.masks["liver_tumor"].any() and not (a.masks["liver_tumor"] & ~a.masks["liver"]).any()
  assert a.hu[a.masks["liver"] & ~a.masks["liver_tumor"]].mean() > a.hu[a.masks[
      "liver_tumor"]].mean()  # hypodense lesions
  assert (a.hu[~a.masks["body"]] < -800).mean() > 0.9  # air outside (blurred border aside)


def test_sources_through_the_converter(tmp_path):
  out = phantom.write_phantom_sources(tmp_path, 2, seed=1, shape=(32, 28, 20),
                                      native_spacing=(6.0, 6.0, 8.0), spacing=6.0)
  assert list(out) == list(phantom.SOURCE_NAMES)
  expected = {"phantom_lits": [6, 27], "phantom_kits": [2, 3, 26], "phantom_spleen": [1],
              "phantom_btcv": list(range(1, 14))}
  for name, path in out.items():
    manifest = arrayrecord_io.read_manifest(path)
    assert manifest["annotated"][name] == expected[name]
    for rec in arrayrecord_io.read_records(path, "train"):
      written = set(np.flatnonzero(np.bitwise_or.reduce(rec["label"].ravel()) >> np.arange(
          32, dtype=np.uint32) & 1) + 1)
      assert written <= set(expected[name]), (name, written)
  # The raw files were stored LPS; after conversion the liver is at the patient's right.
  rec = next(arrayrecord_io.read_records(out["phantom_lits"], "train"))
  liver = np.argwhere(rec["label"] & taxonomy.bit(6))
  world_x = (rec["affine"] @ np.c_[liver, np.ones(len(liver))].T)[0]
  assert world_x.mean() > 0
  # Same seed, same raw data.
  again = phantom.write_raw_source("phantom_spleen", tmp_path / "again", 1, seed=1,
                                   shape=(32, 28, 20), spacing=(6.0, 6.0, 8.0))
  first = (tmp_path / "raw" / "phantom_spleen" / "imagesTr" / "phantom_000.nii.gz").read_bytes()
  assert (again / "imagesTr" / "phantom_000.nii.gz").read_bytes() == first
