"""Progress with rate and ETA, from tqdm.

On a terminal tqdm draws its bar in place. Anywhere else (a log file, a pipe, a notebook cell's
captured output, CI) in-place redraws become one long line of carriage returns, so there each
`report` prints tqdm's own status text as a line of its own. Only process 0 reports.
"""

from __future__ import annotations

import io
import sys
from typing import TextIO

import jax
import tqdm


def _fmt(v) -> str:
  return f"{v:.4g}" if isinstance(v, float) else str(v)


class Progress:
  """`report(done, **fields)` -> 'step 6/12 (50%) | 1.87 steps/s | ETA 00:03, loss 0.768, ...'.

  Args:
    total: units of work in the run.
    initial: units already done (a resumed run): the rate counts only what this process does.
    unit: the unit's name in the rate ('steps' -> '1.87 steps/s').
    inverse_rate: show seconds per unit ('12.30s/scan', unit='scan') instead of units per second; for slow
      units such as whole scans.
    items_per_unit: also show items/s (e.g. images per training step).
    prefix: text before the counts ('step', '[model]').
  """

  def __init__(self, total: int, *, initial: int = 0, unit: str = "steps",
               inverse_rate: bool = False, items_per_unit: int | None = None,
               prefix: str = "", stream: TextIO | None = None):
    self._stream = stream or sys.stdout
    self._items = items_per_unit
    self._prefix = prefix
    self._enabled = jax.process_index() == 0
    interactive = self._enabled and getattr(self._stream, "isatty", lambda: False)()
    # tqdm's {rate_fmt} flips to seconds per unit below one unit per second; pick one form.
    rate = "{rate_inv_fmt}" if inverse_rate else "{rate_noinv_fmt}"
    # smoothing=0: the average rate since the start (steady-state steps after a compile).
    self._bar = tqdm.tqdm(
        total=total, initial=initial, unit=unit if inverse_rate else " " + unit,
        smoothing=0, file=self._stream if interactive else io.StringIO(),
        disable=not self._enabled, dynamic_ncols=True, leave=True, mininterval=0,
        bar_format="{desc}{n_fmt}/{total_fmt} ({percentage:.0f}%) | " + rate
        + " | ETA {remaining}{postfix}")
    self._interactive = interactive

  def report(self, done: int, *, prefix: str | None = None, **fields) -> None:
    """Marks `done` units finished (absolute, not an increment) and shows `fields` beside.

    `prefix` replaces the constructor's from here on (e.g. the name of the file just done).
    """
    if not self._enabled:
      return
    self._prefix = self._prefix if prefix is None else prefix
    if self._prefix:
      self._bar.set_description_str(self._prefix + " ", refresh=False)
    parts = []
    if self._items:
      rate = self._bar.format_dict["rate"]
      if rate is None:  # tqdm has no rate before the first update
        elapsed = self._bar.format_dict["elapsed"]
        rate = (done - self._bar.format_dict["initial"]) / elapsed if elapsed > 0 else 0.0
      parts.append(f"{rate * self._items:.0f} items/s")
    parts += [f"{k} {_fmt(v)}" for k, v in fields.items()]
    self._bar.set_postfix_str(", ".join(parts), refresh=False)
    self._bar.update(done - self._bar.n)
    if not self._interactive:
      print(str(self._bar), file=self._stream, flush=True)

  def close(self) -> None:
    if self._enabled:
      self._bar.close()
