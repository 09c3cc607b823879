"""The installed package is the product: built as a wheel, installed outside the repository.

The notebooks install the package with pip and never see the repository's `configs/`, `tests/` or
scripts. This test does the same: it builds the wheel, installs it into a fresh virtual
environment in a temporary folder, and from a working directory outside the repository imports
every module of the package and runs one tiny experiment table. The fresh environment borrows the
third-party dependencies from the test environment's site-packages through a path entry (a folder
named in a .pth file is not scanned for .pth files itself, so the test environment's editable
install of the repository stays invisible); only `dassemble_jax` comes from the wheel.
"""

import pathlib
import shutil
import subprocess
import sys
import sysconfig
import zipfile

import pytest

from tests.fake_mnist import write_fake_mnist

REPO = pathlib.Path(__file__).resolve().parents[1]

_IMPORT_ALL = """
import importlib, pathlib, pkgutil, sys
import dassemble_jax
where = pathlib.Path(dassemble_jax.__file__).resolve()
assert pathlib.Path(sys.prefix).resolve() in where.parents, f"imported from {where}"
names = [m.name for m in pkgutil.walk_packages(dassemble_jax.__path__, "dassemble_jax.")]
for name in names:
  importlib.import_module(name)
assert "configs" not in sys.modules, "the package imported the repository's configs/"
print(f"imported {len(names)} modules from {where.parent}")
"""


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
  """(python of a fresh venv holding only the wheel, a working folder outside the repo)."""
  tmp = tmp_path_factory.mktemp("installed")
  # Built from a clean copy of what the wheel is made of: an in-tree build would leave build/
  # in the checkout, and setuptools' build/lib keeps modules deleted since the last build.
  src = tmp / "src"
  src.mkdir()
  for name in ("pyproject.toml", "README.md"):
    shutil.copy(REPO / name, src / name)
  shutil.copytree(REPO / "dassemble_jax", src / "dassemble_jax",
                  ignore=shutil.ignore_patterns("__pycache__"))
  dist = tmp / "dist"
  subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist),
                  str(src)], check=True, capture_output=True, text=True, timeout=600)
  wheel, = dist.glob("dassemble_jax-*.whl")
  with zipfile.ZipFile(wheel) as z:
    names = z.namelist()
  assert not [n for n in names if n.startswith(("configs/", "tests/", "benchmarks/"))], names
  venv = tmp / "venv"
  subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True,
                 timeout=120)
  python = venv / "bin" / "python"
  site = pathlib.Path(subprocess.run(
      [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
      check=True, capture_output=True, text=True).stdout.strip())
  subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target",
                  str(site), str(wheel)], check=True, capture_output=True, text=True,
                 timeout=600)
  (site / "test_env_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
  work = tmp / "work"
  work.mkdir()
  return python, work


def _run(python, work, *args):
  done = subprocess.run([str(python), *args], cwd=work, capture_output=True, text=True,
                        check=False, timeout=900)
  assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
  return done.stdout


def test_installed_wheel_imports_every_module(installed):
  python, work = installed
  out = _run(python, work, "-c", _IMPORT_ALL)
  assert "imported" in out and str(REPO) not in out


def test_installed_wheel_runs_a_tiny_table(installed):
  python, work = installed
  idx = write_fake_mnist(work / "idx", num_train=10200, num_test=100)
  _run(python, work, "-m", "dassemble_jax.jobs.tables", "--table=odd_even", "--tiny",
       "--seeds=1", f"--workdir={work / 'tables'}", f"--data_path={idx}")
  assert (work / "tables" / "odd_even.json").stat().st_size > 0
  assert (work / "tables" / "odd_even.md").read_text().count("|") > 10
