"""Synthetic liver tumors in the train step, the liver_synthetic job, lesion detection by radius.

One module-scoped workdir: the tiny phantom (healthy-liver, spleen and LiTS-like sources)
converted once, the tiny liver_synthetic job run on it; detection by radius on hand-made blobs.
"""

import json
import pathlib

import jax
import ml_collections
import numpy as np
import pytest

from configs import liver_synthetic
from dassemble_jax import sharding
from dassemble_jax.ct import taxonomy
from dassemble_jax.data import arrayrecord_io
from dassemble_jax.jobs import liver_synthetic as liver_synthetic_job
from dassemble_jax.segmentation import assembly_data, evaluate, train_loop, train_step
from dassemble_jax.synth import training as synth_training

LIVER_BIT = int(taxonomy.bit(6))
TUMOR_BIT = int(taxonomy.bit(27))


def _json(path):
  return json.loads(pathlib.Path(path).read_text())


def _jsonl(path):
  return [json.loads(line) for line in pathlib.Path(path).read_text().splitlines()]


def _tiny():
  c = liver_synthetic.get_config("tiny")
  c.batch_size = jax.device_count()  # 8 fake CPU devices: one crop each
  return c


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("liver_synthetic")
  cfg = _tiny()
  with cfg.unlocked():
    cfg.data.phantom_sources = ("phantom_healthy_liver", "phantom_spleen", "phantom_lits")
  # Converted into the job's own data folder: the job then finds its sources ready.
  return {"tmp": tmp, "dirs": assembly_data.phantom_data(cfg, str(tmp / "run" / "data"))}


@pytest.fixture(scope="module")
def run(data):
  return liver_synthetic_job.run(_tiny(), str(data["tmp"] / "run"))


def test_synthesis_inserts_tumors_only_into_healthy_livers(data):
  dirs = [str(data["dirs"]["train"][n])
          for n in ("phantom_healthy_liver", "phantom_spleen", "phantom_lits")]
  cfg = _tiny()
  eligible = synth_training.eligible_sources(cfg, dirs)
  np.testing.assert_array_equal(eligible, [True, False, False])  # LiTS has tumors, spleen no liver
  # The healthy-liver phantom source annotates the liver only and has no tumor voxel.
  assert arrayrecord_io.read_manifest(dirs[0])["annotated"]["phantom_healthy_liver"] == [6]
  for record in arrayrecord_io.read_records(dirs[0], "train"):
    assert not (record["label"] & TUMOR_BIT).any() and (record["label"] & LIVER_BIT).any()
  with cfg.unlocked():
    cfg.data.shard_dirs = tuple(dirs)
    cfg.synth.prob = 1.0
    cfg.synth.kind_choices = ("medium", "large")
  iterator = train_loop.make_iterator(cfg, dirs, sharding.make_mesh())
  host = synth_training.mark_eligible(
      {k: np.asarray(v) for k, v in next(iterator).items()}, eligible)
  host = {k: host[k] for k in ("image", "label", "annotated", "source", "synth_ok")}
  fn = jax.jit(lambda key, b: synth_training.synthesize_window_batch(
      key, b, synth_training.spacing_of(cfg), synth_training.synth_config(cfg)))
  out = jax.device_get(fn(jax.random.key(0), host))
  ok = host["synth_ok"].astype(bool)
  assert ok.any() and (~ok).any(), host["source"]
  tumor = (out["label"] & TUMOR_BIT) != 0
  liver = (out["label"] & LIVER_BIT) != 0
  # Tumors appear in eligible windows only, always inside the liver (which keeps its bit).
  assert tumor[ok].sum() > 0 and tumor[~ok].sum() == (host["label"][~ok] & TUMOR_BIT != 0).sum()
  new_tumor = tumor & ~((host["label"] & TUMOR_BIT) != 0)
  assert not (new_tumor & ~liver).any()
  np.testing.assert_array_equal(out["label"] & ~np.uint32(TUMOR_BIT),
                                host["label"] & ~np.uint32(TUMOR_BIT))
  # Hypodense: darker where tumors were inserted; other samples untouched.
  assert (out["image"][new_tumor] < host["image"].astype(np.float32)[new_tumor]).mean() > 0.9
  np.testing.assert_array_equal(out["image"][~ok], host["image"][~ok].astype(np.float32))
  # The liver-tumor channel becomes annotated for the synthesized (healthy) samples only.
  annotated = out["annotated"][:, 26].astype(bool)
  np.testing.assert_array_equal(annotated[ok], True)
  np.testing.assert_array_equal(annotated[~ok], host["annotated"][~ok, 26].astype(bool))
  assert np.all(out["synth_tumor_voxels"][~ok] == 0)
  spleen = host["source"] == 1
  assert not annotated[spleen].any()


def test_job_trains_synthetic_and_real_and_reports_radius_bins(run, data):
  workdir = data["tmp"] / "run"
  summary = _json(workdir / "liver_synthetic.json")
  assert set(summary["models"]) == {"synthetic", "real"}
  for report in summary["models"].values():
    assert set(report["by_radius"]) == {"0-5mm", "5-10mm", ">10mm"}
    assert report["n_scans"] == 1 and report["step"] == 3
    assert 0.0 <= report["healthy"]["specificity"] <= 1.0
  assert "sens 0-5mm" in (workdir / "liver_synthetic.txt").read_text()
  # The synthetic model learned liver tumors from healthy livers: the class counts as trained.
  synth_dir = workdir / "runs" / "synthetic"
  assert set(_json(synth_dir / "trained_classes.json")) == {6, 27}
  assert set(_json(workdir / "runs" / "real" / "trained_classes.json")) == {6, 27}
  # The real-tumor model ran the same compiled step with no sample eligible for synthesis.
  real = _jsonl(workdir / "runs" / "real" / "metrics.jsonl")
  assert all(r["train/synth_samples"] == 0 == r["train/synth_tumor_voxels"] for r in real)
  lines = _jsonl(synth_dir / "metrics.jsonl")
  assert [r["step"] for r in lines] == [1, 2, 3]
  assert all(r["train/synth_samples"] == jax.device_count() for r in lines)
  assert sum(r["train/synth_tumor_voxels"] for r in lines) > 0
  # Same shapes every step: the synthesis step compiled once.
  config = ml_collections.ConfigDict(_json(synth_dir / "config.json"))
  assert train_step.compiled_for(config, 1).step._cache_size() == 1


def _ball(shape, centre, radius_mm, spacing):
  grid = np.ogrid[tuple(slice(0, n) for n in shape)]
  d2 = sum(((g - c) * s) ** 2 for g, c, s in zip(grid, centre, spacing))
  return d2 <= radius_mm ** 2


def test_detection_by_radius_on_hand_made_blobs():
  spacing = (1.0, 1.0, 2.0)
  shape = (80, 80, 40)
  small = _ball(shape, (10, 10, 10), 3.0, spacing)       # r 3 mm: bin 0-5
  mid_a = _ball(shape, (40, 12, 10), 7.0, spacing)       # r 7 mm: bin 5-10
  mid_b = _ball(shape, (12, 45, 25), 7.0, spacing)
  large = _ball(shape, (50, 50, 22), 12.0, spacing)      # r 12 mm: bin > 10
  gt = small | mid_a | mid_b | large
  one_voxel = np.zeros(shape, bool)
  one_voxel[10, 10, 10] = True
  false_positive = _ball(shape, (70, 10, 35), 3.0, spacing)
  pred = one_voxel | large | false_positive

  _, radii = evaluate.lesion_components(gt, spacing)
  expected = sorted((3 * m.sum() * 2.0 / (4 * np.pi)) ** (1 / 3)
                    for m in (small, mid_a, mid_b, large))
  np.testing.assert_allclose(sorted(radii), expected, rtol=1e-12)
  np.testing.assert_allclose(sorted(radii), [3, 7, 7, 12], rtol=0.12)  # voxelised spheres

  det = evaluate.detection_by_radius(pred, gt, spacing)
  assert {k: (v["n"], v["detected"]) for k, v in det.items()} == {
      "0-5mm": (1, 1), "5-10mm": (2, 0), ">10mm": (1, 1)}
  np.testing.assert_allclose(det["0-5mm"]["dsc_sum"], 2 / (1 + small.sum()))
  np.testing.assert_allclose(det[">10mm"]["dsc_sum"], 1.0)
  total = evaluate.sum_detections([det, det])
  assert total["5-10mm"]["sensitivity"] == 0.0 and total[">10mm"]["sensitivity"] == 1.0
  assert total["0-5mm"]["n"] == 2
  empty = evaluate.sum_detections([evaluate.detection_by_radius(pred, np.zeros(shape, bool),
                                                                spacing)])
  assert np.isnan(empty["0-5mm"]["sensitivity"]) and np.isnan(empty["0-5mm"]["dsc"])
