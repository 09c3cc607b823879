"""CSV reading shared by the chest X-ray label readers: gzip or plain, required columns, rows.

Errors name the file and the row (1-based data row: the header is line 1, row 1 is line 2).
"""

from __future__ import annotations

import csv
import gzip
import os
import pathlib
from collections.abc import Iterator, Sequence

from dassemble_jax.data.errors import DataFormatError


def open_text(path: str | os.PathLike):
  """A text stream over `path`, gunzipped when it starts with the gzip magic."""
  path = pathlib.Path(path)
  try:
    with open(path, "rb") as f:
      gzipped = f.read(2) == b"\x1f\x8b"
  except FileNotFoundError:
    raise DataFormatError(f"{path}: file not found") from None
  if gzipped:
    return gzip.open(path, "rt", encoding="utf-8", newline="")
  return open(path, encoding="utf-8-sig", newline="")  # the caller closes it


def where(path, row: int) -> str:
  """'file: row 17 (line 18)'."""
  return f"{path}: row {row} (line {row + 1})"


def read_rows(path: str | os.PathLike, required: Sequence[str]
              ) -> tuple[list[str], Iterator[tuple[int, list[str]]], dict[str, int]]:
  """(header, iterator of (row number, cells), column index) of a CSV with a header line.

  A missing required column, or a row with a different number of cells than the header, is a
  DataFormatError naming the file (and the row).
  """
  stream = open_text(path)
  reader = csv.reader(stream)
  try:
    header = next(reader)
  except StopIteration:
    stream.close()
    raise DataFormatError(f"{path}: empty file, expected a header line") from None
  except (csv.Error, UnicodeDecodeError, OSError, EOFError) as e:
    stream.close()
    raise DataFormatError(f"{path}: cannot read the header: {e}") from e
  header = [h.strip() for h in header]
  missing = [c for c in required if c not in header]
  if missing:
    stream.close()
    raise DataFormatError(f"{path}: missing column(s) {missing}; the header has {header}")
  index = {name: i for i, name in enumerate(header)}

  def rows():
    row = 0
    try:
      for row, cells in enumerate(reader, start=1):
        if not cells:
          continue
        if len(cells) != len(header):
          raise DataFormatError(f"{where(path, row)}: {len(cells)} cells, the header has "
                                f"{len(header)}")
        yield row, cells
    except (csv.Error, UnicodeDecodeError, OSError, EOFError) as e:
      raise DataFormatError(f"{where(path, row + 1)}: cannot be read: {e}") from e
    finally:
      stream.close()

  return header, rows(), index
