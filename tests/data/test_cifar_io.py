"""CIFAR-10 readers on batches written in the real format (Python 2 and Python 3 protocol 2)."""

import pickle
import struct
import sys

import numpy as np
import pytest

from dassemble_jax.data import cifar
from dassemble_jax.data.errors import DataFormatError, DatasetUnavailableError, UnsafePickleError


def py2_dumps(obj) -> bytes:
  """Pickles like Python 2's cPickle at protocol 2, as the cifar-10-python.tar.gz batches are.

  Python 2 `str` (here: bytes) is written with SHORT_BINSTRING/BINSTRING, which Python 3 can only
  read with encoding='bytes' or 'latin1'; numpy arrays as numpy.core.multiarray._reconstruct +
  BUILD with the raw bytes. No memo opcodes (cPickle adds them; they change nothing).
  """
  out = [b"\x80\x02"]

  def string(b: bytes):
    out.append(b"U" + bytes([len(b)]) + b if len(b) < 256 else b"T" + struct.pack("<I", len(b)) + b)

  def put(x):
    if isinstance(x, bytes):
      string(x)
    elif isinstance(x, bool):
      out.append(b"\x88" if x else b"\x89")
    elif isinstance(x, int):
      out.append(b"J" + struct.pack("<i", x))
    elif x is None:
      out.append(b"N")
    elif isinstance(x, list):
      out.append(b"](")
      for item in x:
        put(item)
      out.append(b"e")
    elif isinstance(x, tuple):
      out.append(b"(")
      for item in x:
        put(item)
      out.append(b"t")
    elif isinstance(x, dict):
      out.append(b"}(")
      for k, v in x.items():
        put(k)
        put(v)
      out.append(b"u")
    elif isinstance(x, np.ndarray):
      out.append(b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n")
      out.append(b"K\x00\x85")  # (0,)
      string(b"b")
      out.append(b"\x87R(K\x01")  # TUPLE3 REDUCE, then the state tuple: version 1,
      put(tuple(int(n) for n in x.shape))
      out.append(b"cnumpy\ndtype\n")
      string(x.dtype.str[1:].encode())
      out.append(b"\x89\x88\x87R")  # dtype('u1', False, True)
      put((3, x.dtype.str[:1].encode(), None, None, None, -1, -1, 0))
      out.append(b"b\x89")  # BUILD the dtype; fortran order False
      string(np.ascontiguousarray(x).tobytes())
      out.append(b"tb")  # end of state; BUILD the array
    else:
      raise TypeError(type(x))

  put(obj)
  out.append(b".")
  return b"".join(out)


def _batch(images_nhwc, labels, name):
  # Each row: the R plane (32x32 row-major), then G, then B.
  data = images_nhwc.transpose(0, 3, 1, 2).reshape(len(images_nhwc), 3072)
  return {b"batch_label": name.encode(), b"labels": [int(v) for v in labels], b"data": data,
          b"filenames": [f"img_{i}.png".encode() for i in range(len(labels))]}


def write_cifar(root, *, per_batch=3, n_test=4, style="py2", seed=0):
  """Writes a tiny cifar-10-batches-py folder; returns the images/labels it holds."""
  rng = np.random.default_rng(seed)
  folder = root / "cifar-10-batches-py"
  folder.mkdir(parents=True)
  dumps = py2_dumps if style == "py2" else (lambda o: pickle.dumps(o, protocol=2))
  written = {}
  for name in cifar.TRAIN_BATCHES + (cifar.TEST_BATCH,):
    n = n_test if name == cifar.TEST_BATCH else per_batch
    x = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    y = rng.integers(0, 10, n)
    (folder / name).write_bytes(dumps(_batch(x, y, name)))
    written[name] = (x, y)
  meta = {b"label_names": [c.encode() for c in cifar.CIFAR10_CLASSES], b"num_cases_per_batch": 10}
  (folder / "batches.meta").write_bytes(dumps(meta))
  return folder, written


def test_py2_writer_is_a_valid_python2_pickle():
  # The helper itself, checked with the standard unpickler.
  want = {b"labels": [1, 2], b"data": np.arange(6, dtype=np.uint8).reshape(2, 3), b"s": b"x" * 300}
  got = pickle.loads(py2_dumps(want), encoding="bytes")
  assert got[b"labels"] == [1, 2] and got[b"s"] == b"x" * 300
  np.testing.assert_array_equal(got[b"data"], want[b"data"])


@pytest.mark.parametrize("style", ["py2", "py3"])
@pytest.mark.parametrize("parent", [False, True])
def test_load_cifar10_pickles_exact(tmp_path, style, parent):
  folder, written = write_cifar(tmp_path, style=style)
  d = cifar.load_cifar10_pickles(tmp_path if parent else folder, validation_size=4)
  assert list(d) == ["train", "validation", "test"]
  for (x, y), n in zip(d.values(), (11, 4, 4)):
    assert x.dtype == np.uint8 and x.shape == (n, 32, 32, 3) and x.flags.c_contiguous
    assert y.dtype == np.int32 and y.shape == (n,)
  x_all = np.concatenate([written[b][0] for b in cifar.TRAIN_BATCHES])
  y_all = np.concatenate([written[b][1] for b in cifar.TRAIN_BATCHES])
  np.testing.assert_array_equal(d["train"][0], x_all[:11])
  np.testing.assert_array_equal(d["train"][1], y_all[:11])
  np.testing.assert_array_equal(d["validation"][0], x_all[11:])  # the last 4, in batch order
  np.testing.assert_array_equal(d["validation"][1], y_all[11:])
  np.testing.assert_array_equal(d["test"][0], written["test_batch"][0])
  np.testing.assert_array_equal(d["test"][1], written["test_batch"][1])


def test_pixel_layout_by_hand(tmp_path):
  # A row of 3072 bytes is R plane, G plane, B plane, each 32x32 row-major:
  # pixel (y, x, c) lives at c * 1024 + y * 32 + x.
  row = np.zeros(3072, np.uint8)
  row[0 * 1024 + 0 * 32 + 1] = 11   # R at (y=0, x=1)
  row[1 * 1024 + 2 * 32 + 0] = 22   # G at (y=2, x=0)
  row[2 * 1024 + 31 * 32 + 31] = 33  # B at (y=31, x=31)
  path = tmp_path / "data_batch_1"
  path.write_bytes(py2_dumps({b"data": row[None], b"labels": [7]}))
  x, y = cifar.read_cifar_batch(path)
  assert x.shape == (1, 32, 32, 3) and y.tolist() == [7]
  assert x[0, 0, 1, 0] == 11 and x[0, 2, 0, 1] == 22 and x[0, 31, 31, 2] == 33
  assert int(x.sum()) == 66


def test_dispatch(tmp_path, monkeypatch):
  folder, _ = write_cifar(tmp_path, per_batch=1001, n_test=2)
  for source in ("pickle", "auto"):
    d = cifar.load_cifar10(source, folder)
    assert [len(v[1]) for v in d.values()] == [5, 5000, 2]
  with pytest.raises(ValueError, match="needs path"):
    cifar.load_cifar10("pickle")
  with pytest.raises(ValueError, match="unknown CIFAR-10 source"):
    cifar.load_cifar10("cifar100", folder)
  monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # no TFDS: a clear error
  with pytest.raises(DatasetUnavailableError, match="cifar-10-batches-py"):
    cifar.load_cifar10("auto")
  with pytest.raises(DatasetUnavailableError, match="tensorflow_datasets"):
    cifar.load_cifar10_tfds()


def test_validation_size_too_big(tmp_path):
  folder, _ = write_cifar(tmp_path)
  with pytest.raises(ValueError, match="validation_size=5000"):
    cifar.load_cifar10_pickles(folder)


def test_missing_batch(tmp_path):
  folder, _ = write_cifar(tmp_path)
  (folder / "data_batch_3").unlink()
  with pytest.raises(DataFormatError, match="data_batch_3") as err:
    cifar.load_cifar10_pickles(tmp_path, validation_size=1)
  assert str(folder) in str(err.value)
  with pytest.raises(DataFormatError, match="not found"):
    cifar.load_cifar10_pickles(tmp_path / "nope")


def _rewrite(folder, name, changes):
  batch = pickle.loads((folder / name).read_bytes(), encoding="bytes")
  batch.update(changes)
  (folder / name).write_bytes(py2_dumps(batch))


@pytest.mark.parametrize("changes, problem", [
    ({b"data": np.zeros((3, 3071), np.uint8)}, r"\(N, 3072\), got shape \(3, 3071\)"),
    ({b"data": np.zeros(3 * 3072, np.uint8)}, r"\(N, 3072\), got shape \(9216,\)"),
    ({b"data": np.zeros((3, 3072), np.int64)}, "must be a uint8 array, got int64"),
    ({b"labels": [1, 2]}, "3 images but 2 labels"),
    ({b"labels": [1, 2, 10]}, r"labels outside 0\.\.9"),
    ({b"labels": [b"a", b"b", b"c"]}, "list of ints"),
])
def test_bad_batches_name_the_file(tmp_path, changes, problem):
  folder, _ = write_cifar(tmp_path)
  _rewrite(folder, "data_batch_4", changes)
  with pytest.raises(DataFormatError, match=problem) as err:
    cifar.load_cifar10_pickles(folder, validation_size=1)
  assert str(folder / "data_batch_4") in str(err.value)


def test_missing_key_and_not_a_dict(tmp_path):
  folder, _ = write_cifar(tmp_path)
  (folder / "test_batch").write_bytes(py2_dumps({b"labels": [1]}))
  with pytest.raises(DataFormatError, match=r"test_batch: no 'data' key"):
    cifar.load_cifar10_pickles(folder, validation_size=1)
  (folder / "test_batch").write_bytes(py2_dumps([1, 2]))
  with pytest.raises(DataFormatError, match="test_batch: expected a dict"):
    cifar.load_cifar10_pickles(folder, validation_size=1)
  (folder / "test_batch").write_bytes(py2_dumps({b"labels": [1]})[:-5])
  with pytest.raises(DataFormatError, match="test_batch: not a readable pickle"):
    cifar.load_cifar10_pickles(folder, validation_size=1)


def test_malicious_batch_is_refused_and_nothing_runs(tmp_path):
  folder, _ = write_cifar(tmp_path)
  target = tmp_path / "somefile"

  class Evil:
    def __reduce__(self):
      import os
      return (os.system, (f"echo pwned > {target}",))

  (folder / "data_batch_2").write_bytes(pickle.dumps({b"labels": Evil()}, protocol=2))
  with pytest.raises(UnsafePickleError, match="data_batch_2.*system") as err:
    cifar.load_cifar10_pickles(folder, validation_size=1)
  assert str(folder / "data_batch_2") in str(err.value)
  assert not target.exists()
