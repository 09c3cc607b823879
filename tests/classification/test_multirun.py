"""The vmapped multi-run program against the single-run trainer, and the table summaries."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from dassemble_jax import sharding
from dassemble_jax.classification import experiments, multirun, trainer
from dassemble_jax.jobs import classify
from tests.fake_mnist import write_fake_mnist


@pytest.fixture(scope="module")
def idx_dir(tmp_path_factory):
  return write_fake_mnist(tmp_path_factory.mktemp("mnist_idx"), num_train=10300, num_test=200)


def tiny(idx_dir, setting="D0+D1", seed=0, **kw):
  c = experiments.mnist_odd_even(f"{setting},tiny")
  c.data.source, c.data.path = "idx", str(idx_dir)
  c.data.sources = tuple(dict(s, num_train=32, num_validation=24) for s in c.data.sources)
  c.seed = seed
  c.augment = "translate"
  c.num_epochs = 2
  c.learning_rate = 1e-2
  for k, v in kw.items():
    setattr(c, k, v)
  return c


def test_one_epoch_params_match_single_run_trainer(idx_dir):
  """Run 1 of a vmapped pair ends the epoch with the parameters of the single (sharded) run."""
  configs = [tiny(idx_dir, seed=s, epoch_mode="scan") for s in (0, 3)]
  splits = multirun.load_splits(configs[0])
  prog = multirun.Program(configs[0], 10, 1, splits["train"]["image"].shape[0])
  seeds = jnp.asarray([0, 3], jnp.int32)
  data = {k: jnp.asarray(splits["train"][k]) for k in ("image", "targets", "known")}
  state = prog.init(seeds)
  state, _ = prog.epoch(state, data, seeds, 1)

  c = configs[1]
  mesh = sharding.make_mesh()
  tx = trainer.build_optimizer(c, prog.total_steps)
  ref, train_def, _ = trainer.init_state(c, 10, 1, tx, mesh)
  step = trainer.make_train_step(c, train_def, tx, mesh)
  epoch = trainer.ResidentEpoch(c, step, prog.steps_per_epoch, c.batch_size)
  ref, _ = epoch(ref, sharding.put_replicated(data, mesh), c.seed, 1)
  got = jax.tree.map(lambda x: x[1], state["params"])
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5),
               got, ref["params"])


def test_vmapped_runs_agree_with_train_and_evaluate(idx_dir, tmp_path):
  runs = [multirun.Run("D0+D1", tiny(idx_dir, seed=s)) for s in (0, 1)]
  res = multirun.run_all(runs, verbose=False, vmap_runs=True)
  assert [r["group_size"] for r in res] == [2, 2]  # vmapped even on CPU
  single = classify.train_and_evaluate(tiny(idx_dir, seed=1), str(tmp_path))
  assert res[1]["best_epoch"] == single["best_epoch"]
  for c, a in single["test_auc"].items():
    # Same arithmetic; only float summation order differs (8 sharded devices vs one).
    assert res[1]["test_auc"][c] == pytest.approx(a, abs=2e-3), c
  assert res[0]["test_auc"] != res[1]["test_auc"]  # the seeds really differ


def test_semisup_vmapped_runs_agree_with_train_and_evaluate(idx_dir, tmp_path):
  """Semi-supervision (here with its EMA teacher in the state) is one step for both paths."""
  def semi(seed):
    c = experiments.mnist_overlap("semi,tiny")
    c.data.source, c.data.path = "idx", str(idx_dir)
    c.data.sources = tuple(dict(s, num_train=32, num_validation=24) for s in c.data.sources)
    c.seed, c.num_epochs, c.learning_rate = seed, 2, 1e-2
    c.semisup.teacher, c.semisup.rampup_steps = "ema", 2
    return c
  res = multirun.run_all([multirun.Run("semi", semi(s)) for s in (0, 1)], verbose=False,
                         vmap_runs=True)
  single = classify.train_and_evaluate(semi(1), str(tmp_path))
  assert res[1]["best_epoch"] == single["best_epoch"]
  for c, a in single["test_auc"].items():
    assert res[1]["test_auc"][c] == pytest.approx(a, abs=2e-3), c
  assert res[0]["test_auc"] != res[1]["test_auc"]


def test_groups_by_shape_and_summary(idx_dir):
  runs = [multirun.Run(s, tiny(idx_dir, s, seed=k)) for s in ("D0", "D1", "D0+D1")
          for k in (0, 1)]
  groups = multirun.group_runs(runs)
  # D0 and D1 share shapes (5 classes, 32 images) and run together; D0+D1 has 10 classes.
  assert sorted(map(len, groups)) == [2, 4]
  fake = [{"setting": "A", "test_auc": {"1": v, "3": 0.5}} for v in (0.8, 0.9, 1.0)]
  summary = multirun.summarize(fake)
  assert summary["A"]["1"]["mean"] == pytest.approx(0.9)
  assert summary["A"]["1"]["std"] == pytest.approx(0.1)  # ddof=1
  assert summary["A"]["3"]["n"] == 3


def test_vmap_policy_follows_backend_and_width(monkeypatch):
  """Never vmap on CPU; on accelerators only narrow models (the H100 measurements)."""
  narrow, wide = ml_collections.ConfigDict(), ml_collections.ConfigDict()
  narrow.model = {"widths": (8, 16, 32)}
  wide.model = {"widths": (64, 128, 256)}
  monkeypatch.setattr(jax, "default_backend", lambda: "cpu")
  assert not multirun.vmap_runs_default(narrow)
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  assert multirun.vmap_runs_default(narrow)
  assert not multirun.vmap_runs_default(wide)
  assert multirun.vmap_runs_default(None)


def test_multirun_refuses_networks_it_cannot_initialise(idx_dir):
  """airbench needs its whitening filters from each run's data: an error, not a silent identity."""
  c = tiny(idx_dir)
  c.model.arch = "airbench"
  with pytest.raises(ValueError, match="arch='resnet' only"):
    multirun.Program(c, num_classes=10, in_channels=1, num_train=64)
