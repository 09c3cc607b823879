"""progress.py: tqdm's rate and ETA, one line per report when the stream is not a terminal."""

import io
import re

from dassemble_jax import progress


def test_lines_with_counts_rate_items_and_fields():
  out = io.StringIO()
  bar = progress.Progress(12, initial=2, unit="steps", items_per_unit=16, prefix="step",
                          stream=out)
  bar.report(6, epoch=1, loss=0.76841)
  bar.report(12, epoch=2, loss=0.5)
  bar.close()
  lines = out.getvalue().splitlines()
  assert len(lines) == 2 and "\r" not in out.getvalue()
  assert lines[0].startswith("step 6/12 (50%) | ") and lines[1].startswith("step 12/12 (100%)")
  assert re.search(r"\d+\.\d\d steps/s \| ETA \d\d:\d\d, \d+ items/s, epoch 1, loss 0.7684",
                   lines[0]), lines[0]


def test_slow_units_as_seconds_per_unit_and_a_prefix_per_report():
  out = io.StringIO()
  bar = progress.Progress(2, unit="scan", inverse_rate=True, stream=out)
  bar.report(1, prefix="[1/2] a.nii.gz", load="0.10 s")
  bar.report(2, prefix="[2/2] b.nii.gz")
  lines = out.getvalue().splitlines()
  assert [line.split()[:2] for line in lines] == [["[1/2]", "a.nii.gz"], ["[2/2]", "b.nii.gz"]]
  assert all(re.search(r"\d\.\d\ds/scan \| ETA", line) for line in lines), lines
  assert lines[0].endswith("load 0.10 s")
