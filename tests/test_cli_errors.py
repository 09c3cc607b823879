"""Every user error at the entry points is one line `error: <file>: <problem>`, no traceback.

main's flag parsing and its run wrapper are called in-process (a fresh FlagValues per case, the
argv handed to the config flag), which checks the same code `python -m dassemble_jax.main` runs
at a fraction of a subprocess's cost; one subprocess checks the wiring and --debug.
"""

from __future__ import annotations

import errno
import os
import pathlib
import subprocess
import sys

import pytest
from absl import flags

from dassemble_jax import cli
from dassemble_jax import main as main_lib

REPO = pathlib.Path(__file__).resolve().parents[1]


def _parse(*args: str):
  argv = ["main", *args]
  # ml_collections loads every config as module 'config_config' and re-executes a new file in the
  # old module's namespace: a fresh process has none, so neither does each case here.
  sys.modules.pop("config_config", None)
  fv = flags.FlagValues()
  holders = main_lib.define_flags(fv, sys_argv=argv)
  main_lib.parse_flags(argv, fv)
  return holders


def _parse_error(*args: str) -> str:
  with pytest.raises(cli.UserError) as info:
    _parse(*args)
  text = str(info.value)
  assert "\n" not in text and "Traceback" not in text, text
  return text


@pytest.fixture(autouse=True)
def _in_repo(monkeypatch):
  monkeypatch.chdir(REPO)  # configs/ paths are relative, as users type them


def test_a_good_command_line_parses(tmp_path):
  holders = _parse("--config=configs/universal.py:tiny", f"--workdir={tmp_path}",
                   "--config.seed=3")
  assert holders["config"].value.seed == 3 and holders["workdir"].value == str(tmp_path)
  assert holders["debug"].value is False


def test_missing_config_file():
  assert _parse_error("--config=configs/nope.py", "--workdir=w") == (
      "configs/nope.py: no such config file")


def test_config_folder_instead_of_file(tmp_path):
  assert _parse_error(f"--config={tmp_path}", "--workdir=w") == (
      f"{tmp_path}: is a folder, not a config file")


def test_config_that_fails_to_import(tmp_path):
  bad = tmp_path / "bad_import.py"
  bad.write_text("import no_such_module_xyz\n\ndef get_config():\n  return None\n")
  assert _parse_error(f"--config={bad}", "--workdir=w") == (
      f"{bad}: cannot load the config (ModuleNotFoundError: No module named "
      "'no_such_module_xyz')")
  syntax = tmp_path / "bad_syntax.py"
  syntax.write_text("x = 1\ndef get_config(:\n  pass\n")
  assert _parse_error(f"--config={syntax}", "--workdir=w").startswith(
      f"{syntax}: line 2: cannot import the config (SyntaxError: ")
  empty = tmp_path / "no_get_config.py"
  empty.write_text("x = 1\n")
  assert _parse_error(f"--config={empty}", "--workdir=w") == f"{empty}: defines no get_config()"


def test_bad_variant():
  assert _parse_error("--config=configs/universal.py:nope", "--workdir=w").startswith(
      "configs/universal.py: ValueError: config argument 'nope': expected 'phantom', 'tiny'")


def test_unknown_field_names_the_override():
  assert _parse_error("--config=configs/universal.py:tiny", "--config.nope=1",
                      "--workdir=w") == (
      "configs/universal.py: --config.nope: no such field in the config ('nope')")
  assert _parse_error("--config=configs/universal.py:tiny", "--config.data.sed=1",
                      "--workdir=w").startswith(
      "configs/universal.py: --config.data.sed: no such field in the config")


def test_value_of_the_wrong_type():
  assert _parse_error("--config=configs/universal.py:tiny", "--config.seed=abc",
                      "--workdir=w") == (
      "configs/universal.py: --config.seed=abc: invalid literal for int() with base 10: 'abc'")


def test_missing_flags_and_extra_arguments(tmp_path):
  assert _parse_error("--config=configs/universal.py:tiny") == (
      "--workdir: required (see --helpshort)")
  assert _parse_error(f"--workdir={tmp_path}") == "--config: required (see --helpshort)"
  assert _parse_error("--config=configs/universal.py:tiny", f"--workdir={tmp_path}",
                      "--nope=1") == "--nope: unknown flag (see --helpshort)"
  assert _parse_error("--config=configs/universal.py:tiny", f"--workdir={tmp_path}",
                      "extra") == "unexpected arguments: ['extra']"


def test_workdir_that_is_a_file(tmp_path):
  f = tmp_path / "a_file"
  f.write_text("x")
  assert _parse_error("--config=configs/universal.py:tiny", f"--workdir={f}") == (
      f"{f}: --workdir exists and is not a folder")


# ------------------------------------------------------------------------------------------------
# Output-side failures at run time: one line naming the path, exit 1; the traceback with debug.

def _run(monkeypatch, tmp_path, capsys, raise_in_job: BaseException | None, *, debug=False,
         workdir=None):
  def job(config, workdir):
    if raise_in_job is not None:
      raise raise_in_job
  monkeypatch.setattr(main_lib, "_run_job", job)
  workdir = str(workdir or tmp_path / "w")
  rc = main_lib.run(None, workdir, debug=debug)
  return rc, capsys.readouterr().err.strip().splitlines(), workdir


def test_disk_full_names_the_workdir(monkeypatch, tmp_path, capsys):
  # A write that hits a full disk raises OSError(ENOSPC) without a file name.
  rc, lines, workdir = _run(monkeypatch, tmp_path, capsys,
                            OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))
  assert rc == 1 and lines == [f"error: {workdir}: No space left on device"]


def test_disk_full_in_a_real_writer_names_the_workdir(monkeypatch, tmp_path, capsys):
  from dassemble_jax import atomic

  def full(self, *a, **k):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

  def job(config, workdir):
    atomic.write_json(os.path.join(workdir, "summary.json"), {"a": 1})
  monkeypatch.setattr(main_lib, "_run_job", job)
  monkeypatch.setattr("json.dump", lambda *a, **k: full(None))
  workdir = tmp_path / "w"
  assert main_lib.run(None, str(workdir)) == 1
  assert capsys.readouterr().err.strip().splitlines() == [
      f"error: {workdir}: No space left on device"]
  assert not workdir.exists()  # no half-written summary, no empty workdir


def test_read_only_workdir(monkeypatch, tmp_path, capsys):
  # The tests may run as root (permissions ignored): the file system's refusal is simulated.
  from dassemble_jax import workdir_lock
  workdir = tmp_path / "ro" / "w"

  def refuse(path, *a, **k):
    raise OSError(errno.EROFS, os.strerror(errno.EROFS), path)
  monkeypatch.setattr(workdir_lock.os, "makedirs", refuse)
  rc, lines, _ = _run(monkeypatch, tmp_path, capsys, None, workdir=workdir)
  assert rc == 1 and lines == [f"error: {workdir}: Read-only file system"]


def test_permission_denied_names_the_file(monkeypatch, tmp_path, capsys):
  target = tmp_path / "w" / "metrics.jsonl"
  rc, lines, _ = _run(monkeypatch, tmp_path, capsys,
                      PermissionError(errno.EACCES, "Permission denied", str(target)))
  assert rc == 1 and lines == [f"error: {target}: Permission denied"]


def test_debug_shows_the_traceback(monkeypatch, tmp_path, capsys):
  with pytest.raises(OSError):
    _run(monkeypatch, tmp_path, capsys, OSError(errno.ENOSPC, "full"), debug=True)


def test_a_bug_is_not_swallowed(monkeypatch, tmp_path, capsys):
  with pytest.raises(ZeroDivisionError):
    _run(monkeypatch, tmp_path, capsys, ZeroDivisionError("bug"))


def test_debug_requested_reads_argv():
  assert cli.debug_requested(["p", "--debug"]) and cli.debug_requested(["p", "--debug=true"])
  assert not cli.debug_requested(["p"]) and not cli.debug_requested(["p", "--debug", "--nodebug"])
  assert not cli.debug_requested(["p", "--", "--debug"])


def test_main_subprocess_one_line_then_traceback_with_debug(tmp_path):
  """The wiring: app.run's flag parser prints one line; --debug gives the traceback."""
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  args = [sys.executable, "-m", "dassemble_jax.main", "--config=configs/universal.py:tiny",
          "--config.nope=1", f"--workdir={tmp_path / 'w'}"]
  out = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
                       check=False)
  assert out.returncode == 1
  assert out.stderr.strip().splitlines() == [
      "error: configs/universal.py: --config.nope: no such field in the config ('nope')"]
  out = subprocess.run([*args, "--debug"], cwd=REPO, env=env, capture_output=True, text=True,
                       timeout=120, check=False)
  assert out.returncode != 0 and "Traceback" in out.stderr and "UserError" in out.stderr
  assert not (tmp_path / "w").exists()


# ------------------------------------------------------------------------------------------------
# The other entry points (argparse and absl programs), called in-process through their main().

def test_check_output_folder(tmp_path, monkeypatch):
  f = tmp_path / "a_file"
  f.write_text("x")
  cli.check_output_folder(tmp_path / "new" / "deeper")  # to be made: fine
  with pytest.raises(cli.UserError, match=f"^{f}: --out exists and is not a folder$"):
    cli.check_output_folder(f)
  with pytest.raises(cli.UserError, match=f"^{f / 'sub'}: --out lies under {f}, which is a file$"):
    cli.check_output_folder(f / "sub")
  # Root ignores permissions; a read-only file system answers access() with EROFS: simulated.
  monkeypatch.setattr(cli.os, "access", lambda path, mode: False)
  with pytest.raises(cli.UserError, match=f"^{tmp_path / 'o'}: --output is not writable \\(no "
                     f"write permission on {tmp_path}\\)$"):
    cli.check_output_folder(tmp_path / "o", "--output")


def _one_line(capsys) -> str:
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("error: "), err
  return err[0][len("error: "):]


def _synth_case(tmp_path):
  from tests.jobs.test_synth_overlay import _write_case
  ct, seg, _, _ = _write_case(tmp_path)
  return ct, seg


@pytest.mark.parametrize("command", ["synth_overlay", "synth_sweep"])
def test_synth_commands_bad_input_and_output(tmp_path, capsys, command):
  import importlib
  main = importlib.import_module(f"dassemble_jax.jobs.{command}").main
  extra = ["--property", "count", "--values", "1", "--cases", "1"] if command == "synth_sweep" \
      else []
  ct, seg = _synth_case(tmp_path)
  not_nifti = tmp_path / "scan.nii.gz"
  not_nifti.write_bytes(b"<html>404</html>")
  out = tmp_path / "out"
  assert main(["--out", str(out), "--ct", str(not_nifti), "--seg", str(seg), *extra]) == 2
  assert _one_line(capsys).startswith(f"{not_nifti}: ")
  assert main(["--out", str(out), "--ct", str(tmp_path / "none.nii.gz"), "--seg", str(seg),
               *extra]) == 2
  assert _one_line(capsys).startswith(f"{tmp_path / 'none.nii.gz'}: ")
  assert main(["--out", str(ct), "--ct", str(ct), "--seg", str(seg), *extra]) == 2
  assert _one_line(capsys) == f"{ct}: --out exists and is not a folder"
  assert not out.exists()
  with pytest.raises(Exception, match=str(not_nifti)):  # --debug: the traceback
    main(["--out", str(out), "--ct", str(not_nifti), "--seg", str(seg), *extra, "--debug"])


def test_synth_overlay_disk_full_names_the_output(tmp_path, capsys, monkeypatch):
  from dassemble_jax.jobs import synth_overlay
  ct, seg = _synth_case(tmp_path)

  def full(*a, **k):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
  monkeypatch.setattr(synth_overlay, "run", full)
  out = tmp_path / "out"
  assert synth_overlay.main(["--out", str(out), "--ct", str(ct), "--seg", str(seg)]) == 2
  assert _one_line(capsys) == f"{out}: No space left on device"


def test_synth_sweep_bad_values(tmp_path, capsys):
  from dassemble_jax.jobs import synth_sweep
  ct, seg = _synth_case(tmp_path)
  assert synth_sweep.main(["--out", str(tmp_path / "o"), "--property", "size", "--values",
                           "3,big", "--ct", str(ct), "--seg", str(seg)]) == 2
  assert _one_line(capsys) == "--values '3,big': could not convert string to float: 'big'"


def test_chestxray_convert_output_and_input_errors(tmp_path, capsys):
  from dassemble_jax.chestxray import convert
  a_file = tmp_path / "a_file"
  a_file.write_text("x")
  assert convert.main([f"--output={a_file}", f"--nih={tmp_path}", f"--chexpert={tmp_path}"]) == 1
  assert _one_line(capsys) == f"{a_file}: --output exists and is not a folder"
  missing = tmp_path / "no_nih"
  assert convert.main([f"--output={tmp_path / 'o'}", f"--nih={missing}",
                       f"--chexpert={missing}"]) == 1
  assert _one_line(capsys).startswith(f"{missing}: ")
  assert not (tmp_path / "o").exists()


def test_import_checkpoint_input_and_output_errors(tmp_path, capsys, monkeypatch):
  import types

  from dassemble_jax import import_checkpoint

  def flags_(**values):
    values = {"class_table": None, "debug": False, **values}
    monkeypatch.setattr(import_checkpoint, "_FLAGS",
                        {k: types.SimpleNamespace(value=v) for k, v in values.items()})
  not_pth = tmp_path / "model.pth"
  not_pth.write_text("not a checkpoint")
  flags_(checkpoint=str(tmp_path / "none.pth"), out=str(tmp_path / "run"))
  assert import_checkpoint.main(["p"]) == 2
  assert _one_line(capsys).startswith(f"{tmp_path / 'none.pth'}: ")
  flags_(checkpoint=str(not_pth), out=str(tmp_path / "run"))
  assert import_checkpoint.main(["p"]) == 2
  assert _one_line(capsys).startswith(f"{not_pth}: not a PyTorch zip archive")
  flags_(checkpoint=str(not_pth), out=str(not_pth))
  assert import_checkpoint.main(["p"]) == 2
  assert _one_line(capsys) == f"{not_pth}: --out exists and is not a folder"
  assert not (tmp_path / "run").exists()


def test_robustness_output_that_is_a_file(tmp_path, capsys):
  from dassemble_jax.jobs import robustness
  a_file = tmp_path / "a_file"
  a_file.write_text("x")
  assert robustness.main(["--workdir", str(tmp_path), "--out", str(a_file)]) == 2
  assert _one_line(capsys) == f"{a_file}: --out exists and is not a folder"


def test_arrayrecord_verify_command_names_the_manifest(tmp_path, capsys):
  from dassemble_jax.data import arrayrecord_io
  (tmp_path / arrayrecord_io.MANIFEST_NAME).write_text("{not json")
  assert arrayrecord_io._main(["arrayrecord_io", str(tmp_path)]) == 1  # pylint: disable=protected-access
  assert _one_line(capsys).startswith(f"{tmp_path / arrayrecord_io.MANIFEST_NAME}: invalid JSON")


def test_disk_full_reported_by_a_library_as_another_type(monkeypatch, tmp_path, capsys):
  # Orbax (TensorStore) on a full tmpfs raised exactly this ValueError; a full disk is no bug.
  orbax = ValueError(
      'RESOURCE_EXHAUSTED: Failed writing: "/w/checkpoints/latest/1.orbax-checkpoint-tmp/d/8b": '
      "Failed to write 2759 bytes to file 12: No space left on device [os_error_code='28']")
  rc, lines, workdir = _run(monkeypatch, tmp_path, capsys, orbax)
  assert rc == 1 and lines == [f"error: {workdir}: No space left on device"]
  assert cli.disk_full(RuntimeError("x")) is False
  with pytest.raises(ValueError, match="RESOURCE_EXHAUSTED"):  # --debug: the traceback
    _run(monkeypatch, tmp_path, capsys, orbax, debug=True)


def test_background_writer_noise_after_a_reported_error_is_dropped(monkeypatch, tmp_path, capsys):
  import threading
  # As in a program: the interpreter's own hooks (restored after the test).
  monkeypatch.setattr(sys, "unraisablehook", sys.__unraisablehook__)
  monkeypatch.setattr(threading, "excepthook", threading.__excepthook__)
  rc, _, _ = _run(monkeypatch, tmp_path, capsys, OSError(errno.ENOSPC, "full"))
  assert rc == 1
  # A TensorBoard writer's thread and atexit flush failing on the same disk afterwards: dropped;
  # a bug in such a place still shows.
  def in_thread(e):
    def fail():
      raise e
    t = threading.Thread(target=fail)
    t.start()
    t.join()

  def in_finalizer(e):
    class Writer:
      def __del__(self):
        raise e
    Writer()  # collected at once: __del__'s exception goes to sys.unraisablehook
  for where in (in_thread, in_finalizer):
    where(OSError(errno.ENOSPC, "full"))
    assert capsys.readouterr().err == ""
    where(ZeroDivisionError("bug"))
    assert "ZeroDivisionError: bug" in capsys.readouterr().err
