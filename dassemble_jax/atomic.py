"""Files that appear whole or not at all: write under a temporary name, then rename.

Every output of the project (JSON summaries, tables, NIfTI files, PNGs, checkpoints' sidecars)
goes through here, so an interrupted or failing run never leaves a half-written file under the
final name. The temporary file sits in the destination folder (a rename within one file system is
atomic) and keeps the destination's suffix, so libraries that pick a format from the name
(nibabel's `.nii.gz`, matplotlib's `.png`) write the right one.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import uuid
from collections.abc import Iterator
from typing import Any


def _suffix(name: str) -> str:
  return ".nii.gz" if name.endswith(".nii.gz") else pathlib.Path(name).suffix


@contextlib.contextmanager
def temporary_path(path: str | os.PathLike) -> Iterator[pathlib.Path]:
  """Yields a temporary path beside `path`; renamed onto `path` on success, removed on error."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  suffix = _suffix(path.name)
  stem = path.name[:len(path.name) - len(suffix)] if suffix else path.name
  tmp = path.with_name(f".{stem}.{uuid.uuid4().hex[:8]}.tmp{suffix}")
  try:
    yield tmp
    os.replace(tmp, path)
  finally:
    if tmp.exists():
      tmp.unlink()


@contextlib.contextmanager
def open_for_write(path: str | os.PathLike, mode: str = "w") -> Iterator[Any]:
  """`open(path, mode)` that only shows the file under `path` once it is closed without error."""
  with temporary_path(path) as tmp, open(tmp, mode) as f:
    yield f


def write_text(path: str | os.PathLike, text: str) -> None:
  with open_for_write(path, "w") as f:
    f.write(text)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
  with open_for_write(path, "wb") as f:
    f.write(data)


def write_json(path: str | os.PathLike, obj: Any, *, indent: int | None = 2, **kwargs) -> None:
  """json.dump(obj) to `path` atomically (kwargs go to json.dump, e.g. sort_keys, default)."""
  with open_for_write(path, "w") as f:
    json.dump(obj, f, indent=indent, **kwargs)
