"""Metrics for people: TensorBoard events, a JSON-lines file, and progress lines with ETA.

Only process 0 writes. Values are pulled to the host by the caller only when it logs.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time

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
      self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")

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


class Progress:
  """Prints 'step s/T (p%) | x steps/s | y items/s | ETA h:mm:ss | ...' lines."""

  def __init__(self, total_steps: int, start_step: int, items_per_step: int, stream=None):
    self.total, self.items = total_steps, items_per_step
    self._t0, self._s0 = time.perf_counter(), start_step
    self._stream = stream

  def report(self, step: int, **extra) -> None:
    if jax.process_index() != 0:
      return
    elapsed = time.perf_counter() - self._t0
    rate = (step - self._s0) / elapsed if elapsed > 0 else float("nan")
    eta = (self.total - step) / rate if rate > 0 else float("nan")
    eta_s = "?" if not math.isfinite(eta) else time.strftime("%H:%M:%S", time.gmtime(eta))
    parts = [f"step {step}/{self.total} ({100 * step / max(1, self.total):.0f}%)",
             f"{rate:.2f} steps/s", f"{rate * self.items:.0f} items/s", f"ETA {eta_s}"]
    parts += [f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in extra.items()]
    print(" | ".join(parts), file=self._stream or sys.stdout, flush=True)
