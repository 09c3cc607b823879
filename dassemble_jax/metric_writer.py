"""Metrics for people: TensorBoard events and a JSON-lines file (progress lines: progress.py).

Only process 0 writes. Values are pulled to the host by the caller only when it logs.
"""

from __future__ import annotations

import json
import os

import jax


class MetricWriter:
  """Scalars to `workdir/metrics.jsonl` and TensorBoard event files in `workdir/tb`."""

  def __init__(self, workdir: str):
    self.enabled = jax.process_index() == 0
    self._tb = None
    if self.enabled:
      os.makedirs(workdir, exist_ok=True)
      from tensorboardX import SummaryWriter
      self._tb = SummaryWriter(os.path.join(workdir, "tb"))
      # Open for the writer's life, closed by close().
      self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")  # noqa: SIM115

  def write(self, step: int, scalars: dict) -> None:
    if not self.enabled:
      return
    clean = {k: float(v) for k, v in scalars.items()}
    for k, v in clean.items():
      self._tb.add_scalar(k, v, step)
    self._jsonl.write(json.dumps({"step": int(step), **clean}) + "\n")
    self._jsonl.flush()
    self._tb.flush()

  def close(self) -> None:
    if self.enabled:
      self._tb.close()
      self._jsonl.close()
