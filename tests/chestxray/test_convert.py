"""Readers and conversion on small datasets in the published layouts; bad input fails cleanly."""

import csv
import json
import pathlib
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from dassemble_jax.chestxray import chexpert, convert, covidx, images, nih, splits
from dassemble_jax.classification import experiments
from dassemble_jax.data import arrayrecord_io
from dassemble_jax.data.errors import DataFormatError
from tests.chestxray import fake_cxr

REPO = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("cxr")
  nih_rows = fake_cxr.nih_rows(30, per_patient=2, seed=1)
  nih_root = fake_cxr.write_nih(tmp / "nih", nih_rows, test_patients=range(25, 31))
  cx = fake_cxr.write_chexpert(tmp, fake_cxr.chexpert_rows(1, 30, "train", seed=2),
                               fake_cxr.chexpert_rows(64541, 6, "valid", seed=3,
                                                      uncertain=False))
  return {"tmp": tmp, "nih": nih_root, "chexpert": cx, "nih_rows": nih_rows}


def _config(data, setting="D0+D1", **data_overrides):
  c = experiments.chestxray_assemble(f"{setting},tiny")
  c.data.nih_root, c.data.chexpert_root = str(data["nih"]), str(data["chexpert"])
  for k, v in data_overrides.items():
    setattr(c.data, k, v)
  return c


def test_readers_parse_the_published_layouts(data):
  t = nih.read_labels(nih.find_csv(data["nih"]))
  assert len(t) == 60 and t.names[-1] == "No Finding"
  for i, (_, findings, patient) in enumerate(data["nih_rows"]):
    assert t.patients[i] == str(patient)
    assert {n for n, v in zip(t.names, t.values[i]) if v == 1} == set(findings.split("|"))
  pools = nih.official_split(data["nih"], t)
  assert len(pools["test"]) == 12 and len(pools["train_val"]) == 48
  assert len(nih.index_images(data["nih"])) == 60
  c = chexpert.read_labels(data["chexpert"] / "train.csv")
  assert len(c) == 60 and set(c.views) == {"frontal", "lateral"}
  assert set(np.unique(c.values[np.isfinite(c.values)])) == {-1.0, 0.0, 1.0}
  assert len(chexpert.filter_view(c, "frontal")) == 30
  # The CSV's release folder is replaced by the root the user gives.
  p = chexpert.image_path("/x/CheXpert-v1.0", "CheXpert-v1.0-small/train/patient1/s/v.jpg")
  assert p == pathlib.Path("/x/CheXpert-v1.0/train/patient1/s/v.jpg")


def test_covidx_split_files(tmp_path):
  root = fake_cxr.write_covidx(tmp_path, [("A1", "a.png", "positive", "rsna"),
                                          ("A2", "b b.png", "negative", "sirm")],
                               [("B1", "c.png", "COVID-19", "cohen")])
  t = covidx.read_split_file(root / "train.txt", "train")
  assert list(t.paths) == ["train/a.png", "train/b b.png"] and list(t.patients) == ["A1", "A2"]
  np.testing.assert_array_equal(t.column("COVID-19"), [1, 0])
  assert covidx.annotated(t) == ("COVID-19",)
  old = covidx.read_split_file(root / "test.txt", "test")
  assert np.isnan(old.column("Pneumonia")[0])  # COVID-19 pneumonia: unknown for "Pneumonia"
  c = experiments.chestxray_assemble("covid_only,tiny")
  c.data.covidx_root = str(root)
  c.data.validation_fraction = 0.0
  m = convert.convert(c.data, tmp_path / "out", show_progress=False)
  assert m["sources"][0]["splits"]["train"]["classes"]["COVID-19"]["positive"] == 1
  (tmp_path / "test.txt").write_text("B1 c.png maybe cohen\n")
  with pytest.raises(DataFormatError, match=r"test.txt: line 1: unknown class 'maybe'"):
    covidx.read_split_file(tmp_path / "test.txt", "test")


def test_patient_split_is_disjoint_and_seeded():
  patients = np.array([f"p{i // 3}" for i in range(300)], dtype=object)  # 100 patients x 3
  pool = {"train_val": np.arange(240), "test": np.arange(240, 300)}
  out, dropped = splits.split_by_patient(patients, pool, validation_fraction=0.25, seed=0)
  assert dropped == 0
  sets = {k: set(patients[v]) for k, v in out.items()}
  assert not (sets["train"] & sets["validation"] or sets["train"] & sets["test"]
              or sets["validation"] & sets["test"])
  assert len(sets["validation"]) == 20  # a quarter of the 80 training-pool patients
  again, _ = splits.split_by_patient(patients, pool, validation_fraction=0.25, seed=0)
  np.testing.assert_array_equal(out["validation"], again["validation"])
  # A test patient with images in the training pool loses those images (test kept whole).
  pool = {"train_val": np.arange(244), "test": np.arange(244, 300)}  # p81 straddles
  out, dropped = splits.split_by_patient(patients, pool, validation_fraction=0.25, seed=0)
  assert dropped == 1 and "p81" not in set(patients[np.concatenate([out["train"],
                                                                    out["validation"]])])
  with pytest.raises(ValueError, match="patient 'p0' is in both"):
    splits.check_disjoint(patients, {"train": np.arange(3), "test": np.arange(2, 6)})


def test_resize_is_antialiased():
  # A one-pixel checkerboard has no low frequencies: an anti-aliased 4x reduction is flat grey,
  # point sampling would give pure black or white.
  board = (np.indices((128, 128)).sum(0) % 2 * 255).astype(np.uint8)
  path = pathlib.Path(__file__).parent / "_board.png"
  try:
    Image.fromarray(board).save(path)
    out = images.load(path, 32)[..., 0].astype(float)
  finally:
    path.unlink()
  assert out.shape == (32, 32) and abs(out.mean() - 127.5) < 2 and out.std() < 2
  # A smooth ramp survives: within 2 grey levels of the 4x4 block means.
  ramp = np.add.outer(np.arange(128), np.arange(128)).astype(np.uint8)
  path.with_suffix(".tmp.png")
  Image.fromarray(ramp).save(path)
  try:
    out = images.load(path, 32)[..., 0].astype(float)
  finally:
    path.unlink()
  blocks = ramp.reshape(32, 4, 32, 4).mean((1, 3))
  assert np.abs(out - blocks)[2:-2, 2:-2].max() <= 2


def test_conversion_assembles_two_datasets(data, tmp_path):
  c = _config(data)
  m = convert.convert(c.data, tmp_path / "out", show_progress=False)
  manifest = arrayrecord_io.read_manifest(tmp_path / "out")
  assert manifest["label_space"] == list(experiments.CXR_ALL)
  assert manifest["synonyms"]["chexpert"]["Pleural Effusion"] == "Effusion"
  assert [s["classes"] for s in manifest["sources"]] == [list(experiments.CXR_D0),
                                                          list(experiments.CXR_D1)]
  arrayrecord_io.verify_shards(tmp_path / "out")
  cx_table = chexpert.read_labels(data["chexpert"] / "train.csv")
  nih_table = nih.read_labels(nih.find_csv(data["nih"]))
  patients_by_split = {}
  for split in convert.SPLITS:
    arr = arrayrecord_io.load_split_arrays(tmp_path / "out", split)
    assert arr["image"].shape[1:] == (32, 32, 1) and arr["image"].dtype == np.uint8
    for sid, table in ((0, cx_table), (1, nih_table)):
      rows = arr["row"][arr["source"] == sid]
      assert len(rows) == m["sources"][sid]["splits"][split]["images"]
      # Known masks: each source knows exactly its own classes.
      k = arr["known"][arr["source"] == sid]
      own = [experiments.CXR_ALL.index(x) for x in manifest["sources"][sid]["classes"]]
      other = [i for i in range(7) if i not in own]
      assert (k[:, other] == 0).all()
      if split != "test" and sid == 1:
        assert (k[:, own] == 1).all()  # NIH: every finding known
      if sid == 1:
        by_row = {int(r): i for i, r in enumerate(table.rows)}
        patients_by_split.setdefault(split, set()).update(
            f"nih{table.patients[by_row[int(r)]]}" for r in rows)
    # CheXpert's uncertain labels are unknown under U-Ignore; the stored targets match the file.
    cx = arr["source"] == 0
    raw = {int(r): i for i, r in enumerate(cx_table.rows)}
    if split != "test":
      for row, t, k in zip(arr["row"][cx], arr["targets"][cx], arr["known"][cx]):
        v = cx_table.values[raw[int(row)]]
        for j, name in enumerate(experiments.CXR_D0):
          val = v[chexpert.NAMES.index(name)]
          assert k[j] == (0.0 if val == -1 else 1.0) and t[j] == (1.0 if val == 1 else 0.0)
  assert not (patients_by_split["train"] & patients_by_split["test"])
  assert not (patients_by_split["validation"] & patients_by_split["test"])
  assert not (patients_by_split["train"] & patients_by_split["validation"])
  # Only frontal CheXpert views were kept.
  d0_train = m["sources"][0]["splits"]
  assert d0_train["train"]["images"] + d0_train["validation"]["images"] == 30


def test_uncertainty_policies_change_the_stored_targets(data, tmp_path):
  counts = {}
  for policy in ("ignore", "zeros", "ones"):
    m = convert.convert(_config(data, "D0", uncertainty=policy).data, tmp_path / policy,
                        show_progress=False)
    counts[policy] = m["sources"][0]["splits"]["train"]["classes"]["Cardiomegaly"]
  ig, ze, on = counts["ignore"], counts["zeros"], counts["ones"]
  u = ig["uncertain_in_file"]
  assert u > 0 and ig["unknown"] == u and ze["unknown"] == 0 and on["unknown"] == 0
  assert ze["negative"] == ig["negative"] + u and on["positive"] == ig["positive"] + u


def _run_cli(data, out, *extra):
  return subprocess.run([sys.executable, "-m", "dassemble_jax.chestxray.convert",
                         "--setting=D0+D1,tiny", f"--output={out}", *extra],
                        cwd=REPO, capture_output=True, text=True, timeout=120, check=False)


def _copy_chexpert(data, dst):
  shutil.copytree(data["chexpert"].parent / data["chexpert"].name, dst)
  return dst


@pytest.mark.parametrize("problem", ["missing_column", "bad_value", "missing_image",
                                     "unreadable_image", "unknown_finding"])
def test_bad_input_is_one_line_and_writes_nothing(data, tmp_path, problem, capsys):
  cx = _copy_chexpert(data, tmp_path / "CheXpert-v1.0-small")
  nih_root = data["nih"]
  train_csv = cx / "train.csv"
  with open(train_csv, newline="") as f:
    rows = list(csv.reader(f))
  if problem == "missing_column":
    col = rows[0].index("Edema")
    rows = [r[:col] + r[col + 1:] for r in rows]
    expect = r"train.csv: missing column\(s\) \['Edema'\]"
  elif problem == "bad_value":
    rows[3][rows[0].index("Edema")] = "2.0"
    expect = r"train.csv: row 3 \(line 4\): column 'Edema' has value '2.0'"
  elif problem in ("missing_image", "unreadable_image"):
    image = chexpert.image_path(cx, rows[5][0])  # row 5: patient00003's frontal view
    if problem == "missing_image":
      image.unlink()
      expect = r"train.csv: row 5 \(line 6\): image .*view1_frontal.jpg not found"
    else:
      image.write_bytes(image.read_bytes()[:40])  # a truncated JPEG
      expect = r"train.csv: row 5 \(line 6\): cannot read image .*view1_frontal.jpg"
  else:
    nih_root = tmp_path / "nih"
    shutil.copytree(data["nih"], nih_root)
    entry = nih_root / "Data_Entry_2017_v2020.csv"
    text = entry.read_text().splitlines()
    text[2] = text[2].replace(text[2].split(",")[1], "Tumour", 1)
    entry.write_text("\n".join(text) + "\n")
    expect = r"Data_Entry_2017_v2020.csv: row 2 \(line 3\): unknown finding\(s\) \['Tumour'\]"
  with open(train_csv, "w", newline="") as f:
    csv.writer(f).writerows(rows)
  out = tmp_path / "out"
  # In process (the command line itself is run once below): the same main(), a second faster.
  rc = convert.main(["--setting=D0+D1,tiny", f"--output={out}", f"--nih={nih_root}",
                     f"--chexpert={cx}"])
  err = capsys.readouterr().err
  assert rc == 1, err
  lines = err.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: "), err
  assert re.search(expect, lines[0]), lines[0]
  assert not out.exists()
  assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]  # no temporary left


def test_cli_writes_the_dataset(data, tmp_path):
  r = _run_cli(data, tmp_path / "out", f"--nih={data['nih']}", f"--chexpert={data['chexpert']}")
  assert r.returncode == 0, r.stderr
  manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
  assert manifest["image_size"] == 32 and manifest["uncertainty"] == "ignore"
  r = _run_cli(data, tmp_path / "out", f"--nih={data['nih']}", f"--chexpert={data['chexpert']}")
  assert r.returncode == 1 and "already exists" in r.stderr


def test_sixteen_bit_png_and_rgb_jpeg_become_8_bit_gray(tmp_path):
  # 16-bit PNGs (PadChest, some COVIDx sources) are stretched from their own min..max.
  ramp = np.tile(np.linspace(1000, 41000, 64), (64, 1)).astype(np.uint16)
  Image.fromarray(ramp).save(tmp_path / "a.png")
  out = images.load(tmp_path / "a.png", 16)[..., 0].astype(int)
  stretched = (ramp - 1000.0) * 255 / 40000
  blocks = stretched.reshape(16, 4, 16, 4).mean((1, 3))
  assert np.abs(out - blocks)[:, 1:-1].max() <= 2  # the full 0..255 range, block means inside
  assert (np.diff(out, axis=1) >= 0).all()  # monotone, as the ramp
  rgb = np.stack([np.full((30, 40), 200, np.uint8)] * 3, -1)
  Image.fromarray(rgb).save(tmp_path / "b.jpg", quality=95)
  assert np.abs(images.load(tmp_path / "b.jpg", 8).astype(int) - 200).max() <= 2
