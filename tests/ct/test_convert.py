"""The conversion command on tiny NIfTI files written in each dataset's own layout."""

import gzip
import json
import pathlib

import numpy as np
import pytest

from dassemble_jax.ct import bitmask, convert, nifti_io, resample, taxonomy
from dassemble_jax.data import arrayrecord_io

# LPS-stored (x, y flipped), 2 x 2 x 3 mm: the converter has to reorient and resample.
_AFFINE = np.array([[-2.0, 0, 0, 20], [0, -2.0, 0, 15], [0, 0, 3.0, -40], [0, 0, 0, 1]])
_SHAPE = (16, 12, 8)


def _case(seed, values=(1, 2)):
  """(HU image int16, label uint8): a body box, two organs at small and large x."""
  rng = np.random.default_rng(seed)
  image = np.full(_SHAPE, -1000, np.int16)
  image[1:15, 1:11, 1:7] = 40 + rng.integers(-10, 10, (14, 10, 6))
  label = np.zeros(_SHAPE, np.uint8)
  label[2:6, 3:8, 2:6] = values[0]
  label[10:14, 3:8, 2:6] = values[0]
  label[11:13, 4:6, 3:5] = values[1]
  return image, label


def _write(path, data, affine=_AFFINE):
  nifti_io.save(path, data, affine)


def _records(out):
  return list(arrayrecord_io.read_records(out, "train"))


def test_progress_lines_on_stderr_only_when_asked(tmp_path, capsys):
  raw = tmp_path / "kits"
  for i in range(3):
    image, label = _case(i)
    _write(raw / f"case_{i:05d}" / "imaging.nii.gz", image)
    _write(raw / f"case_{i:05d}" / "segmentation.nii.gz", label)
  convert.convert_dataset("kits", raw, tmp_path / "quiet", progress=False)
  assert capsys.readouterr().err == ""
  convert.convert_dataset("kits", raw, tmp_path / "out")
  lines = capsys.readouterr().err.splitlines()  # not a terminal: one line per case, no "\r"
  assert [line.split(" (")[0] for line in lines] == [f"convert {i}/3" for i in (1, 2, 3)]
  assert "cases/s" in lines[-1] and "ETA" in lines[-1] and "case case_00002" in lines[-1]


def test_kits_layout_and_record_contents(tmp_path):
  raw = tmp_path / "kits"
  for i in range(2):
    image, label = _case(i)
    _write(raw / f"case_{i:05d}" / "imaging.nii.gz", image)
    _write(raw / f"case_{i:05d}" / "segmentation.nii.gz", label)
  manifest = convert.convert_dataset("kits", raw, tmp_path / "out", progress=False)
  assert manifest["cases"] == {"train": ["case_00000", "case_00001"]}
  assert manifest["annotated"]["kits"] == [2, 3, 26, 32] and manifest["has_tumor"]["kits"]
  rec = _records(tmp_path / "out")[0]
  assert rec["image"].dtype == np.float16 and rec["label"].dtype == np.uint32
  assert 0 <= rec["image"].min() and rec["image"].max() <= 1
  np.testing.assert_allclose(rec["spacing"], 1.5)
  np.testing.assert_array_equal(rec["original_shape"], _SHAPE)
  np.testing.assert_allclose(rec["original_affine"], _AFFINE)
  assert rec["affine"][0, 0] > 0 and rec["affine"][1, 1] > 0  # RAS
  ch = bitmask.unpack(rec["label"], dtype=np.uint8)
  tumor = ch[..., 25].astype(bool)
  # Stored LPS (world x = 20 - 2 i): the blob at i = 10..13 (with the tumor) lies at negative
  # world x, the patient's left; the blob at i = 2..5 at positive x, the right.
  assert (_AFFINE @ np.r_[11.5, 0, 0, 1])[0] < 0 < (_AFFINE @ np.r_[3.5, 0, 0, 1])[0]
  assert tumor.any() and ch[..., 2][tumor].all() and not ch[..., 1][tumor].any()
  right_x = (rec["affine"] @ np.c_[np.argwhere(ch[..., 1]), np.ones(ch[..., 1].sum())].T)[0]
  assert right_x.min() > 0


def test_back_to_original_grid_recovers_the_labels(tmp_path):
  raw = tmp_path / "lits"
  image, label = _case(0)
  _write(raw / "volume-0.nii.gz", image)
  _write(raw / "segmentation-0.nii.gz", label)
  # Native spacing per axis: resampling is the identity, only reorientation and crop remain.
  convert.convert_dataset("lits", raw, tmp_path / "out", spacing=(2.0, 2.0, 3.0),
                          progress=False)
  rec = _records(tmp_path / "out")[0]
  liver = (rec["label"] & taxonomy.bit(6)) != 0
  back = resample.to_original_grid(liver.astype(np.uint8), rec["affine"],
                                   rec["original_affine"], rec["original_shape"])
  np.testing.assert_array_equal(back, label > 0)
  tumor = (rec["label"] & taxonomy.bit(27)) != 0
  back = resample.to_original_grid(tumor.astype(np.uint8), rec["affine"],
                                   rec["original_affine"], rec["original_shape"])
  np.testing.assert_array_equal(back, label == 2)


def test_msd_btcv_and_totalsegmentator_layouts(tmp_path):
  msd = tmp_path / "Task07_Pancreas"
  image, label = _case(1)
  _write(msd / "imagesTr" / "pancreas_001.nii.gz", image)
  _write(msd / "labelsTr" / "pancreas_001.nii.gz", label)
  (msd / "imagesTr" / "._pancreas_001.nii.gz").write_bytes(b"macOS resource fork")
  (msd / "dataset.json").write_text(json.dumps({
      "labels": {"0": "background", "1": "pancreas", "2": "cancer"},
      "training": [{"image": "./imagesTr/pancreas_001.nii.gz",
                    "label": "./labelsTr/pancreas_001.nii.gz"},
                   {"image": "./imagesTr/._pancreas_001.nii.gz",
                    "label": "./labelsTr/._pancreas_001.nii.gz"}]}))
  m = convert.convert_dataset("msd_task07_pancreas", msd, tmp_path / "o1", progress=False)
  assert m["cases"]["train"] == ["pancreas_001"]
  rec = _records(tmp_path / "o1")[0]
  assert np.any(rec["label"] == taxonomy.bit(11) | taxonomy.bit(28))  # tumor inside pancreas

  btcv = tmp_path / "BTCV" / "Training"
  for i in (1, 2):
    image, label = _case(i, values=(6, 14))
    _write(btcv / "img" / f"img{i:04d}.nii.gz", image)
    _write(btcv / "label" / f"label{i:04d}.nii.gz", label)
  _write(tmp_path / "BTCV" / "Testing" / "img" / "img0061.nii.gz", image)  # no label: not a case
  m = convert.convert_dataset("btcv", tmp_path / "BTCV", tmp_path / "o2", progress=False)
  assert m["cases"]["train"] == ["img0001", "img0002"]
  assert _records(tmp_path / "o2")[0]["annotated"][13] == 1  # duodenum present in these cases

  ts = tmp_path / "TotalSegmentator" / "s0001"
  image, label = _case(2)
  _write(ts / "ct.nii.gz", image)
  _write(ts / "segmentations" / "liver.nii.gz", (label == 1).astype(np.uint8))
  _write(ts / "segmentations" / "heart.nii.gz", (label == 2).astype(np.uint8))
  m = convert.convert_dataset("totalsegmentator", tmp_path / "TotalSegmentator", tmp_path / "o3",
                              progress=False)
  rec = _records(tmp_path / "o3")[0]
  assert set(np.unique(rec["label"]).tolist()) == {0, int(taxonomy.bit(6))}  # heart dropped


def test_output_does_not_depend_on_workers(tmp_path):
  raw = tmp_path / "lits"
  for i in range(3):
    image, label = _case(i)
    _write(raw / f"volume-{i}.nii.gz", image)
    _write(raw / f"segmentation-{i}.nii.gz", label)
  convert.convert_dataset("lits", raw, tmp_path / "a", workers=0, progress=False)
  convert.convert_dataset("lits", raw, tmp_path / "b", workers=2, progress=False)
  for ra, rb in zip(_records(tmp_path / "a"), _records(tmp_path / "b"), strict=True):
    assert ra.keys() == rb.keys()
    for k in ra:
      np.testing.assert_array_equal(ra[k], rb[k])


def _bad_cases(raw: pathlib.Path):
  """One good LiTS case plus one of each kind of bad case; -> {case id: expected message}."""
  image, label = _case(0)
  _write(raw / "volume-0.nii.gz", image)
  _write(raw / "segmentation-0.nii.gz", label)
  expected = {}
  _write(raw / "volume-1.nii.gz", image)
  (raw / "segmentation-1.nii.gz").write_bytes(gzip.compress(b"not a nifti file"))
  expected["volume-1"] = r"segmentation-1\.nii\.gz: cannot read NIfTI"
  _write(raw / "volume-2.nii.gz", image)
  _write(raw / "segmentation-2.nii.gz", label[:-1])
  expected["volume-2"] = r"segmentation-2\.nii\.gz: shape \(15, 12, 8\) differs"
  _write(raw / "volume-3.nii.gz", image)
  shifted = _AFFINE.copy()
  shifted[0, 3] += 5
  _write(raw / "segmentation-3.nii.gz", label, shifted)
  expected["volume-3"] = r"segmentation-3\.nii\.gz: affine differs"
  _write(raw / "volume-4.nii.gz", image)
  _write(raw / "segmentation-4.nii.gz", np.where(label == 2, 9, label).astype(np.uint8))
  expected["volume-4"] = r"segmentation-4\.nii\.gz: label values \['9'\] are outside"
  nan_image = image.astype(np.float32)
  nan_image[3, 3, 3] = np.nan
  _write(raw / "volume-5.nii.gz", nan_image)
  _write(raw / "segmentation-5.nii.gz", label)
  expected["volume-5"] = r"volume-5\.nii\.gz: 1 NaN"
  _write(raw / "volume-6.nii.gz", np.full(_SHAPE, -1000, np.int16))
  _write(raw / "segmentation-6.nii.gz", np.zeros(_SHAPE, np.uint8))
  expected["volume-6"] = r"volume-6\.nii\.gz: empty volume"
  _write(raw / "segmentation-7.nii.gz", label)
  expected["segmentation-7.nii.gz"] = r"label without an image"
  return expected


def test_bad_cases_fail_naming_the_file(tmp_path):
  expected = _bad_cases(tmp_path / "raw")
  # Layout problems are reported before any case is read.
  with pytest.raises(convert.ConversionError, match=expected.pop("segmentation-7.nii.gz")):
    convert.convert_dataset("lits", tmp_path / "raw", tmp_path / "out", progress=False)
  (tmp_path / "raw" / "segmentation-7.nii.gz").unlink()
  for case_id, message in expected.items():
    one = tmp_path / f"one-{case_id}"
    one.mkdir()
    n = case_id.split("-")[1]
    for stem in (f"volume-{n}.nii.gz", f"segmentation-{n}.nii.gz"):
      (one / stem).symlink_to(tmp_path / "raw" / stem)
    with pytest.raises(convert.ConversionError, match=message):
      convert.convert_dataset("lits", one, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]  # no temp leftovers


def test_bad_cases_skipped_and_listed(tmp_path):
  expected = _bad_cases(tmp_path / "raw")
  m = convert.convert_dataset("lits", tmp_path / "raw", tmp_path / "out", on_error="skip",
                              progress=False)
  assert m["cases"] == {"train": ["volume-0"]}
  skipped = {s["case"]: s["error"] for s in m["skipped"]}
  assert set(skipped) == set(expected)
  import re
  for case_id, message in expected.items():
    assert re.search(message, skipped[case_id]), (case_id, skipped[case_id])
  assert arrayrecord_io.read_manifest(tmp_path / "out")["skipped"] == m["skipped"]


def test_cli(tmp_path, capsys):
  raw = tmp_path / "spleen"
  image, label = _case(3, values=(1, 1))
  _write(raw / "imagesTr" / "spleen_1.nii.gz", image)
  _write(raw / "labelsTr" / "spleen_1.nii.gz", label)
  (raw / "dataset.json").write_text(json.dumps({"labels": {"0": "bg", "1": "spleen"}, "training": [
      {"image": "./imagesTr/spleen_1.nii.gz", "label": "./labelsTr/spleen_1.nii.gz"}]}))
  argv = ["--dataset", "msd_task09_spleen", "--input", str(raw), "--output", str(tmp_path / "o"),
          "--spacing", "3", "--on-error", "skip"]
  assert convert.main(argv) == 0
  assert "{'train': 1}" in capsys.readouterr().out
  assert convert.main(argv) == 1  # exists, no --overwrite
  assert "already exists" in capsys.readouterr().err
  # The spleen folder given as the liver task: its dataset.json says so, nothing is written.
  assert convert.main(argv[:4] + ["--output", str(tmp_path / "p"), "--dataset", "msd_task03_liver"]
                      ) == 1
  err = capsys.readouterr().err
  assert err == (f"error: {raw / 'dataset.json'}: not dataset 'msd_task03_liver': label 1 is "
                 "'spleen' (expected 'liver'); these are the label names of dataset "
                 "'msd_task09_spleen'\n")
  assert not (tmp_path / "p").exists()
  (raw / "dataset.json").write_text(json.dumps({"labels": {"0": "bg", "1": "a", "2": "b",
                                                           "3": "c"}, "training": []}))
  assert convert.main(argv[:4] + ["--output", str(tmp_path / "q")]) == 1
  assert ("dataset.json: not dataset 'msd_task09_spleen': label 1 is 'a' (expected 'spleen'), 2 "
          "is 'b' (expected 'no such label'), 3 is 'c'") in capsys.readouterr().err


@pytest.mark.parametrize("folder_of, given, ok", [
    ("msd_task09_spleen", "msd_task09_spleen", True),
    ("msd_task08_hepatic_vessel", "msd_task08_hepatic_vessel", True),
    ("amos", "amos", True),
    ("msd_task06_lung", "msd_task10_colon", False),     # one label each, both tumors
    ("msd_task03_liver", "msd_task07_pancreas", False),  # same values, other organ
    ("msd_task07_pancreas", "msd_task03_liver", False),
    ("amos", "msd_task09_spleen", False),                # 1 is spleen in both; 2..15 are not
])
def test_dataset_json_names_must_be_the_datasets(tmp_path, folder_of, given, ok):
  from dassemble_jax.ct import datasets
  names = dict(datasets.get(folder_of).label_names)
  names[0] = "bg"
  if folder_of == "msd_task09_spleen":
    names[1] = "Spleen"  # case and spacing do not matter
  (tmp_path / "dataset.json").write_text(json.dumps({"labels": {str(k): v for k, v in
                                                                names.items()}}))
  if ok:
    convert.check_label_names(datasets.get(given), tmp_path)
    return
  with pytest.raises(convert.ConversionError,
                     match=f"dataset.json: not dataset '{given}': label .*; these are the "
                           f"label names of dataset '{folder_of}'$"):
    convert.check_label_names(datasets.get(given), tmp_path)


def test_tcia_pancreas_ct_from_dicom_as_from_nifti(tmp_path):
  """Pancreas-CT as TCIA distributes it (a DICOM series per patient, nested study/series
  folders) with a NIfTI label: the record is the one the NIfTI of the same scan gives."""
  from tests.ct import fake_dicom as fd
  image, label = _case(4, values=(6, 7))
  dicom = tmp_path / "dicom"
  fd.write_series(dicom / "Pancreas-CT" / "PANCREAS_0004" / "11-24-2015-PANCREAS0004" / "1-1",
                  image, _AFFINE)
  _write(dicom / "label_tcia_multiorgan" / "label0004.nii.gz", label)
  nifti = tmp_path / "nifti"
  _write(nifti / "images" / "PANCREAS_0004.nii.gz", image)
  _write(nifti / "labels" / "label0004.nii.gz", label)
  for raw in (dicom, nifti):
    manifest = convert.convert_dataset("tcia_pancreas_ct", raw, tmp_path / f"out_{raw.name}",
                                       progress=False)
    assert manifest["cases"] == {"train": ["PANCREAS_0004"]} and manifest["skipped"] == []
  a, b = _records(tmp_path / "out_dicom")[0], _records(tmp_path / "out_nifti")[0]
  assert sorted(a) == sorted(b)
  for key in a:
    np.testing.assert_array_equal(a[key], b[key], err_msg=key)
  assert ((a["label"] & taxonomy.bit(11)) != 0).any()  # label 7: pancreas


def test_dicom_series_with_a_missing_slice_is_a_bad_case(tmp_path):
  from tests.ct import fake_dicom as fd
  raw = tmp_path / "raw"
  for i in (1, 2):
    image, label = _case(i, values=(6, 7))
    fd.write_series(raw / f"PANCREAS_000{i}", image, _AFFINE, skip=(3,) if i == 2 else ())
    _write(raw / "labels" / f"label000{i}.nii.gz", label)
  with pytest.raises(convert.ConversionError,
                     match=r"case PANCREAS_0002: .*PANCREAS_0002: uneven slice spacing"):
    convert.convert_dataset("tcia_pancreas_ct", raw, tmp_path / "fail", progress=False)
  assert not (tmp_path / "fail").exists()
  manifest = convert.convert_dataset("tcia_pancreas_ct", raw, tmp_path / "skip", on_error="skip",
                                     progress=False)
  assert manifest["cases"] == {"train": ["PANCREAS_0001"]}
  assert "uneven slice spacing" in manifest["skipped"][0]["error"]


@pytest.mark.parametrize("flags, message", [
    (["--spacing", "0"], "error: --spacing 0.0: voxel sizes must be > 0 mm\n"),
    (["--spacing", "1.5", "-1", "1.5"], "error: --spacing 1.5 -1.0 1.5: voxel sizes must be > 0 mm\n"),
    (["--spacing", "1", "2"], "error: --spacing 1.0 2.0: give 1 or 3 values (mm)\n"),
    (["--val-fraction", "1"], "error: --val-fraction 1.0: must be in [0, 1)\n"),
])
def test_cli_refuses_bad_flags_before_reading(tmp_path, capsys, flags, message):
  """`--spacing 0` is the flag's fault, said before any scan is read (it once blamed the scan)."""
  argv = ["--dataset", "msd_task09_spleen", "--input", str(tmp_path / "missing"),
          "--output", str(tmp_path / "o")] + flags
  assert convert.main(argv) == 2
  assert capsys.readouterr().err == message
  assert not (tmp_path / "o").exists()


def test_cli_output_that_is_a_file(tmp_path, capsys):
  (tmp_path / "o").write_text("not a folder")
  argv = ["--dataset", "msd_task09_spleen", "--input", str(tmp_path), "--output",
          str(tmp_path / "o")]
  assert convert.main(argv) == 1
  assert capsys.readouterr().err == f"error: {tmp_path / 'o'}: --output exists and is not a folder\n"
