"""Raw CIFAR-10 readers: the "python version" pickles (cifar-10-batches-py) and TFDS.

Same layout as dassemble_jax.data.mnist:

  {'train': (images, labels), 'validation': (images, labels), 'test': (images, labels)}
  images: uint8 (N, 32, 32, 3), channels last (NHWC); labels: int32 (N,), values 0..9.

Validation is the last `validation_size` (default 5,000) of the 50,000 training images, taken in
batch order data_batch_1..5, so it is the same set on every run.
No package ships CIFAR-10, so there is no offline default: users point at their own copy.
"""

from __future__ import annotations

import os
import pathlib

import numpy as np

from dassemble_jax.cli import ConfigError
from dassemble_jax.data import mnist
from dassemble_jax.data.errors import DataFormatError, DatasetUnavailableError
from dassemble_jax.data.safe_pickle import safe_load

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                   "ship", "truck")
IMAGE_SHAPE = (32, 32, 3)
NUM_VALIDATION = 5_000
BATCHES_DIR = "cifar-10-batches-py"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
_ROW = 32 * 32 * 3  # one image: the R plane, then G, then B, each 32x32 row-major


def _batches_folder(folder: pathlib.Path) -> pathlib.Path:
  """`folder` itself when it holds the batches, else its cifar-10-batches-py child."""
  if (folder / TRAIN_BATCHES[0]).exists() or not (folder / BATCHES_DIR).is_dir():
    return folder
  return folder / BATCHES_DIR


def read_cifar_batch(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
  """One CIFAR-10 batch pickle -> (images uint8 (N, 32, 32, 3), labels int32 (N,))."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise DataFormatError(f"{path}: CIFAR-10 batch file not found")
  with open(path, "rb") as f:
    # 'bytes': the originals are Python 2 pickles; their keys stay b'data', b'labels', ...
    batch = safe_load(f, filename=str(path), encoding="bytes")
  if not isinstance(batch, dict):
    raise DataFormatError(f"{path}: expected a dict, the pickle holds a {type(batch).__name__}")
  # Keys are bytes in the originals; accept str too (a batch re-pickled by Python 3).
  batch = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in batch.items()}
  for key in ("data", "labels"):
    if key not in batch:
      raise DataFormatError(f"{path}: no {key!r} key (has {sorted(map(str, batch))})")
  data = batch["data"]
  if not isinstance(data, np.ndarray) or data.dtype != np.uint8:
    raise DataFormatError(f"{path}: 'data' must be a uint8 array, got {_describe(data)}")
  if data.ndim != 2 or data.shape[1] != _ROW:
    raise DataFormatError(f"{path}: 'data' must be (N, {_ROW}), got shape {data.shape}")
  labels = np.asarray(batch["labels"])
  if labels.ndim != 1 or not (labels.size == 0 or np.issubdtype(labels.dtype, np.integer)):
    raise DataFormatError(f"{path}: 'labels' must be a list of ints, got {_describe(labels)}")
  if len(labels) != len(data):
    raise DataFormatError(f"{path}: {len(data)} images but {len(labels)} labels")
  if labels.size and (labels.min() < 0 or labels.max() > 9):
    raise DataFormatError(f"{path}: labels outside 0..9 (min {labels.min()}, max {labels.max()})")
  # (N, 3072) -> (N, C=3, H=32, W=32) planes -> (N, H, W, C).
  images = np.ascontiguousarray(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
  return images, labels.astype(np.int32)


def _describe(x) -> str:
  if isinstance(x, np.ndarray):
    return f"{x.dtype} array {x.shape}"
  return type(x).__name__


def load_cifar10_pickles(folder: str | os.PathLike, validation_size: int = NUM_VALIDATION) -> dict:
  """Reads data_batch_1..5 and test_batch from `folder` (or `folder`/cifar-10-batches-py).

  Args:
    folder: the cifar-10-batches-py folder, or the folder that contains it.
    validation_size: the last this many of the training images become the validation split.

  Returns:
    The split dict described in the module docstring.
  """
  folder = pathlib.Path(folder)
  if not folder.is_dir():
    raise DataFormatError(f"{folder}: CIFAR-10 folder not found")
  root = _batches_folder(folder)
  missing = [n for n in TRAIN_BATCHES + (TEST_BATCH,) if not (root / n).is_file()]
  if missing:
    raise DataFormatError(f"{root}: missing CIFAR-10 batch file(s) {missing}")
  parts = [read_cifar_batch(root / n) for n in TRAIN_BATCHES]
  images = np.concatenate([p[0] for p in parts])
  labels = np.concatenate([p[1] for p in parts])
  n = len(labels)
  if not 0 <= validation_size < n:
    raise DataFormatError(f"{root}: holds {n} training images, too few for the validation "
                          f"split (validation_size={validation_size} must be in [0, {n}))")
  cut = n - validation_size
  return {"train": (images[:cut], labels[:cut]),
          "validation": (images[cut:], labels[cut:]),
          "test": read_cifar_batch(root / TEST_BATCH)}


def load_cifar10_tfds(data_dir: str | os.PathLike | None = None,
                      validation_size: int = NUM_VALIDATION) -> dict:
  """CIFAR-10 from an already prepared TFDS `cifar10` dataset (never downloads).

  TFDS stores examples in its own deterministic order, so the validation split is fixed but is
  not the same images as the pickles' last 5,000.
  """
  builder = mnist.tfds_prepared_builder("cifar10", data_dir)
  where = f"tfds:cifar10@{builder.data_dir}"
  out = {}
  for split in ("train", "test"):
    images, labels = mnist.tfds_arrays(builder, split)
    if images.dtype != np.uint8 or images.shape[1:] != IMAGE_SHAPE:
      raise DataFormatError(f"{where} [{split}]: images {images.dtype}{images.shape}, "
                            "want uint8 (N, 32, 32, 3)")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
      raise DataFormatError(f"{where} [{split}]: labels outside 0..9")
    out[split] = (images, labels.astype(np.int32))
  images, labels = out.pop("train")
  n = len(labels)
  if not 0 <= validation_size < n:
    raise DataFormatError(f"{where}: holds {n} training images, too few for the validation "
                          f"split (validation_size={validation_size} must be in [0, {n}))")
  cut = n - validation_size
  return {"train": (images[:cut], labels[:cut]), "validation": (images[cut:], labels[cut:]),
          "test": out["test"]}


def load_cifar10(source: str = "auto", path: str | os.PathLike | None = None) -> dict:
  """CIFAR-10 from `source`: 'pickle' (folder `path`), 'tfds' (data_dir `path`) or 'auto'.

  'auto': the pickle folder when `path` is given, else TFDS when importable and prepared; with
  neither, DatasetUnavailableError (no package ships CIFAR-10).
  """
  if source == "pickle":
    if path is None:
      raise ConfigError("CIFAR-10 source 'pickle' needs path= the cifar-10-batches-py folder "
                        "(config.data.path)")
    return load_cifar10_pickles(path)
  if source == "tfds":
    return load_cifar10_tfds(path)
  if source == "auto":
    if path is not None:
      return load_cifar10_pickles(path)
    try:
      return load_cifar10_tfds()
    except DatasetUnavailableError as e:
      raise DatasetUnavailableError(
          "CIFAR-10 needs a local copy: pass path= the cifar-10-batches-py folder (from "
          f"https://www.cs.toronto.edu/~kriz/cifar.html) or prepare TFDS 'cifar10' ({e})") from e
  raise ConfigError(f"unknown CIFAR-10 source {source!r}: use 'auto', 'pickle' or 'tfds'")
