"""Errors raised by the raw dataset readers.

Every message names the file (or folder) and the problem, so a user with a broken download knows
which file to replace without reading a traceback.
"""

from __future__ import annotations


class DataFormatError(ValueError):
  """A dataset file is missing, truncated or not in the format its reader expects."""


class UnsafePickleError(DataFormatError):
  """A pickle asked for a global (a callable or class) outside the reader's allow-list."""


class DatasetUnavailableError(RuntimeError):
  """An optional source cannot be used here (e.g. TFDS not installed, or not prepared offline)."""
