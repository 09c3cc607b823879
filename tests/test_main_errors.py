"""`python -m dassemble_jax.main` turns bad input into one line `error: <file>: <problem>`."""

import os
import pathlib
import subprocess
import sys

from dassemble_jax import workdir_lock

REPO = pathlib.Path(__file__).resolve().parents[1]


def _main(*args):
  # One CPU device, as a user's laptop has: the tiny configs' batches need not divide by 8.
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  return subprocess.run([sys.executable, "-m", "dassemble_jax.main", *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=180, check=False)


def test_missing_dataset_folder_is_one_line_naming_it(tmp_path):
  missing = tmp_path / "no_such_chexpert"
  out = _main("--config=configs/chestxray_assemble.py:D0+D1,tiny", f"--workdir={tmp_path / 'w'}",
              f"--config.data.chexpert_root={missing}", f"--config.data.nih_root={missing}")
  assert out.returncode == 1, out.stderr
  lines = out.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith(f"error: {missing}: "), out.stderr
  assert "Traceback" not in out.stderr
  assert not (tmp_path / "w").exists()  # nothing half-written, not even the workdir


def test_init_from_a_folder_that_is_not_a_run_is_one_line(tmp_path):
  not_a_run = tmp_path / "not_a_run"
  not_a_run.mkdir()
  out = _main("--config=configs/universal.py:tiny", f"--workdir={tmp_path / 'w'}",
              f"--config.init_from={not_a_run}")
  assert out.returncode == 1, out.stderr
  lines = out.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: ") and str(not_a_run) in lines[0], (
      out.stderr)


def test_a_workdir_in_use_is_refused_in_one_line(tmp_path):
  workdir = tmp_path / "busy"
  with workdir_lock.hold(str(workdir)):
    out = _main("--config=configs/universal.py:tiny", f"--workdir={workdir}")
  assert out.returncode == 1, out.stderr
  lines = out.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith(f"error: {workdir}: in use by another run (pid "), (
      out.stderr)
  assert not workdir.exists()  # the refused run wrote nothing; the holder's empty folder went


def test_lock_is_released_with_the_block(tmp_path):
  workdir = tmp_path / "w"
  with workdir_lock.hold(str(workdir)):
    (workdir / "checkpoint").write_text("x")
  with workdir_lock.hold(str(workdir)):  # free again
    pass
  assert sorted(os.listdir(workdir)) == [workdir_lock.LOCK_FILE, "checkpoint"]
