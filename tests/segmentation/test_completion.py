"""Completion library: confidence, merging with human labels, review order, viewer files, and the
phantom's hidden truth. Values are worked out by hand in the comments."""

import numpy as np
import pytest
from scipy import stats

from dassemble_jax.ct import bitmask, taxonomy
from dassemble_jax.data import arrayrecord_io
from dassemble_jax.segmentation import completion, completion_study, phantom_truth

ID = {c.name: c.id for c in taxonomy.CLASSES}


def _vol(values):
  return np.asarray(values, np.float64).reshape(-1, 1, 1)


def test_confidence_by_hand():
  prob = _vol([0.9, 0.6, 0.3, 0.1])
  mask = _vol([1, 1, 0, 0]).astype(bool)
  members = [mask, _vol([1, 0, 0, 0]).astype(bool)]
  s = completion.class_confidence(prob, mask, members, band=(0.25, 0.75))
  # mean prob in the region (0.9 + 0.6) / 2; uncertain 0.6, 0.3 of the 3 voxels above 0.25;
  # members' DSC 2 * 1 / (2 + 1); confidence 0.75 * (1 - 2/3) * (1 - 1/3) = 1/6.
  assert s["mean_prob"] == pytest.approx(0.75)
  assert s["uncertain_fraction"] == pytest.approx(2 / 3)
  assert s["disagreement"] == pytest.approx(1 / 3)
  assert s["confidence"] == pytest.approx(1 / 6)
  assert s["voxels"] == 2
  # One model: no disagreement term.
  assert completion.class_confidence(prob, mask)["confidence"] == pytest.approx(0.25)


def test_empty_prediction_organ_needs_review_lesion_may_be_absent():
  prob = _vol([0.2, 0.1, 0.0])
  empty = np.zeros(prob.shape, bool)
  assert completion.class_confidence(prob, empty)["confidence"] == 0.0
  lesion = completion.class_confidence(prob, empty, is_lesion=True, band=(0.25, 0.75))
  assert lesion["mean_prob"] == pytest.approx(0.8)   # 1 - the highest probability
  assert lesion["confidence"] == pytest.approx(0.8)  # nothing above 0.25: nothing uncertain
  with pytest.raises(ValueError, match="band"):
    completion.class_confidence(prob, empty, band=(0.8, 0.2))


def test_merge_human_wins_and_rejected_stay_unknown():
  b = lambda *names: np.uint32(sum(int(taxonomy.bit(ID[n])) for n in names))
  # Four voxels. Human source annotates the liver (voxels 0, 1) and the liver tumor (voxel 1).
  human = np.array([b("liver"), b("liver", "liver_tumor"), 0, b("spleen")], np.uint32)
  annotated = taxonomy.annotated_vector([ID["liver"], ID["liver_tumor"]]).astype(bool)
  # Pseudo: spleen on voxels 0 (a human liver voxel) and 2; liver on voxel 2 (ignored: human);
  # kidney_right on voxel 3 (rejected below); kidney tumor on voxel 1 (inside a human liver).
  pseudo = np.array([b("spleen"), b("kidney_tumor"), b("spleen", "liver"), b("kidney_right")],
                    np.uint32)
  accepted = taxonomy.annotated_vector([ID["spleen"], ID["liver"], ID["kidney_tumor"]]
                                       ).astype(bool)
  bits, ann, ps = completion.merge(human.reshape(4, 1, 1), annotated, pseudo.reshape(4, 1, 1),
                                   accepted)
  bits = bits.reshape(-1)
  # The human spleen bit of voxel 3 is dropped: the source does not annotate the spleen.
  assert bits.tolist() == [b("liver"), b("liver", "liver_tumor"), b("spleen"), 0]
  assert np.flatnonzero(ann).tolist() == sorted(
      [ID["liver"] - 1, ID["liver_tumor"] - 1, ID["spleen"] - 1, ID["kidney_tumor"] - 1])
  assert np.flatnonzero(ps).tolist() == sorted([ID["spleen"] - 1, ID["kidney_tumor"] - 1])
  assert ann[ID["kidney_right"] - 1] == 0  # rejected: unknown, not background
  # A pseudo liver tumor may lie inside a human liver (its host).
  bits2, _, _ = completion.merge(
      np.array([b("liver")], np.uint32).reshape(1, 1, 1),
      taxonomy.annotated_vector([ID["liver"]]).astype(bool),
      np.array([b("liver_tumor")], np.uint32).reshape(1, 1, 1),
      taxonomy.annotated_vector([ID["liver_tumor"]]).astype(bool))
  assert int(bits2.item()) == b("liver", "liver_tumor")


def test_review_order():
  rows = [{"case": "a", "class": "liver", "confidence": 0.9, "disagreement": 0.0,
           "uncertain_fraction": 0.1},
          {"case": "b", "class": "spleen", "confidence": 0.2, "disagreement": 0.1,
           "uncertain_fraction": 0.5},
          {"case": "c", "class": "spleen", "confidence": 0.2, "disagreement": 0.3,
           "uncertain_fraction": 0.2}]
  ranked = completion.review_order(rows)
  assert [r["case"] for r in ranked] == ["c", "b", "a"]  # ties: more disagreement first
  assert [r["rank"] for r in ranked] == [1, 2, 3]


def test_study_tables_statistics():
  """Rank correlation and the paired comparison against hand / independent computations."""
  rng = np.random.default_rng(0)
  seeds = []
  for s in range(3):
    rows = [{"source": "phantom_lits", "class": "spleen", "confidence": float(c),
             "true_dsc": float(d), "status": "pseudo" if c >= 0.5 else "unknown"}
            for c, d in zip(rng.random(6), rng.random(6))]
    heldout = {"round1": {"dsc": {"spleen": 0.5 + 0.1 * s, "liver": 0.8}},
               "round2": {"dsc": {"spleen": 0.6 + 0.1 * s + 0.01 * s * s, "liver": 0.7}}}
    seeds.append({"seed": s, "rows": rows, "heldout": heldout})
  out = completion_study.study_tables(seeds, 0.5)
  for s, r in zip(seeds, out["confidence_rank"]):
    # Spearman = Pearson of the ranks (no ties among random floats).
    c = np.argsort(np.argsort([x["confidence"] for x in s["rows"]]))
    d = np.argsort(np.argsort([x["true_dsc"] for x in s["rows"]]))
    assert r["spearman"] == pytest.approx(np.corrcoef(c, d)[0, 1])
  spleen = out["rounds"]["spleen"]
  diff = np.array([0.1, 0.11, 0.14])
  assert spleen["diff_mean"] == pytest.approx(diff.mean())
  assert spleen["diff_std"] == pytest.approx(diff.std(ddof=1))
  t = diff.mean() / (diff.std(ddof=1) / np.sqrt(3))
  assert spleen["p"] == pytest.approx(2 * stats.t.sf(abs(t), df=2))
  assert out["rounds"]["liver"]["p"] is None  # identical differences: no test
  assert out["rounds"]["liver"]["seeds_worse"] == 3


def test_phantom_truth_matches_human_labels(tmp_path):
  """The regenerated truth equals each source's human labels on the classes it annotates and
  holds the classes it hides."""
  from dassemble_jax.ct import convert, phantom
  shape, native = (40, 36, 32), (4.5, 4.5, 5.0)
  phantom.write_raw_source("phantom_lits", tmp_path / "raw", 1, 3, shape=shape, spacing=native)
  convert.convert_dataset(phantom.source_spec("phantom_lits"), tmp_path / "raw",
                          tmp_path / "shards", spacing=6.0, seed=3, progress=False)
  manifest = arrayrecord_io.read_manifest(tmp_path / "shards")
  (record,) = list(arrayrecord_io.read_records(tmp_path / "shards", "train"))
  truth = phantom_truth.truth_bits(record, "phantom_lits", manifest["cases"]["train"][0], seed=3,
                                   shape=shape, native_spacing=native, spacing=6.0)
  assert truth.shape == record["label"].shape
  assert phantom_truth.agreement(record, truth) == {"liver": 1.0, "liver_tumor": 1.0}
  full = bitmask.unpack(truth)
  assert full[..., ID["spleen"] - 1].any() and full[..., ID["aorta"] - 1].any()
  assert not bitmask.unpack(record["label"])[..., ID["spleen"] - 1].any()
  # Another seed's case does not line up.
  other = phantom_truth.truth_bits(record, "phantom_lits", manifest["cases"]["train"][0],
                                   seed=4, shape=shape, native_spacing=native, spacing=6.0)
  assert phantom_truth.agreement(record, other)["liver"] < 0.99
