"""End-to-end training on the tiny configs: learning, resume, SIGKILL, recompiles, bad input."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import chex
import jax
import numpy as np
import pytest

from dassemble_jax import sharding
from dassemble_jax.classification import experiments, trainer
from dassemble_jax.jobs import classify
from tests.fake_mnist import write_fake_mnist

REPO = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def idx_dir(tmp_path_factory):
  return write_fake_mnist(tmp_path_factory.mktemp("mnist_idx"))


def tiny_config(idx_dir, setting="D0+D1", **overrides):
  c = experiments.mnist_odd_even(f"{setting},tiny")
  c.data.source = "idx"
  c.data.path = str(idx_dir)
  c.data.sources = tuple(dict(s, num_train=64, num_validation=40) for s in c.data.sources)
  for k, v in overrides.items():
    setattr(c, k, v)
  return c


def test_train_learns_and_resumes(idx_dir, tmp_path, capsys):
  config = tiny_config(idx_dir, num_epochs=4, learning_rate=1e-2, augment="none")
  results = classify.train_and_evaluate(config, str(tmp_path))
  assert set(results["test_auc"]) == set(config.data.label_space)
  assert results["mean_test_auc"] > 0.7  # chance is 0.5; the stripes are learnt in 32 steps
  saved = json.loads((tmp_path / "results.json").read_text())
  assert saved["test_auc"] == results["test_auc"]
  assert (tmp_path / "metrics.jsonl").read_text().count("\n") >= 3
  assert any((tmp_path / "tb").iterdir())
  assert "steps/s" in capsys.readouterr().out
  # Rerunning with one more epoch resumes at epoch 4 and trains only the fifth (8 steps each).
  config.num_epochs = 5
  again = classify.train_and_evaluate(config, str(tmp_path))
  out = capsys.readouterr().out
  assert "Resumed" in out and "at epoch 4" in out
  assert "step 32/40" not in out and "step 40/40" in out
  assert again["best_epoch"] in range(1, 6)


def test_grain_input_mode_trains_and_saves_iterator(idx_dir, tmp_path):
  config = tiny_config(idx_dir, num_epochs=1, input_mode="grain")
  results = classify.train_and_evaluate(config, str(tmp_path))
  assert np.isfinite(results["mean_test_auc"])
  meta_files = list((tmp_path / "checkpoints" / "latest").glob("*/meta/*"))
  assert meta_files, "the checkpoint has no metadata item"
  meta = json.loads(next(p for p in meta_files if p.is_file()).read_text())
  assert len(meta["iterators"]) == 1 and meta["iterators"][0]  # one process, its position


def test_train_step_compiles_once(idx_dir):
  config = tiny_config(idx_dir)
  mesh = sharding.make_mesh()
  tx = trainer.build_optimizer(config, 10)
  state, train_def, _ = trainer.init_state(config, 10, 1, tx, mesh)
  step = trainer.make_train_step(config, train_def, tx, mesh)
  step = jax.jit(chex.assert_max_traces(step, n=1))
  rng = np.random.default_rng(0)
  for _ in range(3):
    batch = {"image": rng.integers(0, 255, (16, 28, 28, 1)).astype(np.uint8),
             "targets": (rng.random((16, 10)) > 0.5).astype(np.float32),
             "known": np.ones((16, 10), np.float32)}
    state, metrics = step(state, sharding.put_batch(batch, mesh, 16))
    assert np.isfinite(float(metrics["loss"]))
  assert int(state["step"]) == 3


def test_batch_not_divisible_by_devices_is_a_clear_error(idx_dir, tmp_path):
  config = tiny_config(idx_dir, batch_size=12)  # 8 fake devices
  with pytest.raises(ValueError, match="batch_size=12 is not divisible by the number of devices"):
    classify.train_and_evaluate(config, str(tmp_path))


def _main_cmd(idx_dir, workdir, epochs):
  return [sys.executable, "-m", "dassemble_jax.main",
          "--config=configs/mnist_odd_even.py:D0+D1,tiny", f"--workdir={workdir}",
          "--config.data.source=idx", f"--config.data.path={idx_dir}",
          f"--config.num_epochs={epochs}"]


def _env():
  env = dict(os.environ)
  env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
  env["JAX_PLATFORMS"] = "cpu"
  return env


def test_sigkill_then_rerun_gives_the_uninterrupted_result(idx_dir, tmp_path):
  epochs = 4
  clean, killed = tmp_path / "clean", tmp_path / "killed"
  subprocess.run(_main_cmd(idx_dir, clean, epochs), cwd=REPO, env=_env(), check=True,
                 capture_output=True)
  proc = subprocess.Popen(_main_cmd(idx_dir, killed, epochs), cwd=REPO, env=_env(),
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  latest = killed / "checkpoints" / "latest"
  deadline = time.time() + 240
  while time.time() < deadline and proc.poll() is None:
    if latest.exists() and any(p.name.isdigit() for p in latest.iterdir()):
      break
    time.sleep(0.05)
  assert proc.poll() is None, "the run finished before it could be killed; make it longer"
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert not (killed / "results.json").exists()
  rerun = subprocess.run(_main_cmd(idx_dir, killed, epochs), cwd=REPO, env=_env(), check=True,
                         capture_output=True, text=True)
  assert "Resumed" in rerun.stdout
  a = json.loads((clean / "results.json").read_text())
  b = json.loads((killed / "results.json").read_text())
  assert a["test_auc"] == b["test_auc"]
  assert a["best_epoch"] == b["best_epoch"]


def test_scan_epoch_equals_python_loop_epoch(idx_dir):
  """The compiled lax.scan epoch and the CPU fast path (a loop of jitted steps) agree."""
  config = tiny_config(idx_dir)
  mesh = sharding.make_mesh()
  tx = trainer.build_optimizer(config, 6)
  rng = np.random.default_rng(1)
  data = sharding.put_replicated({
      "image": rng.integers(0, 255, (40, 28, 28, 1)).astype(np.uint8),
      "targets": (rng.random((40, 10)) > 0.5).astype(np.float32),
      "known": (rng.random((40, 10)) > 0.3).astype(np.float32)}, mesh)
  results = []
  for mode in ("scan", "loop"):
    state, train_def, _ = trainer.init_state(config, 10, 1, tx, mesh)
    step = trainer.make_train_step(config, train_def, tx, mesh)
    run = trainer.ResidentEpoch(config, step, 2, 16, mode=mode)
    state, metrics = run(state, data, config.seed, 1)
    results.append((jax.device_get(state["params"]), float(metrics["loss"])))
  (p_scan, l_scan), (p_loop, l_loop) = results
  np.testing.assert_allclose(l_scan, l_loop, rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), p_scan, p_loop)
