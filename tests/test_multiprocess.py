"""The multi-host path: 2 CPU processes on localhost form one mesh and match a 1-process run."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

from tests.fake_mnist import write_fake_mnist

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def idx_dir(tmp_path_factory):
  return write_fake_mnist(tmp_path_factory.mktemp("mnist_idx_mp"), num_train=10300, num_test=200)


def _args(idx_dir, workdir):
  return ["--config=configs/mnist_odd_even.py:D0+D1,tiny", f"--workdir={workdir}",
          "--config.data.source=idx", f"--config.data.path={idx_dir}", "--config.num_epochs=1"]


def test_two_processes_match_one(idx_dir, tmp_path):
  multi, single = tmp_path / "multi", tmp_path / "single"
  out = subprocess.run([sys.executable, "launch/local.py", "--num_processes=2",
                        "--devices_per_process=2", "--", *_args(idx_dir, multi)],
                       cwd=REPO, capture_output=True, text=True, timeout=600, check=False)
  assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
  assert "jax.distributed: 2 processes, 4 devices" in out.stdout
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_force_host_platform_device_count=4")
  subprocess.run([sys.executable, "-m", "dassemble_jax.main", *_args(idx_dir, single)],
                 cwd=REPO, env=env, check=True, capture_output=True, timeout=600)
  a = json.loads((multi / "results.json").read_text())
  b = json.loads((single / "results.json").read_text())
  assert a["label_space"] == b["label_space"]
  for c in a["label_space"]:
    assert abs(a["test_auc"][c] - b["test_auc"][c]) < 1e-6, c


def test_explicit_coordinator_needs_process_flags(tmp_path):
  out = subprocess.run([sys.executable, "-m", "dassemble_jax.main",
                        "--config=configs/mnist_zero.py:tiny", f"--workdir={tmp_path}",
                        "--coordinator_address=127.0.0.1:1234"],
                       cwd=REPO, capture_output=True, text=True, timeout=120,
                       check=False)
  assert out.returncode != 0
  assert "needs --num_processes and --process_id" in out.stderr


_GATHER = """
import sys, jax
jax.config.update("jax_platforms", "cpu")
jax.distributed.initialize(sys.argv[1], num_processes=2, process_id=int(sys.argv[2]))
from dassemble_jax import checkpointing
i = jax.process_index()
mine = {"process": i, "position": "x" * (3 + 40 * i)}  # different lengths on purpose
values = checkpointing.per_process(mine)
assert values == [{"process": 0, "position": "xxx"}, {"process": 1, "position": "x" * 43}], values
assert checkpointing.this_process(values) == mine
print("ok", i)
"""


def test_each_process_keeps_its_own_iterator_state():
  """Checkpoint metadata is written by process 0 alone, so every process's Grain position is
  gathered into it and each process takes back its own on resume."""
  sys.path.insert(0, str(REPO / "launch"))
  from local import free_port
  address = f"127.0.0.1:{free_port()}"
  env = dict(os.environ, PYTHONPATH=str(REPO), XLA_FLAGS="--xla_force_host_platform_device_count=1")
  procs = [subprocess.Popen([sys.executable, "-c", _GATHER, address, str(i)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
           for i in range(2)]
  outs = [p.communicate(timeout=300)[0] for p in procs]
  for i, (p, out) in enumerate(zip(procs, outs)):
    assert p.returncode == 0 and f"ok {i}" in out, out[-3000:]
