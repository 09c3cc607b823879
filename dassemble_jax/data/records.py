"""Serialise a record (a flat dict of NumPy arrays) to bytes and back.

One format for every ArrayRecord shard of the project (MNIST, CIFAR, CT volumes). A record is a
small JSON header (name, dtype, shape, byte offset of each array) followed by the raw array bytes,
so decoding is a header parse plus zero-copy `np.frombuffer` views: much cheaper than pickle or
npz, and safe (no code is ever executed while reading a shard).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping

import numpy as np

_MAGIC = b"DAR1"
_HEADER_LEN = struct.Struct("<I")


class RecordFormatError(ValueError):
  """A record's bytes are not a valid dassemble_jax record."""


def encode(record: Mapping[str, np.ndarray | int | float]) -> bytes:
  """Encodes a flat dict of arrays (or scalars) into bytes."""
  header = []
  chunks = []
  offset = 0
  for name, value in record.items():
    arr = np.asarray(value)  # tobytes() below is C-order; ascontiguousarray would make 0-d 1-d
    if arr.dtype == object:
      raise TypeError(f"record field {name!r} has dtype object; only numeric arrays are stored")
    raw = arr.tobytes()
    header.append({"name": name, "dtype": arr.dtype.str, "shape": list(arr.shape),
                   "offset": offset, "nbytes": len(raw)})
    chunks.append(raw)
    offset += len(raw)
  head = json.dumps(header, separators=(",", ":")).encode()
  return b"".join([_MAGIC, _HEADER_LEN.pack(len(head)), head, *chunks])


def decode(data: bytes) -> dict[str, np.ndarray]:
  """Decodes bytes written by `encode` into a dict of read-only arrays."""
  if len(data) < 8 or data[:4] != _MAGIC:
    raise RecordFormatError("not a dassemble_jax record (bad magic)")
  (head_len,) = _HEADER_LEN.unpack_from(data, 4)
  start = 8 + head_len
  try:
    header = json.loads(data[8:start])
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise RecordFormatError(f"corrupt record header: {e}") from e
  out = {}
  for field in header:
    begin = start + field["offset"]
    end = begin + field["nbytes"]
    if end > len(data):
      raise RecordFormatError(f"record field {field['name']!r} is truncated")
    # An exact count: count=-1 fails when the bytes after `begin` are not a multiple of the
    # itemsize (a float32 field of odd size followed by uint8 bytes).
    count = int(np.prod(field["shape"], dtype=np.int64))
    arr = np.frombuffer(data, dtype=np.dtype(field["dtype"]), count=count, offset=begin)
    out[field["name"]] = arr.reshape(tuple(field["shape"]))
  return out
