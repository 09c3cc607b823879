"""The restricted unpickler: exact round trips of what the datasets need, refusal of the rest."""

import codecs
import copyreg
import io
import os
import pickle
import pickletools

import numpy as np
import pytest

from dassemble_jax.data.errors import DataFormatError, UnsafePickleError
from dassemble_jax.data.safe_pickle import safe_load, safe_load_path

try:
  from numpy._core import multiarray as _multiarray
except ImportError:  # pragma: no cover
  from numpy.core import multiarray as _multiarray


def _load(data: bytes, name="batch.pkl", encoding="latin1"):
  return safe_load(io.BytesIO(data), filename=name, encoding=encoding)


def _globals(data: bytes) -> set:
  """The (module, name) globals a pickle names (GLOBAL and STACK_GLOBAL), for sanity checks."""
  out, strings = set(), []
  for op, arg, _ in pickletools.genops(data):
    if op.name == "GLOBAL":
      out.add(tuple(arg.split(" ", 1)))
    elif op.name == "STACK_GLOBAL":
      out.add((strings[-2], strings[-1]))
    if isinstance(arg, str):
      strings.append(arg)
  return out


# ----------------------------------------------------------------------------------------------
# What must load, exactly
# ----------------------------------------------------------------------------------------------
def _cifar_like():
  rng = np.random.default_rng(0)
  return {
      b"batch_label": b"training batch 1 of 5",
      b"labels": [3, 0, 9],
      b"data": rng.integers(0, 256, (3, 3072), dtype=np.uint8),
      b"filenames": [b"cat_01.png", b"", b"truck_7.png"],
  }


@pytest.mark.parametrize("protocol", [2, 3, 4])
@pytest.mark.parametrize("encoding", ["latin1", "bytes"])
def test_cifar_like_dict_round_trip(protocol, encoding):
  want = _cifar_like()
  data = pickle.dumps(want, protocol=protocol)
  got = _load(data, encoding=encoding)
  assert set(got) == set(want)
  assert type(got[b"data"]) is np.ndarray  # a plain array, not the checking subclass
  assert got[b"data"].dtype == np.uint8 and got[b"data"].flags.c_contiguous
  np.testing.assert_array_equal(got[b"data"], want[b"data"])
  assert got[b"labels"] == want[b"labels"]
  assert got[b"filenames"] == want[b"filenames"]
  assert got[b"batch_label"] == want[b"batch_label"]


def test_protocol2_uses_the_globals_we_admit():
  # Guards the allow-list against numpy changing how it pickles: if this fails, the allow-list
  # (and its docstring) need the new spelling.
  data = pickle.dumps(_cifar_like() | {b"s": np.int64(7)}, protocol=2)
  assert _globals(data) <= {
      ("numpy._core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "_reconstruct"),
      ("numpy._core.multiarray", "scalar"), ("numpy.core.multiarray", "scalar"),
      ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"), ("__builtin__", "bytes")}


def test_mnist_like_tuples_and_scalars_round_trip():
  rng = np.random.default_rng(1)
  x = (rng.integers(0, 256, (5, 784)) / 256).astype(np.float32)
  y = rng.integers(0, 10, 5).astype(np.int64)
  want = ((x, y), (x[:2], y[:2]), (x[2:], y[2:]), np.float32(0.5), np.int64(-3), np.bool_(True))
  got = _load(pickle.dumps(want, protocol=2))
  for (a, b), (c, d) in zip(got[:3], want[:3]):
    assert a.dtype == c.dtype and b.dtype == d.dtype
    np.testing.assert_array_equal(a, c)
    np.testing.assert_array_equal(b, d)
  assert got[3] == np.float32(0.5) and got[3].dtype == np.float32
  assert got[4] == -3 and got[4].dtype == np.int64
  assert got[5] == np.bool_(True)


def test_python2_style_global_spelling_is_admitted():
  # Python 2 numpy wrote numpy.core.multiarray; numpy 2 writes numpy._core.multiarray.
  data = pickle.dumps(np.arange(6, dtype=np.int64).reshape(2, 3), protocol=2)
  assert b"numpy._core.multiarray" in data
  old = data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
  np.testing.assert_array_equal(_load(old), np.arange(6).reshape(2, 3))


def test_shared_and_nested_arrays_are_all_plain():
  a = np.arange(4, dtype=np.uint8)
  got = _load(pickle.dumps({"x": [a, (a, {"y": a})]}, protocol=2))
  arrays = [got["x"][0], got["x"][1][0], got["x"][1][1]["y"]]
  assert all(type(arr) is np.ndarray for arr in arrays)
  for arr in arrays:
    np.testing.assert_array_equal(arr, a)


def test_safe_load_path_detects_gzip_by_magic(tmp_path):
  import gzip
  want = {b"data": np.arange(3072, dtype=np.uint8).reshape(1, 3072) % 251}
  path = tmp_path / "no_gz_suffix"
  path.write_bytes(gzip.compress(pickle.dumps(want, protocol=2)))
  np.testing.assert_array_equal(safe_load_path(path, encoding="bytes")[b"data"], want[b"data"])
  plain = tmp_path / "plain.pkl"
  plain.write_bytes(pickle.dumps(want, protocol=2))
  np.testing.assert_array_equal(safe_load_path(plain)[b"data"], want[b"data"])


# ----------------------------------------------------------------------------------------------
# What must be refused, with nothing run
# ----------------------------------------------------------------------------------------------
class _Evil:
  def __init__(self, target):
    self.target = target

  def __reduce__(self):
    return (os.system, (f"echo pwned > {self.target}",))


class _Reduce:
  """Pickles as an arbitrary (callable, args[, state]) triple."""

  def __init__(self, *reduced):
    self.reduced = reduced

  def __reduce__(self):
    return self.reduced


def test_evil_payload_is_live_with_plain_pickle(tmp_path):
  # The control: the payload really runs under pickle.loads, so the refusals below mean something.
  target = tmp_path / "control"
  pickle.loads(pickle.dumps(_Evil(target), protocol=2))
  assert target.read_text().strip() == "pwned"


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_os_system_is_refused_and_nothing_runs(tmp_path, protocol):
  target = tmp_path / "somefile"
  # The payload comes first: at protocol 5 numpy arrays use a global we refuse too.
  payload = {b"labels": [_Evil(target)], b"data": np.zeros((1, 3072), np.uint8)}
  data = pickle.dumps(payload, protocol=protocol)
  with pytest.raises(UnsafePickleError) as err:
    _load(data, name="/data/cifar-10-batches-py/data_batch_1")
  msg = str(err.value)
  assert "/data/cifar-10-batches-py/data_batch_1" in msg
  assert f"{os.system.__module__}.system" in msg  # 'posix.system' on Linux
  assert not target.exists()
  assert isinstance(err.value, DataFormatError) and isinstance(err.value, ValueError)


def test_hand_written_inst_opcode_is_refused(tmp_path):
  target = tmp_path / "inst"
  data = f"(S'echo pwned > {target}'\nios\nsystem\n.".encode()  # protocol 0 INST opcode
  with pytest.raises(UnsafePickleError, match=r"evil\.pkl.*os\.system"):
    _load(data, name="evil.pkl")
  assert not target.exists()


def test_copyreg_extension_code_goes_through_find_class(tmp_path):
  target = tmp_path / "ext"
  copyreg.add_extension(os.system.__module__, "system", 0x7FFF_FF00)
  try:
    data = pickle.dumps(_Evil(target), protocol=2)
    assert any(op.name.startswith("EXT") for op, _, _ in pickletools.genops(data))
    with pytest.raises(UnsafePickleError, match="system"):
      _load(data, name="ext.pkl")
  finally:
    copyreg.remove_extension(os.system.__module__, "system", 0x7FFF_FF00)
  assert not target.exists()


@pytest.mark.parametrize("reduced, refused", [
    ((eval, ("1+1",)), "__builtin__.eval"),  # protocol 2 spells builtins the Python 2 way
    ((getattr, (dict, "fromkeys")), "__builtin__.getattr"),
    ((np.load, ("x.npy",)), "numpy.load"),
    ((io.open, ("x", "w")), "io.open"),
])
def test_other_globals_are_refused(reduced, refused):
  with pytest.raises(UnsafePickleError, match=refused.replace(".", r"\.")):
    _load(pickle.dumps(_Reduce(*reduced), protocol=2), name="f.pkl")


def test_object_arrays_are_refused():
  data = pickle.dumps(np.array([1, "a"], dtype=object), protocol=2)
  with pytest.raises(UnsafePickleError, match="obj.pkl.*dtype"):
    _load(data, name="obj.pkl")


def test_structured_and_void_dtypes_are_refused():
  for arr in (np.zeros(2, dtype=[("a", "u1"), ("b", "f4")]), np.zeros(2, dtype="V8")):
    with pytest.raises(UnsafePickleError, match="s.pkl"):
      _load(pickle.dumps(arr, protocol=2), name="s.pkl")


def _array_with_dtype_flags(flags):
  """A uint8 array pickle whose dtype state carries `flags` (numpy trusts them on load)."""
  bad_dtype = _Reduce(np.dtype, ("u1", False, True), (3, "|", None, None, None, -1, -1, flags))
  return pickle.dumps(_Reduce(_multiarray._reconstruct, (np.ndarray, (0,), b"b"),
                              (1, (2,), bad_dtype, False, b"\x01\x02")), protocol=2)


def test_dtype_claiming_object_pointers_is_refused():
  # Flag 1 (NPY_ITEM_HASOBJECT) on a uint8 dtype would make numpy treat bytes as PyObject*.
  with pytest.raises(UnsafePickleError, match="flags.pkl"):
    _load(_array_with_dtype_flags(1), name="flags.pkl")


def test_other_crafted_dtype_flags_never_reach_an_array():
  # Flag 2 (NPY_LIST_PICKLE) is harmless once the dtype is rebuilt from its type string; with the
  # crafted dtype itself, numpy would demand a list payload.
  got = _load(_array_with_dtype_flags(2), name="flags.pkl")
  assert type(got) is np.ndarray and got.dtype == np.uint8 and got.dtype.flags == 0
  np.testing.assert_array_equal(got, [1, 2])


def test_calling_ndarray_directly_is_refused():
  # Only _reconstruct may use the ndarray global; calling it (e.g. to allocate) is not possible.
  with pytest.raises(DataFormatError, match="nd.pkl"):
    _load(pickle.dumps(_Reduce(np.ndarray, ((10**6,),)), protocol=2), name="nd.pkl")


def test_reconstruct_ignores_requested_allocation():
  arr = _Reduce(_multiarray._reconstruct, (np.ndarray, (10**13,), b"b"))  # no BUILD state
  got = _load(pickle.dumps(arr, protocol=2), name="big.pkl")
  assert got.size == 0


@pytest.mark.parametrize("reduced", [
    (bytes, (10**12,)),
    (codecs.encode, ("x", "rot13")),
    (codecs.encode, (b"x", "latin1")),
])
def test_admitted_helpers_check_their_arguments(reduced):
  with pytest.raises(UnsafePickleError, match="h.pkl"):
    _load(pickle.dumps(_Reduce(*reduced), protocol=2), name="h.pkl")


def test_persistent_ids_are_refused():
  class P(pickle.Pickler):
    def persistent_id(self, obj):
      return "pid" if obj == "x" else None
  buf = io.BytesIO()
  P(buf, protocol=2).dump(["x"])
  with pytest.raises(UnsafePickleError, match="p.pkl.*persistent"):
    _load(buf.getvalue(), name="p.pkl")


@pytest.mark.parametrize("data", [
    b"",
    b"\x80\x02",
    pickle.dumps(_cifar_like(), protocol=2)[:-300],
    b"not a pickle at all",
])
def test_corrupt_pickles_raise_data_format_error(data):
  with pytest.raises(DataFormatError, match="broken.pkl"):
    _load(data, name="broken.pkl")
