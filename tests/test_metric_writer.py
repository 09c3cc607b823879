"""metrics.jsonl after a resume holds each step once (what the killed run logged later is dropped)."""

import json

from dassemble_jax import metric_writer


def _steps(path):
  return [json.loads(line)["step"] for line in path.read_text().splitlines()]


def test_resume_drops_what_the_killed_run_logged_after_its_checkpoint(tmp_path):
  writer = metric_writer.MetricWriter(str(tmp_path))
  for step in (10, 20, 30, 40):
    writer.write(step, {"loss": 1.0 / step})
  writer.close()
  with open(tmp_path / metric_writer.METRICS_FILE, "a") as f:
    f.write('{"step": 50, "lo')  # a line cut short by the kill
  resumed = metric_writer.MetricWriter(str(tmp_path), resume_step=20)  # last checkpoint: 20
  for step in (30, 40):
    resumed.write(step, {"loss": 2.0 / step})
  resumed.close()
  assert _steps(tmp_path / metric_writer.METRICS_FILE) == [10, 20, 30, 40]
  last = json.loads((tmp_path / metric_writer.METRICS_FILE).read_text().splitlines()[-1])
  assert last["loss"] == 2.0 / 40  # the resumed run's value, not the killed run's


def test_fresh_run_and_untouched_file(tmp_path):
  writer = metric_writer.MetricWriter(str(tmp_path), resume_step=0)
  writer.write(1, {"loss": 0.5})
  writer.close()
  before = (tmp_path / metric_writer.METRICS_FILE).read_text()
  metric_writer.MetricWriter(str(tmp_path), resume_step=1).close()
  assert (tmp_path / metric_writer.METRICS_FILE).read_text() == before
