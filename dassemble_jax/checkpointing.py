"""Orbax checkpoints behind one small interface: the train state plus JSON metadata.

Two managers live in the workdir:
  checkpoints/latest  the full train state after each epoch, with the data iterator state and the
                      best validation score so far (what a resumed run needs);
  checkpoints/best    the state with the best validation score (what evaluation needs).
The best checkpoint is written before the latest one, so a run killed between the two redoes
that epoch and arrives at the same place.

The JSON metadata is written by the primary process only. What differs between processes (each
process's data-iterator position) goes in as `per_process(value)`: a list with every process's
value, which `this_process(list)` picks from again on restore.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp


class Checkpoints:
  """Latest + best checkpoints of one run."""

  def __init__(self, workdir: str, *, max_to_keep: int = 2):
    root = os.path.abspath(os.path.join(workdir, "checkpoints"))
    options = lambda n: ocp.CheckpointManagerOptions(max_to_keep=n, create=True,
                                                     enable_async_checkpointing=False)
    self._latest = ocp.CheckpointManager(os.path.join(root, "latest"), options=options(max_to_keep))
    self._best = ocp.CheckpointManager(os.path.join(root, "best"), options=options(1))

  def latest_step(self) -> int | None:
    return self._latest.latest_step()

  def save(self, step: int, state: Any, meta: dict, *, is_best: bool) -> None:
    if is_best and step not in self._best.all_steps():
      self._best.save(step, args=_save_args(state, meta))
      self._best.wait_until_finished()
    if step not in self._latest.all_steps():
      self._latest.save(step, args=_save_args(state, meta))
      self._latest.wait_until_finished()

  def restore_latest(self, abstract_state: Any) -> tuple[Any, dict] | None:
    step = self._latest.latest_step()
    return None if step is None else _restore(self._latest, step, abstract_state)

  def restore_best(self, abstract_state: Any) -> tuple[Any, dict] | None:
    step = self._best.latest_step()
    return None if step is None else _restore(self._best, step, abstract_state)

  def close(self) -> None:
    self._latest.wait_until_finished()
    self._best.wait_until_finished()
    self._latest.close()
    self._best.close()


def _save_args(state, meta):
  return ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))


def _restore(manager, step, abstract_state):
  restored = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
  return restored["state"], restored["meta"]


def per_process(value: Any) -> list:
  """[value of process 0, value of process 1, ...] on every process (a collective: every process
  must call it). `value` must be JSON-serialisable."""
  if jax.process_count() == 1:
    return [value]
  from jax.experimental import multihost_utils
  data = np.frombuffer(json.dumps(value).encode(), np.uint8)
  lengths = multihost_utils.process_allgather(np.array([data.size], np.int32)).reshape(-1)
  padded = np.zeros(int(lengths.max()), np.uint8)
  padded[:data.size] = data
  gathered = multihost_utils.process_allgather(padded).reshape(len(lengths), -1)
  return [json.loads(row[:n].tobytes().decode()) for row, n in zip(gathered, lengths)]


def this_process(values: list | None) -> Any:
  """This process's entry of a `per_process` list (None when there is none)."""
  if not values:
    return None
  if len(values) != jax.process_count():
    raise ValueError(f"the checkpoint holds iterator states of {len(values)} processes but this "
                     f"run has {jax.process_count()}: resume with the same number of processes")
  return values[jax.process_index()]


def abstract_like(state: Any) -> Any:
  """ShapeDtypeStructs (with shardings) describing `state`, the target of a restore."""
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
