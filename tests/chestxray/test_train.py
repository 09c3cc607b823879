"""The chest X-ray settings: every config loads; a tiny semi-supervised assembly trains with the
classification job (DenseNet, Grain, masked BCE, per-source AUC with absent labels skipped)."""

import json

import numpy as np
import pytest

from configs import chestxray_assemble
from dassemble_jax.classification import experiments, metrics
from dassemble_jax.jobs import classify
from tests.chestxray import fake_cxr


def test_every_setting_and_its_tiny_variant():
  for s in experiments.CHESTXRAY_SETTINGS:
    full, tiny = chestxray_assemble.get_config(s), chestxray_assemble.get_config(f"{s},tiny")
    assert full.data.label_space == tiny.data.label_space and full.data.label_space
    assert full.model.arch == "densenet" and full.model.block_config == (6, 12, 24, 16)
    assert all(t["num_train"] <= 48 for t in tiny.data.sources)
    for src in full.data.sources:
      assert set(src["classes"]) <= set(full.data.label_space)
  assert chestxray_assemble.get_config("D0+D1").data.label_space == experiments.CXR_ALL
  semi, partial = (chestxray_assemble.get_config(x) for x in ("semi", "partial"))
  assert semi.data == partial.data and semi.semisup.enabled and not partial.semisup.enabled
  full = chestxray_assemble.get_config("full")
  assert all(set(s["classes"]) == set(experiments.CXR_ALL) for s in full.data.sources)
  assert chestxray_assemble.get_config("nodule+Pleural_Thickening").data.label_space == (
      "Nodule", "Pleural Thickening")
  with pytest.raises(ValueError, match="expected one of"):
    chestxray_assemble.get_config("D2")


def test_per_source_auc_skips_what_a_source_lacks():
  scores = np.array([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3], [0.4, 0.6], [0.6, 0.9], [0.1, 0.2]])
  targets = np.array([[1, 0], [0, 0], [1, 0], [0, 0], [0, 1], [0, 0]], np.float32)
  known = np.array([[1, 0], [1, 0], [1, 0], [1, 0], [0, 1], [0, 1]], np.float32)
  source = np.array([0, 0, 0, 0, 1, 1])
  got = metrics.per_source_auc(scores, targets, known, source, 2)
  assert got[0, 0] == 1.0 and np.isnan(got[0, 1])  # source 0 never labels class 1
  assert np.isnan(got[1, 0]) and got[1, 1] == 1.0
  # Pooled: class 0 over source 0's rows only (the only ones where it is known).
  np.testing.assert_array_equal(metrics.per_class_auc(scores, targets, known), [1.0, 1.0])


def test_tiny_semi_supervised_assembly_trains(tmp_path):
  nih = fake_cxr.write_nih(tmp_path / "nih", fake_cxr.nih_rows(36, seed=4),
                           test_patients=range(25, 37))
  cx = fake_cxr.write_chexpert(tmp_path, fake_cxr.chexpert_rows(1, 40, "train", seed=5),
                               fake_cxr.chexpert_rows(64541, 12, "valid", seed=6,
                                                      uncertain=False))
  c = chestxray_assemble.get_config("semi,tiny")
  c.data.nih_root, c.data.chexpert_root = str(nih), str(cx)
  results = classify.train_and_evaluate(c, str(tmp_path / "run"))
  assert set(results["test_auc"]) == set(experiments.CXR_ALL)
  by_source = results["test_auc_by_source"]
  assert set(by_source["D0"]) <= set(experiments.CXR_OVERLAP_D0)
  assert set(by_source["D1"]) <= set(experiments.CXR_OVERLAP_D1)
  assert np.isfinite(results["mean_test_auc"])
  lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
  assert "train/consistency" in json.loads(lines[0])  # the semi-supervised terms ran
  manifest = json.loads((tmp_path / "run" / "data" / "manifest.json").read_text())
  assert manifest["dataset"] == "chestxray" and manifest["label_space"] == list(
      experiments.CXR_ALL)
