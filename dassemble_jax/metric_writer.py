"""Metrics for people: TensorBoard events and a JSON-lines file (progress lines: progress.py).

Only process 0 writes. Values are pulled to the host by the caller only when it logs. A resumed
run passes the step of the checkpoint it resumed from: what the killed run logged after that step
is dropped (from metrics.jsonl, and by TensorBoard's purge_step), so every step appears once.
"""

from __future__ import annotations

import json
import os

import jax

from dassemble_jax import atomic

METRICS_FILE = "metrics.jsonl"


class MetricWriter:
  """Scalars to `workdir/metrics.jsonl` and TensorBoard event files in `workdir/tb`."""

  def __init__(self, workdir: str, resume_step: int | None = None):
    self.enabled = jax.process_index() == 0
    self._tb = None
    if self.enabled:
      os.makedirs(workdir, exist_ok=True)
      path = os.path.join(workdir, METRICS_FILE)
      if resume_step is not None:
        drop_after(path, int(resume_step))
      from tensorboardX import SummaryWriter
      self._tb = SummaryWriter(os.path.join(workdir, "tb"),
                               purge_step=None if resume_step is None else int(resume_step) + 1)
      # Open for the writer's life, closed by close().
      self._jsonl = open(path, "a")  # noqa: SIM115

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


def drop_after(path: str, step: int) -> None:
  """Rewrites the JSON-lines file at `path` without the lines logged after `step` (and without a
  line cut short by a kill); no file, nothing to do."""
  try:
    with open(path) as f:
      lines = f.read().splitlines()
  except FileNotFoundError:
    return
  kept = []
  for line in lines:
    try:
      record = json.loads(line)
    except json.JSONDecodeError:
      continue
    if int(record.get("step", 0)) <= step:
      kept.append(line)
  if len(kept) != len(lines):
    atomic.write_text(path, "".join(line + "\n" for line in kept))
