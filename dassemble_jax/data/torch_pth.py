"""PyTorch `.pth` files read without PyTorch, and without running code from them.

A `.pth` written by `torch.save` (PyTorch >= 1.6) is a zip archive:
  <prefix>/data.pkl       a pickle of the saved object (dicts, lists, numbers, strings, tensors)
  <prefix>/data/<key>     one raw storage per key (little-endian unless <prefix>/byteorder says)
  <prefix>/byteorder      'little' or 'big' (absent in older files: little)
  <prefix>/version
A tensor in the pickle is `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)`
whose storage is a *persistent id* ('storage', torch.<Type>Storage, key, location, numel).

`load_pth` admits only what rebuilds those: `_rebuild_tensor_v2` / `_rebuild_parameter`, the typed
storage classes (as dtype tokens), `collections.OrderedDict` (state dicts and their hooks
placeholder). Anything else (a class, `os.system`, `builtins.eval`, a numpy global...) raises
UnsafePickleError naming the file and the global before any of the pickle's calls run, as
`torch.load(weights_only=True)` refuses it. Each tensor comes back as a NumPy array, read from its
storage by dtype and byte order with its offset, size and stride checked against the storage's
length (a crafted stride cannot read outside it). bfloat16 becomes float32 (NumPy has none).
"""

from __future__ import annotations

import collections
import os
import pickle
import zipfile
from typing import Any

import numpy as np

from dassemble_jax.data.errors import DataFormatError, UnsafePickleError

# torch.<Name>Storage -> element dtype (bfloat16 is read as uint16 and widened).
STORAGE_DTYPES = {
    "DoubleStorage": np.float64, "FloatStorage": np.float32, "HalfStorage": np.float16,
    "BFloat16Storage": "bfloat16", "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class _StorageType:
  """Stands in for a `torch.<Name>Storage` class: a dtype token, not callable."""
  __slots__ = ("name",)

  def __init__(self, name: str):
    self.name = name


class _Storage:
  """A storage of the archive, read on first use."""
  __slots__ = ("array",)

  def __init__(self, array: np.ndarray):
    self.array = array


def _bf16_to_f32(raw: np.ndarray) -> np.ndarray:
  return (raw.astype(np.uint32) << 16).view(np.float32)


class _PthUnpickler(pickle.Unpickler):
  """Admits only the globals that rebuild tensors; storages come from the zip archive."""

  def __init__(self, fileobj, *, filename: str, archive: zipfile.ZipFile, prefix: str,
               byteorder: str):
    super().__init__(fileobj)
    self._filename = filename
    self._archive = archive
    self._prefix = prefix
    self._byteorder = "<" if byteorder == "little" else ">"
    self._storages: dict[str, _Storage] = {}
    self._allowed = {
        ("torch._utils", "_rebuild_tensor_v2"): self._rebuild_tensor,
        ("torch._utils", "_rebuild_parameter"): self._rebuild_parameter,
        ("collections", "OrderedDict"): collections.OrderedDict,
    }
    for name in STORAGE_DTYPES:
      self._allowed[("torch", name)] = _StorageType(name)

  def find_class(self, module: str, name: str) -> Any:
    try:
      return self._allowed[(module, name)]
    except KeyError:
      raise UnsafePickleError(
          f"{self._filename}: refused pickle global {module}.{name} (a weights file needs only "
          "tensors, storages and dicts; the file may be malicious)") from None

  def persistent_load(self, pid: Any) -> Any:
    if (not isinstance(pid, tuple) or len(pid) != 5 or pid[0] != "storage"
        or not isinstance(pid[1], _StorageType) or not isinstance(pid[2], str)
        or not isinstance(pid[4], int)):
      raise UnsafePickleError(f"{self._filename}: refused persistent id {pid!r}")
    _, stype, key, _location, numel = pid
    if key not in self._storages:
      self._storages[key] = _Storage(self._read_storage(stype.name, key, numel))
    storage = self._storages[key]
    if storage.array.size < numel:
      raise DataFormatError(f"{self._filename}: storage {key} is shorter than {numel} elements")
    return storage

  def _read_storage(self, type_name: str, key: str, numel: int) -> np.ndarray:
    if not key.isalnum():
      raise UnsafePickleError(f"{self._filename}: refused storage key {key!r}")
    try:
      raw = self._archive.read(f"{self._prefix}data/{key}")
    except KeyError:
      raise DataFormatError(f"{self._filename}: storage data/{key} is missing") from None
    dtype = STORAGE_DTYPES[type_name]
    if dtype == "bfloat16":
      array = _bf16_to_f32(np.frombuffer(raw, np.dtype(np.uint16).newbyteorder(self._byteorder)))
    else:
      dt = np.dtype(dtype).newbyteorder(self._byteorder) if np.dtype(dtype).itemsize > 1 \
          else np.dtype(dtype)
      if len(raw) % dt.itemsize:
        raise DataFormatError(f"{self._filename}: storage data/{key} has {len(raw)} bytes, "
                              f"not a multiple of {dt.itemsize}")
      array = np.frombuffer(raw, dt).astype(dt.newbyteorder("="), copy=False)
    if array.size < numel:
      raise DataFormatError(f"{self._filename}: storage data/{key} holds {array.size} elements, "
                            f"the pickle says {numel}")
    return array

  def _rebuild_tensor(self, storage, offset, size, stride, requires_grad=False,
                      backward_hooks=None, metadata=None):
    del requires_grad, backward_hooks, metadata
    if not isinstance(storage, _Storage):
      raise UnsafePickleError(f"{self._filename}: _rebuild_tensor_v2 without a storage")
    ints = lambda t: isinstance(t, tuple) and all(isinstance(v, int) and v >= 0 for v in t)
    if not (isinstance(offset, int) and offset >= 0 and ints(tuple(size)) and ints(tuple(stride))
            and len(size) == len(stride)):
      raise DataFormatError(f"{self._filename}: bad tensor geometry (offset {offset!r}, size "
                            f"{size!r}, stride {stride!r})")
    flat = storage.array
    if any(s == 0 for s in size):
      return np.zeros(tuple(size), flat.dtype)
    last = offset + sum((n - 1) * s for n, s in zip(size, stride))
    if last >= flat.size:
      raise DataFormatError(f"{self._filename}: a tensor reaches element {last} of a storage of "
                            f"{flat.size}")
    view = np.lib.stride_tricks.as_strided(
        flat[offset:], shape=tuple(size), strides=tuple(s * flat.itemsize for s in stride),
        writeable=False)
    return np.array(view)  # own, contiguous copy

  def _rebuild_parameter(self, data, requires_grad=False, backward_hooks=None):
    del requires_grad, backward_hooks
    if not isinstance(data, np.ndarray):
      raise UnsafePickleError(f"{self._filename}: _rebuild_parameter of a non-tensor")
    return data


def load_pth(path: str | os.PathLike) -> Any:
  """Reads a `torch.save` zip archive -> the saved object with tensors as NumPy arrays.

  Raises UnsafePickleError (a global outside the allow-list; nothing of the pickle was called)
  or DataFormatError (not a zip `.pth`, truncated, inconsistent), each naming the file.
  """
  filename = os.fspath(path)
  try:
    archive = zipfile.ZipFile(filename)
  except FileNotFoundError:
    raise DataFormatError(f"{filename}: no such file") from None
  except (zipfile.BadZipFile, OSError) as e:
    with open(filename, "rb") as f:
      head = f.read(2)
    hint = (" (a legacy pre-1.6 torch.save file: re-save it with a current PyTorch)"
            if head[:1] == b"\x80" else "")
    raise DataFormatError(f"{filename}: not a PyTorch zip archive ({e}){hint}") from None
  with archive:
    pkls = [n for n in archive.namelist() if n.endswith("data.pkl") and n.count("/") == 1]
    if len(pkls) != 1:
      raise DataFormatError(f"{filename}: expected one <name>/data.pkl in the archive, found "
                            f"{len(pkls)}")
    prefix = pkls[0][:-len("data.pkl")]
    byteorder = "little"
    if f"{prefix}byteorder" in archive.namelist():
      byteorder = archive.read(f"{prefix}byteorder").decode("ascii", "replace").strip()
      if byteorder not in ("little", "big"):
        raise DataFormatError(f"{filename}: unknown byte order {byteorder!r}")
    try:
      with archive.open(pkls[0]) as f:
        return _PthUnpickler(f, filename=filename, archive=archive, prefix=prefix,
                             byteorder=byteorder).load()
    except DataFormatError:
      raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError,
            KeyError, OverflowError, RecursionError, MemoryError, zipfile.BadZipFile,
            OSError) as e:
      raise DataFormatError(f"{filename}: not a readable PyTorch file "
                            f"({type(e).__name__}: {e})") from e
