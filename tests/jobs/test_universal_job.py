"""End to end on the tiny universal config: train, resume exactly, evaluate, predict NIfTI.

One module-scoped workdir: two phantom sources converted once, an interrupted run resumed, an
uninterrupted run for comparison; everything else reads what they wrote.
"""

import json
import os
import pathlib

import jax
import nibabel as nib
import numpy as np
import pytest

from configs import universal
from dassemble_jax.ct.nifti_io import CaseError
from dassemble_jax.jobs import universal as universal_job
from dassemble_jax.segmentation import assembly_data, evaluate, reports, train_loop, trained_run


def _json(path):
  return json.loads(pathlib.Path(path).read_text())


def _jsonl(path):
  return [json.loads(line) for line in pathlib.Path(path).read_text().splitlines()]


def _tiny(tmp, **overrides):
  c = universal.get_config("tiny")
  c.data.phantom_sources = ("phantom_spleen", "phantom_lits")
  c.data.phantom_train_cases = 1
  c.batch_size = jax.device_count()  # 8 fake CPU devices: one crop each
  for k, v in overrides.items():
    node, leaf = k.split(".") if "." in k else (None, k)
    (c[node] if node else c)[leaf] = v
  return assembly_data.with_phantom_data(c, str(tmp / "data_root"))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("universal")
  cfg = _tiny(tmp)
  resumed_dir, straight_dir = str(tmp / "resumed"), str(tmp / "straight")
  first = train_loop.train_and_evaluate(cfg, resumed_dir, stop_at_step=2)
  second = train_loop.train_and_evaluate(cfg, resumed_dir)
  straight = train_loop.train(cfg, straight_dir)
  return {"tmp": tmp, "cfg": cfg, "first": first, "second": second, "straight": straight,
          "dir": resumed_dir, "data": assembly_data.phantom_data(cfg, str(tmp / "data_root"))}


def test_interrupted_run_resumes_exactly(runs):
  assert runs["first"]["step"] == 2 and "eval" not in runs["first"]
  assert runs["second"]["step"] == 3
  steps = [r["step"] for r in _jsonl(os.path.join(runs["dir"], "metrics.jsonl"))]
  assert steps == [1, 2, 3]
  # Resumed params == uninterrupted params: state, schedule, step rng and Grain position all
  # came back from the checkpoint.
  comp = runs["straight"]["compiled"]
  restored = trained_run.load_model(runs["dir"], checkpoint="latest")
  straight = jax.device_get(runs["straight"]["state"]["params"])
  resumed = jax.device_get(restored.variables[0])
  for a, b in zip(jax.tree.leaves(straight), jax.tree.leaves(resumed)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  # Same shapes every step: one compilation of the train step for all three runs.
  assert comp.step._cache_size() == 1


def test_evaluation_skips_unannotated_classes(runs):
  ev = _json(os.path.join(runs["dir"], "eval.json"))
  per_source = ev["summary"]["per_source"]
  assert set(per_source) == {"phantom_spleen", "phantom_lits"}
  # The spleen source does not annotate the liver: skipped (null), not scored as 0.
  assert per_source["phantom_spleen"]["dsc"]["liver"] is None
  assert per_source["phantom_spleen"]["dsc"]["spleen"] is not None
  assert per_source["phantom_lits"]["dsc"]["liver"] is not None
  # No source annotates the pancreas: no value anywhere.
  assert ev["summary"]["all"]["dsc"]["pancreas"] is None
  assert "liver_tumor" in ev["detection"]
  assert 0.0 <= ev["summary"]["all"]["mean_dsc"] <= 1.0


def test_predicted_nifti_keeps_the_affine(runs, tmp_path):
  loaded = trained_run.load_model(runs["dir"])
  raw = runs["data"]["raw_test"]["phantom_lits"]
  image = next(iter(sorted(raw.glob("volume-*.nii.gz"))))
  results = list(loaded.predict_paths(image, tmp_path / "out", per_class=True))
  assert len(results) == 1
  src, out = nib.load(image), nib.load(results[0].label_map)
  np.testing.assert_allclose(out.affine, src.affine, atol=1e-6)
  assert out.shape == src.shape and out.get_data_dtype() == np.uint8
  labels = np.asarray(out.dataobj)
  # Only classes the model was trained on (spleen 1, liver 6, liver tumor 27) can appear.
  assert set(np.unique(labels)) <= {0, 1, 6, 27}
  assert len(results[0].per_class) == 32


def test_bad_nifti_gives_a_clear_error(runs, tmp_path):
  loaded = trained_run.load_model(runs["dir"])
  corrupt = tmp_path / "corrupt.nii.gz"
  corrupt.write_bytes(b"\x1f\x8b not a nifti at all")
  with pytest.raises(CaseError, match="corrupt.nii.gz"):
    list(loaded.predict_paths(corrupt, tmp_path / "out"))
  four_d = tmp_path / "four_d.nii.gz"
  nib.save(nib.Nifti1Image(np.zeros((8, 8, 8, 2), np.int16), np.eye(4)), four_d)
  with pytest.raises(CaseError, match="four_d.nii.gz"):
    list(loaded.predict_paths(four_d, tmp_path / "out"))
  with pytest.raises(trained_run.ModelDirError, match="config.json"):
    trained_run.load_model(str(tmp_path))


def test_predict_cli_on_a_folder_shows_progress_and_fails_clearly(runs, tmp_path):
  """`python -m dassemble_jax.predict` over a folder: one label map per scan, '[i/N] ... ETA'
  progress lines; a corrupt scan in the folder exits 2 with an error naming it (the others are
  still written)."""
  import shutil
  import subprocess
  import sys
  raw = runs["data"]["raw_test"]["phantom_lits"]
  scans = tmp_path / "scans"
  scans.mkdir()
  for i, image in enumerate(sorted(raw.glob("volume-*.nii.gz"))[:1] * 2):
    shutil.copy(image, scans / f"ct_{i}.nii.gz")
  cmd = [sys.executable, "-m", "dassemble_jax.predict", f"--workdir={runs['dir']}",
         f"--input={scans}", f"--output={tmp_path / 'out'}"]
  repo = pathlib.Path(__file__).resolve().parents[2]
  done = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, timeout=600,
                        check=False)
  assert done.returncode == 0, done.stderr[-2000:]
  assert sorted(p.name for p in (tmp_path / "out").iterdir()
                if p.name.endswith(".nii.gz")) == ["ct_0.nii.gz", "ct_1.nii.gz"]
  lines = [line for line in done.stdout.splitlines() if line.startswith("[")]
  assert [line.split()[0] for line in lines] == ["[1/2]", "[2/2]"]
  assert all("s/scan | ETA" in line for line in lines)
  (scans / "ct_2.nii.gz").write_bytes(b"\x1f\x8b not a nifti")
  failed = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, timeout=600,
                        check=False)
  assert failed.returncode == 2 and "ct_2.nii.gz" in failed.stderr


def test_comparison_table_lists_each_model():
  nan = float("nan")
  summary = lambda d: {"eval": {"summary": {"all": {"dsc": d, "mean_dsc": nan}}}}
  blank = {c: None for c in trained_run.CLASS_NAMES}
  results = {"assembly": summary(blank | {"liver": 0.9, "spleen": 0.8}) | {"step": 400},
             "phantom_lits": summary(blank | {"liver": 0.7}) | {"step": 100}}
  text, table = reports.comparison_table(results)
  assert table["classes"] == ["spleen", "liver"]
  assert "on phantom_lits's 1 classes: assembly 0.900 vs phantom_lits 0.700" in text
  assert "(training steps)" in text and "400" in text


def test_assembly_gets_the_single_models_steps_together_by_default():
  c = universal.get_config("")
  assert universal_job.assembly_steps(c, 4) == 4 * c.num_steps
  c.assembly_num_steps = 150
  assert universal_job.assembly_steps(c, 4) == 150
  c.assembly_num_steps = -1
  with pytest.raises(ValueError, match="assembly_num_steps"):
    universal_job.assembly_steps(c, 4)


def _best_step(workdir) -> int:
  """The step of the (single) best checkpoint, from Orbax's folder names."""
  (step,) = [int(p.name) for p in (pathlib.Path(workdir) / "checkpoints" / "best").iterdir()
             if p.name.isdigit()]
  return step


def test_best_checkpoint_has_the_highest_validation_score(runs):
  lines = _jsonl(os.path.join(runs["dir"], "metrics.jsonl"))
  scores = {r["step"]: r["val/mean_dsc"] for r in lines if "val/mean_dsc" in r}
  assert sorted(scores) == [2, 3]  # eval_every 2 and the last step, across the resume
  best = max(scores, key=lambda s: (scores[s], -s))  # the first of equal scores stays
  assert _best_step(runs["dir"]) == best
  assert trained_run.load_model(runs["dir"]).step == best  # the CLI's default
  # The latest is kept for resuming.
  assert trained_run.load_model(runs["dir"], checkpoint="latest").step == 3


def test_best_checkpoint_is_selected_and_survives_a_resume(runs, monkeypatch):
  cfg = runs["cfg"].copy_and_resolve_references()
  cfg.eval_every = 1
  scripted = {1: 0.2, 2: 0.5, 3: 0.3}
  monkeypatch.setattr(evaluate.Validator, "score",
                      lambda self, state: scripted[int(jax.device_get(state["step"]))])
  workdir = runs["tmp"] / "scripted"
  train_loop.train(cfg, str(workdir), stop_at_step=2)
  trained = train_loop.train(cfg, str(workdir))  # resumes at 2; 0.3 at step 3 is no better
  assert trained["best_step"] == 2 and trained["best_score"] == 0.5
  assert _best_step(workdir) == 2
  # Evaluation uses the best state, not the last one.
  best = jax.tree.leaves(jax.device_get(trained["eval_state"]["params"]))
  last = jax.tree.leaves(jax.device_get(trained["state"]["params"]))
  assert int(jax.device_get(trained["eval_state"]["step"])) == 2
  assert any(not np.array_equal(a, b) for a, b in zip(best, last))
  restored = trained_run.load_model(str(workdir))
  for a, b in zip(best, jax.tree.leaves(jax.device_get(restored.variables[0]))):
    np.testing.assert_array_equal(a, b)
