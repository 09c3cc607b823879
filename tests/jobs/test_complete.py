"""The completion job on the tiny phantom: outputs, human labels kept, resume after a kill, the
ensemble's mean, and one-line errors for bad inputs."""

import json
import os
import pathlib
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from configs import complete as complete_config
from dassemble_jax.ct import bitmask, taxonomy
from dassemble_jax.ct.nifti_io import load
from dassemble_jax.data import arrayrecord_io
from dassemble_jax.jobs import complete
from dassemble_jax.segmentation import assembly_data, ensemble, sliding_window, trained_run

REPO = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def study(tmp_path_factory):
  """The tiny phantom study, run once: round 1, completion, round 2, held-out comparison."""
  workdir = tmp_path_factory.mktemp("complete")
  config = complete_config.get_config("tiny")
  config.batch_size = jax.device_count()  # 8 fake CPU devices: one crop each
  summary = complete.run(config, str(workdir))
  return config, workdir, summary


def _records(folder, split="train"):
  ids = arrayrecord_io.read_manifest(folder)["cases"][split]
  return {ids[int(r["case_index"])]: r for r in arrayrecord_io.read_records(folder, split)}


def test_configs_load():
  full, tiny = complete_config.get_config(), complete_config.get_config("tiny")
  assert full.job == tiny.job == "complete"
  assert len(full.complete.seeds) >= 3 and full.complete.run_dirs == ()
  with pytest.raises(ValueError, match="expected"):
    complete_config.get_config("nonsense")


def test_study_outputs(study):
  _, workdir, summary = study
  seed = workdir / "seed_0"
  comp = seed / "completion"
  assert set(summary["rounds"]) >= {"liver", "mean"}
  assert (workdir / "completion_study.txt").read_text().startswith("Pseudo-label DSC")
  assert (seed / "runs" / "round2" / "checkpoints").is_dir()  # trained on the completed shards
  for source in ("phantom_lits", "phantom_kits"):
    src = seed / "data" / "shards" / source
    done = comp / "completed" / source
    manifest = arrayrecord_io.read_manifest(done)
    origin = manifest["label_origin"][source]
    human = set(arrayrecord_io.read_manifest(src)["known_classes"][source])
    for c in taxonomy.CLASSES:
      if c.id in human:
        assert origin[c.name] == "human"
      else:
        assert origin[c.name] in ("pseudo", "unknown")
    assert manifest["completion"]["threshold"] == pytest.approx(1e-3)
    before, after = _records(src), _records(done)
    assert before.keys() == after.keys()
    for case_id, old in before.items():
      new = after[case_id]
      human_word = np.uint32(bitmask.pack(old["annotated"].astype(bool)).item())
      # Human labels are kept bit for bit; nothing else changes on human classes.
      np.testing.assert_array_equal(new["label"] & human_word, old["label"] & human_word)
      np.testing.assert_array_equal(new["image"], old["image"])
      known = new["annotated"].astype(bool)
      assert np.all(known[old["annotated"].astype(bool)])
      np.testing.assert_array_equal(known, old["annotated"].astype(bool)
                                    | new["pseudo"].astype(bool))
      # Unknown classes carry no voxel.
      unknown_word = np.uint32(bitmask.pack(~known).item())
      assert not np.any(new["label"] & unknown_word)
      # The label map sits in the case's original grid, with a sidecar naming the origins.
      img, affine = load(comp / "nifti" / source / f"{case_id}.nii.gz")
      assert img.shape == tuple(old["original_shape"])
      np.testing.assert_allclose(affine, old["original_affine"], atol=1e-4)
      side = json.loads((comp / "nifti" / source / f"{case_id}.json").read_text())
      assert {v["origin"] for v in side["classes"].values()} <= {"human", "pseudo", "unknown"}
      assert side["classes"]["liver"]["origin"] == ("human" if source == "phantom_lits"
                                                    else origin_of(new, "liver"))
  rows = json.loads((comp / "review.json").read_text())
  conf = [r["confidence"] for r in rows]
  assert conf == sorted(conf) and all("true_dsc" in r for r in rows)
  header = (comp / "review.csv").read_text().splitlines()[0].split(",")
  assert header[:5] == ["rank", "source", "case", "split", "class"]
  pngs = sorted((comp / "review").glob("*.png"))
  assert len(pngs) == 2 and pngs[0].name.startswith("001_")
  assert (comp / "nifti" / "labels.ctbl").exists()
  assert (comp / "nifti" / "labels_itksnap.txt").exists()


def origin_of(record, name):
  k = taxonomy.BY_NAME[name].id - 1
  return "pseudo" if record["pseudo"][k] else "unknown"


def test_resume_after_kill_and_ensemble_mean(study, tmp_path, monkeypatch):
  config, workdir, _ = study
  seed = workdir / "seed_0"
  runs = [str(seed / "runs" / "round1"), str(seed / "runs" / "round2")]
  shards = [str(seed / "data" / "shards" / "phantom_lits")]  # two cases
  out = tmp_path / "resume"
  with pytest.raises(complete._Stopped):
    complete.complete_assembly(config, runs, shards, str(out), stop_after_cases=1)
  first = list(out.glob("cases/*/*/*.npz"))
  assert len(first) == 1
  assert not list(out.rglob(".*tmp*")) and not (out / "completed").exists()
  stamp = first[0].stat().st_mtime_ns

  calls = []
  original = ensemble.Ensemble.predict
  def counting(self, volume, affine, classes):
    calls.append(volume.shape)
    return original(self, volume, affine, classes)
  monkeypatch.setattr(ensemble.Ensemble, "predict", counting)
  summary = complete.complete_assembly(config, runs, shards, str(out))
  assert len(calls) == 1 and summary["new_cases"] == 1 and summary["cases"] == 2
  assert first[0].stat().st_mtime_ns == stamp  # the finished case was not redone
  rows = json.loads((out / "review.json").read_text())
  assert max(r["disagreement"] for r in rows) >= 0.0

  # The ensemble's probabilities are the mean of each model's own sliding-window output.
  models = ensemble.Ensemble(runs)
  record = next(iter(_records(shards[0]).values()))
  volume = record["image"].astype(np.float32)
  classes = models.common_classes
  pred = original(models, volume, record["affine"], classes)
  each = []
  for d in runs:
    m = trained_run.load_model(d)
    each.append(np.asarray(sliding_window.sliding_window_inference(
        m.apply_fn, volume, params=m.variables, window=m.spec.window, overlap=m.spec.overlap,
        sw_batch_size=m.spec.sw_batch_size, sigma_scale=m.spec.sigma_scale)))
  np.testing.assert_allclose(pred.probs, (each[0] + each[1]) / 2, rtol=1e-6, atol=1e-7)

  # A rerun with other settings in the same folder is refused.
  other = assembly_data.with_fields(config, **{"complete.threshold": 0.9})
  with pytest.raises(complete.CompletionError, match="completion_settings.json.*threshold"):
    complete.complete_assembly(other, runs, shards, str(out))


def test_bad_inputs_are_one_line_errors(study, tmp_path):
  config, workdir, _ = study
  seed = workdir / "seed_0"
  run = str(seed / "runs" / "round1")
  shards = [str(seed / "data" / "shards" / "phantom_lits")]
  empty = tmp_path / "not_a_run"
  empty.mkdir()
  with pytest.raises(ensemble.EnsembleError, match=r"not_a_run/config.json: missing"):
    complete.complete_assembly(config, [str(empty)], shards, str(tmp_path / "a"))
  lacking = assembly_data.with_fields(config, **{"complete.classes": ("bladder",)})
  with pytest.raises(ensemble.EnsembleError,
                     match=r"round1/trained_classes.json: .*never trained on class 'bladder'"):
    complete.complete_assembly(lacking, [run], shards, str(tmp_path / "b"))
  other = tmp_path / "other_taxonomy"
  shutil.copytree(shards[0], other)
  manifest = json.loads((other / "manifest.json").read_text())
  manifest["classes"] = manifest["classes"][::-1]
  (other / "manifest.json").write_text(json.dumps(manifest))
  with pytest.raises(complete.CompletionError,
                     match=r"other_taxonomy/manifest.json: shards of another taxonomy"):
    complete.complete_assembly(config, [run], [str(other)], str(tmp_path / "c"))
  assert not (tmp_path / "c").exists() or not any((tmp_path / "c").rglob("*.npz"))

  # Through the command line: one line on stderr, exit status 1.
  out = subprocess.run(
      [sys.executable, "-m", "dassemble_jax.main", "--config=configs/complete.py:tiny",
       f"--workdir={tmp_path / 'cli'}", f"--config.complete.run_dirs=('{empty}',)"],
      cwd=REPO, capture_output=True, text=True, timeout=300, check=False,
      env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert out.returncode == 1
  lines = [line for line in out.stderr.splitlines() if line.strip()]
  assert lines[-1].startswith(f"error: {empty}/config.json: missing")
  assert "Traceback" not in out.stderr


def test_named_runs_with_round2(study, tmp_path):
  """The real-data path: a named run completes its own training shards (the default), then a
  round-2 model trains on them with the run's own recipe and both are scored on test folders."""
  config, workdir, _ = study
  seed = workdir / "seed_0"
  cfg = assembly_data.with_fields(config, **{
      "complete.run_dirs": (str(seed / "runs" / "round1"),), "complete.round2": True,
      "data.test_dirs": (str(seed / "data" / "truth_test" / "phantom_kits"),)})
  summary = complete.run(cfg, str(tmp_path / "real"))
  assert summary["cases"] == 4
  assert sorted(os.listdir(tmp_path / "real" / "completed")) == ["phantom_kits", "phantom_lits"]
  rounds = json.loads((tmp_path / "real" / "round2.json").read_text())
  assert set(rounds) == {"round1", "round2"} and "kidney_left" in rounds["round2"]
  assert (tmp_path / "real" / "runs" / "round2" / "checkpoints").is_dir()
