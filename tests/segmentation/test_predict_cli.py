"""The predict command on a tiny (untrained) run: sidecars, --classes, --statistics, --preview,
folder runs that finish what they can, name collisions and output failures as one line."""

import errno
import json
import os
import pathlib
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from configs import universal
from dassemble_jax import checkpointing, predict
from dassemble_jax.ct import nifti_io
from dassemble_jax.ct.nifti_io import CaseError
from dassemble_jax.segmentation import inference, train_step, trained_run

REPO = pathlib.Path(__file__).resolve().parents[2]
AFFINE = np.array([[-2.0, 0.0, 0.0, 40.0], [0.0, -2.0, 0.0, 36.0], [0.0, 0.0, 3.0, -30.0],
                   [0.0, 0.0, 0.0, 1.0]])
TRAINED = ("spleen", "kidney_right", "kidney_left", "liver", "liver_tumor")


def _scan(seed: int) -> np.ndarray:
  """A 40 x 36 x 20 int16 'CT': air, a body ellipse, two brighter blobs (not anatomy)."""
  g = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in (40, 36, 20)], indexing="ij"), -1)
  hu = np.full(g.shape[:3], -1000.0)
  hu[(g[..., 0] ** 2 + g[..., 1] ** 2) < 0.8] = 40.0
  hu[((g - [0.4, 0.0, 0.1]) ** 2).sum(-1) < 0.12] = 110.0
  hu[((g - [-0.5, -0.1, 0.2]) ** 2).sum(-1) < 0.05] = 160.0
  hu += np.random.default_rng(seed).normal(0, 10, hu.shape)
  return hu.astype(np.int16)


def _write(path, data=None, seed=0):
  path.parent.mkdir(parents=True, exist_ok=True)
  nib.save(nib.Nifti1Image(_scan(seed) if data is None else data, AFFINE), str(path))
  return path


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
  """A run folder of the tiny config with its initial (random) weights, five trained classes."""
  d = tmp_path_factory.mktemp("predict") / "run"
  d.mkdir()
  config = universal.get_config("tiny")
  comp = train_step.compiled_for(config, 8)
  trained = np.zeros(32, bool)
  trained[[trained_run.CLASS_NAMES.index(n) for n in TRAINED]] = True
  trained_run.write_run_files(str(d), config, trained)
  trained_run.write_class_table(str(d), np.zeros((32, 8), np.float32))
  ckpts = checkpointing.Checkpoints(str(d))
  ckpts.save(0, comp.init_state(), {"step": 0}, is_best=True)
  ckpts.close()
  return d


@pytest.fixture(scope="module")
def model(run_dir):
  return trained_run.load_model(str(run_dir))


def _flags(run_dir, inp, out, **kw):
  return {"workdir": str(run_dir), "input": str(inp), "output": str(out), "per_class": False,
          "classes": None, "statistics": False, "preview": False, "sw_batch_size": None,
          "checkpoint": "best", "debug": False, **kw}


def test_subset_heads_equal_the_full_model_channels(model):
  x = np.random.default_rng(0).random((2, 16, 16, 16, 1)).astype(np.float32)
  full = np.asarray(model.apply_fn(model.variables, x))
  sub = trained_run.apply_fn_for(model.eval_def, model.spec.dtype, (5, 0, 26))
  np.testing.assert_allclose(np.asarray(sub(model.variables, x)), full[..., [5, 0, 26]],
                             atol=1e-5, rtol=0)
  # What --classes computes: the asked classes + what their post-processing reads.
  assert trained_run.select_classes(["liver_tumor"], model.spec.trained_mask) == ([27], [6, 27])
  assert trained_run.select_classes(["spleen", "liver"], model.spec.trained_mask) == (
      [1, 6], [1, 6])
  with pytest.raises(trained_run.ClassSelectionError, match="unknown class 'livr'"):
    trained_run.select_classes(["livr"], model.spec.trained_mask)
  with pytest.raises(trained_run.ClassSelectionError, match="never trained on 'pancreas'"):
    trained_run.select_classes(["pancreas"], model.spec.trained_mask)


def test_folder_run_with_every_output(run_dir, tmp_path, capsys):
  """Two good scans around a corrupt one: both written with all their files, the failure named
  on its own line and listed at the end, exit 2; --classes keeps the full run's voxels."""
  inp = tmp_path / "in"
  _write(inp / "a.nii.gz", seed=1)
  (inp / "b.nii.gz").write_bytes(b"\x1f\x8b not a nifti")
  _write(inp / "c.nii", seed=2)
  out = tmp_path / "out"
  code = predict.run(_flags(run_dir, inp, out, per_class=True, statistics=True, preview=True,
                            classes=["liver", "spleen"]))
  err = capsys.readouterr().err
  assert code == 2
  assert f"error: {inp / 'b.nii.gz'}: cannot read NIfTI" in err
  assert err.strip().splitlines()[-2:] == ["1 of 3 scans failed:",
                                           f"  {inp / 'b.nii.gz'}: cannot read NIfTI: "
                                           + err.split("cannot read NIfTI: ")[1].splitlines()[0]]
  names = sorted(p.name for p in out.iterdir())
  assert names == ["a", "a.json", "a.nii.gz", "a.png", "a.statistics.csv", "a.statistics.json",
                   "c", "c.json", "c.nii.gz", "c.png", "c.statistics.csv", "c.statistics.json",
                   "classes.json", "labels.ctbl", "labels_itksnap.txt"]
  assert sorted(p.name for p in (out / "a").iterdir()) == ["liver.nii.gz", "spleen.nii.gz"]
  side = json.loads((out / "a.json").read_text())
  assert side["classes"] == {"1": "spleen", "6": "liver"} and side["warnings"] == []
  labels = np.asarray(nib.load(out / "a.nii.gz").dataobj)
  assert set(np.unique(labels)) <= {0, 1, 6}
  np.testing.assert_allclose(nib.load(out / "a.nii.gz").affine, AFFINE, atol=1e-6)
  stats = json.loads((out / "a.statistics.json").read_text())["classes"]
  assert [r["name"] for r in stats] == ["spleen", "liver"]
  assert stats[1]["voxels"] == int((np.asarray(nib.load(out / "a" / "liver.nii.gz").dataobj)
                                    ).sum())
  # The same scan with every class computed: liver and spleen are the same voxels (the label
  # maps differ where the full run draws another class over them).
  full = tmp_path / "full"
  assert predict.run(_flags(run_dir, inp / "a.nii.gz", full, per_class=True)) == 0
  assert len(list((full / "a").iterdir())) == 32
  for name in ("liver", "spleen"):
    ours, theirs = (np.asarray(nib.load(d / "a" / f"{name}.nii.gz").dataobj) for d in (out, full))
    assert theirs.any() and np.mean(ours == theirs) >= 0.999, name


def test_name_collision_refused_before_anything(run_dir, tmp_path):
  inp = tmp_path / "in"
  _write(inp / "case.nii")
  _write(inp / "case.nii.gz")
  with pytest.raises(CaseError) as e:
    predict.run(_flags(run_dir, inp, tmp_path / "out"))
  msg = str(e.value)
  assert "\n" not in msg and str(inp / "case.nii") in msg and str(inp / "case.nii.gz") in msg
  assert not (tmp_path / "out").exists()


def test_output_failures_are_one_line(run_dir, tmp_path, monkeypatch):
  _write(tmp_path / "in" / "x.nii.gz")
  (tmp_path / "a_file").write_text("")
  with pytest.raises(inference.OutputError, match="the output is a file, not a folder"):
    predict.run(_flags(run_dir, tmp_path / "in", tmp_path / "a_file"))
  with pytest.raises(inference.OutputError, match="cannot write in this folder"):
    predict.run(_flags(run_dir, tmp_path / "in", tmp_path / "a_file" / "out"))

  def read_only(self, data):
    raise PermissionError(errno.EROFS, os.strerror(errno.EROFS), str(self))

  with monkeypatch.context() as m:  # a read-only folder (root ignores permission bits)
    m.setattr(pathlib.Path, "write_bytes", read_only)
    with pytest.raises(inference.OutputError) as e:
      predict.run(_flags(run_dir, tmp_path / "in", tmp_path / "ro"))
  assert str(e.value) == f"{tmp_path / 'ro'}: cannot write in this folder (Read-only file system)"


def test_full_disk_mid_run_reports_and_goes_on(run_dir, tmp_path, monkeypatch, capsys):
  """The disk fills while the first scan's per-class set is written: that scan is reported in
  one line, no half set remains, the second scan is written."""
  inp = tmp_path / "in"
  _write(inp / "p.nii.gz", seed=3)
  _write(inp / "q.nii.gz", seed=4)
  real_save, calls = nifti_io.save, []

  def full_disk(path, data, affine):
    calls.append(path)
    if len(calls) == 3:  # p's label map, p's spleen, then p's liver fails
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
    real_save(path, data, affine)

  monkeypatch.setattr(nifti_io, "save", full_disk)
  out = tmp_path / "out"
  code = predict.run(_flags(run_dir, inp, out, per_class=True, classes=["liver", "spleen"]))
  err = capsys.readouterr().err
  assert code == 2
  assert f"error: {out / 'p'}: cannot write it (No space left on device)" in err.splitlines()
  assert not (out / "p").exists() and not [p for p in out.iterdir() if p.name.startswith(".")]
  assert (out / "q.nii.gz").exists() and len(list((out / "q").iterdir())) == 2


def test_cli_one_line_errors_and_debug_tracebacks(run_dir, tmp_path):
  (tmp_path / "a_file").write_text("")
  _write(tmp_path / "x.nii.gz")
  cmd = [sys.executable, "-m", "dassemble_jax.predict", f"--workdir={run_dir}",
         f"--input={tmp_path / 'x.nii.gz'}", f"--output={tmp_path / 'a_file'}"]
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env, check=False)
  assert done.returncode == 1
  assert done.stderr.strip() == f"error: {tmp_path / 'a_file'}: the output is a file, not a folder"
  debug = subprocess.run(cmd + ["--debug"], cwd=REPO, capture_output=True, text=True, env=env,
                         check=False)
  assert debug.returncode != 0 and "Traceback" in debug.stderr and "OutputError" in debug.stderr


def test_a_warning_while_reading_goes_to_the_sidecar(run_dir, tmp_path, monkeypatch, capsys):
  """A reader's warning (a documented default applied) is printed and kept in <case>.json."""
  import warnings

  from dassemble_jax.ct import scan_input
  real_load = scan_input.load

  def load_with_warning(path, *args, **kwargs):
    warnings.warn("slice thickness missing, 1.0 mm assumed (DICOM default)", stacklevel=1)
    return real_load(path, *args, **kwargs)

  monkeypatch.setattr(scan_input, "load", load_with_warning)
  scan = _write(tmp_path / "w.nii.gz")
  assert predict.run(_flags(run_dir, scan, tmp_path / "out")) == 0
  side = json.loads((tmp_path / "out" / "w.json").read_text())
  assert side["warnings"] == [f"{scan}: slice thickness missing, 1.0 mm assumed (DICOM default)"]
  assert f"warning: {scan}: slice thickness missing" in capsys.readouterr().err
