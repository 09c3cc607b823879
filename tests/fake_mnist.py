"""Small MNIST-format IDX files whose digits are learnable, written by the tests.

Each "digit" d is a 14x14 patch of stripes at angle d * 18 degrees, pasted at a random place
near the centre, plus noise: a tiny network separates them in a few steps, so training tests can
check that learning happens. (The classes differ in local texture, which a conv net with global
average pooling sees; position or mean intensity it would not.)
"""

import gzip
import pathlib
import struct

import numpy as np


def _images(labels: np.ndarray, rng) -> np.ndarray:
  n = labels.shape[0]
  img = rng.integers(0, 50, size=(n, 28, 28)).astype(np.float64)
  yy, xx = np.mgrid[0:14, 0:14]
  shifts = rng.integers(4, 11, size=(n, 2))
  for i in range(n):
    d = int(labels[i])
    theta = np.pi * d / 10
    stripes = np.sin(2 * np.pi * (xx * np.cos(theta) + yy * np.sin(theta)) / 5.0) > 0
    r, c = shifts[i]
    img[i, r:r + 14, c:c + 14] += 190 * stripes
  return np.clip(img, 0, 255).astype(np.uint8)


def _write_idx(path: pathlib.Path, array: np.ndarray, gz: bool) -> None:
  dims = array.shape
  header = struct.pack(">HBB", 0, 0x08, len(dims)) + struct.pack(f">{len(dims)}I", *dims)
  data = header + array.tobytes()
  if gz:
    path = path.with_name(path.name + ".gz")
    data = gzip.compress(data, compresslevel=1)
  path.write_bytes(data)


def write_fake_mnist(folder: pathlib.Path, num_train: int = 10600, num_test: int = 400,
                     seed: int = 0, gz: bool = True) -> pathlib.Path:
  """Writes the four standard IDX files; the loader keeps the last 10,000 for validation."""
  folder.mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(seed)
  for prefix, n in (("train", num_train), ("t10k", num_test)):
    y = rng.integers(0, 10, size=n).astype(np.uint8)
    _write_idx(folder / f"{prefix}-images-idx3-ubyte", _images(y, rng), gz)
    _write_idx(folder / f"{prefix}-labels-idx1-ubyte", y, gz)
  return folder
