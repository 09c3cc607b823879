"""Small CIFAR-10 "python version" pickles written by the tests, in the dataset's own format."""

import pickle

import numpy as np


def write_cifar_pickles(folder, per_batch=40, num_test=40, seed=0):
  """CIFAR-10 "python version" batches: dicts of bytes keys, 'data' uint8 (N, 3072) planar RGB."""
  root = folder / "cifar-10-batches-py"
  root.mkdir(parents=True)
  rng = np.random.default_rng(seed)
  for name, n in [(f"data_batch_{i}", per_batch) for i in range(1, 6)] + [("test_batch",
                                                                            num_test)]:
    labels = np.arange(n) % 10  # every class in every batch
    data = rng.integers(0, 255, (n, 3072), dtype=np.uint8)
    data[:, :1024] = (labels[:, None] * 25).astype(np.uint8)  # red plane tells the class
    with open(root / name, "wb") as f:
      pickle.dump({b"batch_label": name.encode(), b"labels": labels.tolist(), b"data": data,
                   b"filenames": [b"x.png"] * n}, f, protocol=2)
  return root
