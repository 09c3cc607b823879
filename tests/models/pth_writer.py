"""Writes `torch.save`-format zip archives from NumPy arrays, without PyTorch (tests only).

The tests need `.pth` files whose contents they choose (a released-size key table filled with
zeros, a missing key, a malicious global), and PyTorch is not a test dependency. The generator
(make_anchor_reference.py) checks, with PyTorch, that `torch.load(weights_only=True)` reads what
this module writes as the same tensors, so the files are genuine PyTorch files.

Format: <name>/data.pkl (protocol 2 pickle: tensors as torch._utils._rebuild_tensor_v2 over
persistent-id storages), <name>/data/<i> raw little-endian storages, <name>/byteorder,
<name>/version. Pickle opcodes are written by hand so no torch module needs to exist.
"""

from __future__ import annotations

import io
import pickle
import struct
import zipfile
from collections.abc import Mapping

import numpy as np

_STORAGE = {np.dtype(np.float32): "FloatStorage", np.dtype(np.float16): "HalfStorage",
            np.dtype(np.float64): "DoubleStorage", np.dtype(np.int64): "LongStorage",
            np.dtype(np.int32): "IntStorage", np.dtype(np.uint8): "ByteStorage",
            np.dtype(np.bool_): "BoolStorage"}


class Global:
  """A pickled reference to `module.name` (not resolved when writing)."""

  def __init__(self, module: str, name: str):
    self.module, self.name = module, name


class _Writer:
  def __init__(self):
    self.out = io.BytesIO()
    self.storages: list[np.ndarray] = []

  def op(self, b: bytes):
    self.out.write(b)

  def str_(self, s: str):
    data = s.encode()
    self.op(pickle.BINUNICODE + struct.pack("<I", len(data)) + data)

  def int_(self, v: int):
    if 0 <= v < 2**31:
      self.op(pickle.BININT + struct.pack("<i", v))
    else:
      self.op(pickle.LONG1 + bytes([8]) + struct.pack("<q", v))

  def global_(self, g: Global):
    self.op(pickle.GLOBAL + f"{g.module}\n{g.name}\n".encode())

  def tuple_(self, items):
    self.op(pickle.MARK)
    for it in items:
      self.obj(it)
    self.op(pickle.TUPLE)

  def tensor(self, a: np.ndarray):
    a = np.asarray(a, order="C")  # (ascontiguousarray would make a 0-d tensor 1-d)
    if a.dtype not in _STORAGE:
      raise ValueError(f"no storage type for {a.dtype}")
    key = str(len(self.storages))
    self.storages.append(a)
    self.global_(Global("torch._utils", "_rebuild_tensor_v2"))
    self.op(pickle.MARK)
    # Persistent id ('storage', torch.<T>Storage, key, 'cpu', numel).
    self.op(pickle.MARK)
    self.str_("storage")
    self.global_(Global("torch", _STORAGE[a.dtype]))
    self.str_(key)
    self.str_("cpu")
    self.int_(int(a.size))
    self.op(pickle.TUPLE + pickle.BINPERSID)
    self.int_(0)
    self.tuple_(tuple(int(s) for s in a.shape))
    strides = tuple(int(s // a.itemsize) for s in a.strides) if a.size else (1,) * a.ndim
    self.tuple_(strides)
    self.op(pickle.NEWFALSE)
    self.global_(Global("collections", "OrderedDict"))
    self.op(pickle.EMPTY_TUPLE + pickle.REDUCE)
    self.op(pickle.TUPLE + pickle.REDUCE)

  def obj(self, v):
    if isinstance(v, np.ndarray):
      self.tensor(v)
    elif isinstance(v, Global):
      self.global_(v)
    elif isinstance(v, bool):
      self.op(pickle.NEWTRUE if v else pickle.NEWFALSE)
    elif isinstance(v, int):
      self.int_(v)
    elif isinstance(v, float):
      self.op(pickle.BINFLOAT + struct.pack(">d", v))
    elif isinstance(v, str):
      self.str_(v)
    elif v is None:
      self.op(pickle.NONE)
    elif isinstance(v, tuple):
      self.tuple_(v)
    elif isinstance(v, list):
      self.op(pickle.EMPTY_LIST + pickle.MARK)
      for it in v:
        self.obj(it)
      self.op(pickle.APPENDS)
    elif isinstance(v, Mapping):
      # State dicts are OrderedDicts; other dicts plain.
      if type(v).__name__ == "OrderedDict":
        self.global_(Global("collections", "OrderedDict"))
        self.op(pickle.EMPTY_TUPLE + pickle.REDUCE)
      else:
        self.op(pickle.EMPTY_DICT)
      self.op(pickle.MARK)
      for k, item in v.items():
        self.obj(k)
        self.obj(item)
      self.op(pickle.SETITEMS)
    elif isinstance(v, _Call):
      self.global_(v.fn)
      self.tuple_(v.args)
      self.op(pickle.REDUCE)
    else:
      raise TypeError(f"cannot write {type(v).__name__}")


class _Call:
  """fn(*args) in the pickle (used to craft a malicious file in tests)."""

  def __init__(self, fn: Global, *args):
    self.fn, self.args = fn, args


def call(module: str, name: str, *args) -> _Call:
  return _Call(Global(module, name), *args)


def save(obj, path, *, name: str = "archive") -> None:
  """Writes `obj` (dicts, lists, numbers, strings, NumPy arrays as tensors) as a .pth file."""
  w = _Writer()
  w.op(pickle.PROTO + bytes([2]))
  w.obj(obj)
  w.op(pickle.STOP)
  with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
    z.writestr(f"{name}/data.pkl", w.out.getvalue())
    z.writestr(f"{name}/byteorder", "little")
    for i, a in enumerate(w.storages):
      z.writestr(f"{name}/data/{i}", a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes())
    z.writestr(f"{name}/version", "3\n")
