"""The fused dynamic heads + loss sums (segmentation/fused_heads.py).

The Pallas kernel runs here in Pallas' interpreter (the same kernel code the GPU compiles), on
shapes that exercise the padding: classes not a multiple of 16, voxels not a multiple of a
program's chunk. Ground truth: the einsum heads + `seg_losses.partial_label_loss`, and a float64
NumPy loop over (sample, class).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import universal
from dassemble_jax import sharding
from dassemble_jax.ct import bitmask
from dassemble_jax.models import universal_head as uh
from dassemble_jax.segmentation import fused_heads as fh
from dassemble_jax.segmentation import seg_losses, train_step

KERNEL = (16, 2, 4)  # 16-voxel tiles, 2 per program: 32-voxel chunks


def _inputs(b, s, k, seed=0):
  rng = np.random.default_rng(seed)
  f = rng.normal(size=(b, s, 8)).astype(np.float32)
  theta = (rng.normal(size=(b, k, 153)) * 0.5).astype(np.float32)
  bits = rng.integers(0, 2**32, (b, s), dtype=np.uint64).astype(np.uint32)
  annotated = rng.integers(0, 2, (b, k)).astype(np.float32)
  annotated[0, 0] = 1.0
  return f, theta, bits, annotated


def _numpy_stats(f, theta, bits):
  """float64 loop over (sample, class): the three 1x1x1 layers, then the four sums."""
  f, theta = f.astype(np.float64), theta.astype(np.float64)
  b, k = theta.shape[:2]
  out = np.zeros((b, k, 4))
  for i in range(b):
    for c in range(k):
      t = theta[i, c]
      w1, w2, w3 = t[:64].reshape(8, 8), t[64:128].reshape(8, 8), t[128:136].reshape(1, 8)
      b1, b2, b3 = t[136:144], t[144:152], t[152:153]
      h = np.maximum(f[i] @ w1.T + b1, 0)
      h = np.maximum(h @ w2.T + b2, 0)
      z = (h @ w3.T + b3)[:, 0]
      y = ((bits[i] >> np.uint32(c)) & 1).astype(np.float64) if c < 32 else np.zeros_like(z)
      s = 1 / (1 + np.exp(-z))
      bce = -(y * np.log(s) + (1 - y) * np.log1p(-s))
      out[i, c] = (bce.sum(), (s * y).sum(), s.sum(), y.sum())
  return out


def test_kernel_stats_equal_a_float64_numpy_loop():
  f, theta, bits, _ = _inputs(2, 70, 5)
  want = _numpy_stats(f, theta, bits)
  for impl in ("interpret", "reference"):
    got = fh.head_loss_stats(jnp.asarray(f), jnp.asarray(theta), jnp.asarray(bits), impl=impl,
                             kernel=KERNEL)
    np.testing.assert_allclose(np.asarray(got), want, rtol=2e-5, atol=1e-4, err_msg=impl)


def test_fused_loss_equals_einsum_loss_in_value_and_gradient():
  # 20 classes: two groups of 16, the second padded; 40 voxels: the second chunk padded.
  b, s, k = 2, 40, 20
  f, theta, bits, annotated = map(jnp.asarray, _inputs(b, s, k, seed=1))

  def einsum_loss(f, theta):
    logits = uh.dynamic_heads(f.reshape(b, s, 1, 1, 8), theta)
    y = bitmask.unpack_jax(bits, k).reshape(b, s, 1, 1, k)
    return seg_losses.partial_label_loss(logits, y, annotated).total

  want, want_grads = jax.value_and_grad(einsum_loss, (0, 1))(f, theta)
  for impl in ("interpret", "reference"):
    fused = lambda f, theta, impl=impl: fh.partial_label_loss_from_heads(
        f, theta, bits, annotated, impl=impl, kernel=KERNEL).total
    got, grads = jax.value_and_grad(fused, (0, 1))(f, theta)
    np.testing.assert_allclose(got, want, rtol=1e-5, err_msg=impl)
    for g, w in zip(grads, want_grads):
      np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-6 * float(jnp.abs(w).max()),
                                 err_msg=impl)


def test_kernel_runs_per_shard_of_the_batch_on_a_mesh():
  mesh = sharding.make_mesh()  # 8 fake CPU devices: one sample each
  b, s, k = mesh.size, 32, 3
  f, theta, bits, annotated = map(jnp.asarray, _inputs(b, s, k, seed=2))
  loss = lambda impl, mesh: lambda f, theta: fh.partial_label_loss_from_heads(
      f, theta, bits, annotated, impl=impl, kernel=KERNEL, mesh=mesh).total
  want, want_grads = jax.value_and_grad(loss("reference", None), (0, 1))(f, theta)
  got, grads = jax.jit(jax.value_and_grad(loss("interpret", mesh), (0, 1)))(f, theta)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  for g, w in zip(grads, want_grads):
    np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-6 * float(jnp.abs(w).max()))


def test_bad_arguments_are_named():
  f, theta, bits, _ = map(jnp.asarray, _inputs(1, 16, 2))
  with pytest.raises(ValueError, match="impl"):
    fh.head_loss_stats(f, theta, bits, impl="cuda")
  with pytest.raises(ValueError, match="differ in voxels"):
    fh.head_loss_stats(f, theta, bits[:, :8])


def test_train_step_with_fused_heads_gives_the_blockdiag_step():
  """head_impl='fused' changes how the step computes the loss, not what it computes."""
  rng = np.random.default_rng(0)
  c = universal.get_config("tiny")
  c.batch_size = sharding.make_mesh().size
  batch = {"image": rng.random((c.batch_size,) + (c.crop_size + 2 * c.data.jitter,) * 3,
                               np.float32).astype(np.float16),
           "label": rng.integers(0, 2**20, (c.batch_size,) + (c.crop_size + 2 * c.data.jitter,)
                                 * 3, dtype=np.uint32),
           "annotated": np.ones((c.batch_size, 32), np.uint8),
           "source": np.zeros((c.batch_size,), np.int32),
           "zoom_ok": np.ones((c.batch_size,), np.uint8)}
  # MiniLM's width, as the job's tests: their compiled blockdiag step is this one (cached).
  table = np.asarray(rng.normal(size=(32, 384)), np.float32)
  metrics = {}
  for impl in ("blockdiag", "fused"):
    c.model.head_impl = impl
    comp = train_step.compiled_for(c, table.shape[1])
    dev_batch = sharding.put_batch(batch, comp.mesh, c.batch_size)
    _, m = comp.step(comp.init_state(), dev_batch, sharding.put_replicated(table, comp.mesh))
    metrics[impl] = {k: float(v) for k, v in m.items()}
  for name in ("loss", "bce", "dice", "grad_norm"):
    np.testing.assert_allclose(metrics["fused"][name], metrics["blockdiag"][name], rtol=1e-5,
                               err_msg=name)
