"""A toy volume for tests and demos: an ellipsoid liver in a box (no data needed)."""

import numpy as np


def ellipsoid_liver(shape=(48, 48, 48), spacing=(1.0, 1.0, 1.0), semi_mm=(20.0, 18.0, 21.0)):
  """(ct float32 HU, liver bool): an ellipsoid liver of 60 +- 5 HU in -100 HU background."""
  grids = np.meshgrid(*[(np.arange(n) - (n - 1) / 2) * s for n, s in zip(shape, spacing)],
                      indexing='ij')
  liver = sum((g / a) ** 2 for g, a in zip(grids, semi_mm)) <= 1.0
  rng = np.random.default_rng(0)
  ct = np.where(liver, 60.0, -100.0) + rng.normal(0, 5, shape)
  return ct.astype(np.float32), liver
