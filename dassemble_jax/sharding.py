"""The device mesh and moving host data onto it.

One mesh over every device of every process, with a single 'data' axis: the classification
models are small, so the state is replicated and the batch is split across devices. Each process
contributes its own rows of a global batch (`jax.make_array_from_process_local_data`).
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P


def make_mesh() -> jax.sharding.Mesh:
  return jax.make_mesh((jax.device_count(),), ("data",),
                       axis_types=(jax.sharding.AxisType.Auto,))


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharded(mesh) -> NamedSharding:
  return NamedSharding(mesh, P("data"))


def check_global_batch(global_batch: int, mesh, what: str = "batch_size") -> int:
  """Returns the per-process batch; raises a clear error when the split is not even."""
  n_dev, n_proc = mesh.devices.size, jax.process_count()
  if global_batch % n_dev:
    raise ValueError(
        f"{what}={global_batch} is not divisible by the number of devices ({n_dev}: "
        f"{n_proc} process(es) x {jax.local_device_count()} local). Pick a multiple of {n_dev}.")
  return global_batch // n_proc


def put_replicated(tree, mesh):
  """Host arrays that every process holds in full -> replicated global arrays."""
  sharding = replicated(mesh)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)),
                      tree)


def put_batch(local_tree, mesh, global_batch: int):
  """This process's rows of a global batch -> a global array sharded on 'data'."""
  sharding = batch_sharded(mesh)
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(
          sharding, np.asarray(x), (global_batch,) + tuple(np.shape(x)[1:])), local_tree)


def local_rows(global_batch: int) -> slice:
  """The rows of a global batch that this process supplies."""
  per = global_batch // jax.process_count()
  return slice(jax.process_index() * per, (jax.process_index() + 1) * per)


def to_host(x) -> np.ndarray:
  """A global array (possibly spread over processes) -> a full NumPy array on every process."""
  if jax.process_count() == 1:
    return np.asarray(x)
  from jax.experimental import multihost_utils
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))
