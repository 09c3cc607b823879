"""Sharpened pseudo labels and consistency on unknown entries: hand-computed values."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import mnist_overlap
from dassemble_jax.classification import multirun, semisup
from dassemble_jax.jobs import classify
from tests.fake_mnist import write_fake_mnist

P = np.array([[0.8, 0.2], [0.6, 0.5]], np.float32)
Q = np.array([[0.9, 0.1], [0.7, 0.4]], np.float32)
KNOWN = np.array([[1, 0], [0, 0]], np.float32)  # three unknown entries: (0,1), (1,0), (1,1)


def test_sharpen_by_hand():
  # 0.8 > 0.5: 0.8 + 0.2/4; 0.2: 0.2 - 0.2/4; 0.6: 0.6 + 0.4/4; 0.5 is not > tau: 0.5 - 0.5/4.
  np.testing.assert_allclose(semisup.sharpen(P), [[0.85, 0.15], [0.7, 0.375]], rtol=1e-6)
  np.testing.assert_allclose(semisup.sharpen(P, tau=0.7, temperature=2.0),
                             [[0.9, 0.1], [0.3, 0.25]], rtol=1e-6)


def test_losses_by_hand_on_unknown_entries_only():
  out = semisup.semisup_losses(jnp.asarray(P), jnp.asarray(Q), jnp.asarray(KNOWN))
  # (p - p~)^2 on the unknowns: 0.05^2, 0.1^2, 0.125^2, averaged over 3.
  assert float(out["pseudo"]) == pytest.approx((0.0025 + 0.01 + 0.015625) / 3, rel=1e-5)
  # (q - p~)^2: (0.1 - 0.15)^2, (0.7 - 0.7)^2, (0.4 - 0.375)^2.
  assert float(out["consistency"]) == pytest.approx((0.0025 + 0.0 + 0.000625) / 3, rel=1e-5)
  # Entry (0, 0) is known: changing it changes nothing.
  p2 = P.copy()
  p2[0, 0] = 0.01
  again = semisup.semisup_losses(jnp.asarray(p2), jnp.asarray(Q), jnp.asarray(KNOWN))
  assert float(again["pseudo"]) == pytest.approx(float(out["pseudo"]))


def test_all_known_gives_zero_loss_and_gradient():
  known = jnp.ones_like(jnp.asarray(P))
  f = lambda p: sum(semisup.semisup_losses(p, p, known).values())
  assert float(f(jnp.asarray(P))) == 0.0
  assert not np.any(np.asarray(jax.grad(f)(jnp.asarray(P))))


def test_stop_gradient_versus_authors_form():
  p = jnp.asarray(P)
  pseudo = lambda sg: lambda p: semisup.semisup_losses(p, p, jnp.asarray(KNOWN),
                                                       stop_gradient=sg)["pseudo"]
  g_sg = np.asarray(jax.grad(pseudo(True))(p))
  g_through = np.asarray(jax.grad(pseudo(False))(p))
  # Stop-gradient: d/dp (p - c)^2 / 3 = 2 (p - p~) / 3; at (1,1): 2 * 0.125 / 3.
  assert g_sg[1, 1] == pytest.approx(2 * 0.125 / 3, rel=1e-5)
  # Through the target, (p - p~) = p / T below tau, so d/dp (p/4)^2 / 3 = 2 p / 16 / 3.
  assert g_through[1, 1] == pytest.approx(2 * 0.5 / 16 / 3, rel=1e-5)
  # Above tau, p - p~ = -(1 - p)/T: d/dp ((1-p)/4)^2 / 3 = -2 (1 - p) / 16 / 3 at p = 0.6.
  assert g_through[1, 0] == pytest.approx(-2 * 0.4 / 16 / 3, rel=1e-5)
  assert g_sg[0, 0] == 0.0 and g_through[0, 0] == 0.0  # known entry


def test_ema_teacher_target_and_update():
  teacher_p = jnp.asarray(np.array([[0.9, 0.9], [0.1, 0.1]], np.float32))
  out = semisup.semisup_losses(jnp.asarray(P), jnp.asarray(Q), jnp.asarray(KNOWN),
                               p_target=teacher_p)
  # Targets sharpen the teacher: 0.925 at (0,1); 0.075 at (1,0) and (1,1).
  want = ((0.2 - 0.925) ** 2 + (0.6 - 0.075) ** 2 + (0.5 - 0.075) ** 2) / 3
  assert float(out["pseudo"]) == pytest.approx(want, rel=1e-5)
  t = semisup.ema_update({"w": jnp.array([1.0, 0.0])}, {"w": jnp.array([0.0, 1.0])}, 0.9)
  np.testing.assert_allclose(t["w"], [0.9, 0.1], rtol=1e-6)


def test_rampup():
  assert [float(semisup.rampup(jnp.int32(s), 10)) for s in (0, 5, 10, 30)] == [0, 0.5, 1, 1]
  assert float(semisup.rampup(jnp.int32(0), 0)) == 1.0


def test_views_on_device():
  key = jax.random.key(0)
  images = jnp.full((6, 12, 12, 1), 200, jnp.uint8)
  erased = semisup.cutout(key, images.astype(jnp.float32) / 255, size=4, fill=0.5)
  n_fill = np.asarray((erased == 0.5).sum(axis=(1, 2, 3)))
  assert np.all(n_fill > 0) and np.all(n_fill <= 16)  # one square, possibly clipped
  cfg = semisup.default_config()
  weak, strong = jax.jit(lambda k, x: semisup.views(cfg, k, x, flip=True))(key, images)
  assert weak.shape == strong.shape == (6, 12, 12, 1) and weak.dtype == jnp.float32
  for v in (weak, strong):
    assert float(v.min()) >= 0.0 and float(v.max()) <= 1.0
  # Weak is mild (noise std 0.02 on 200/255); strong is far from the original.
  assert abs(float(weak.mean()) - 200 / 255) < 0.02
  assert float(jnp.abs(strong - 200 / 255).mean()) > float(jnp.abs(weak - 200 / 255).mean())


def test_semisup_training_runs_in_the_vmapped_program(tmp_path):
  """The EMA-teacher path (the 'self' target is what the overlap table runs)."""
  teacher = "ema"
  idx = write_fake_mnist(tmp_path / "idx", num_train=10200, num_test=100)
  configs = []
  for seed in (0, 1):
    c = mnist_overlap.get_config("semi,tiny")
    c.data.source, c.data.path = "idx", str(idx)
    c.data.sources = tuple(dict(s, num_train=16, num_validation=16) for s in c.data.sources)
    c.num_epochs, c.seed = 1, seed
    c.semisup.teacher, c.semisup.rampup_steps = teacher, 2
    configs.append(c)
  res = multirun.run_all([multirun.Run("ssl", c) for c in configs], verbose=False)
  assert all(np.isfinite(r["mean_test_auc"]) and np.isfinite(r["history"][0]["loss"])
             for r in res)


def test_semi_config_trains_semisupervised_through_the_job(tmp_path):
  """configs/mnist_overlap.py:semi,tiny (what main runs) turns the extra terms on in the single
  run: their values reach metrics.jsonl, and they are not zero."""
  idx = write_fake_mnist(tmp_path / "idx", num_train=10200, num_test=100)
  c = mnist_overlap.get_config("semi,tiny")
  assert c.semisup.enabled and not mnist_overlap.get_config("partial,tiny").semisup.enabled
  c.data.source, c.data.path = "idx", str(idx)
  c.data.sources = tuple(dict(s, num_train=32, num_validation=16) for s in c.data.sources)
  results = classify.train_and_evaluate(c, str(tmp_path / "w"))
  assert np.isfinite(results["mean_test_auc"])
  rows = [json.loads(line) for line in (tmp_path / "w" / "metrics.jsonl").read_text().split("\n")
          if line]
  train = [r for r in rows if "train/loss" in r]
  assert len(train) == c.num_epochs
  for r in train:
    assert r["train/pseudo"] > 0 and r["train/consistency"] > 0
    assert r["train/sup"] > 0 and np.isfinite(r["train/loss"])
