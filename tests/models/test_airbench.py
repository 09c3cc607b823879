"""airbench94's network: shapes, parameter and FLOP counts, the whitening init, frozen weights."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import cifar_assemble
from dassemble_jax import sharding
from dassemble_jax.classification import trainer
from dassemble_jax.jobs import classify
from dassemble_jax.models import airbench
from tests.fake_cifar import write_cifar_pickles

SMALL = (8, 16, 16)


def _correlated_images(n, seed=0):
  """uint8 (n, 32, 32, 3) with neighbouring pixels and channels correlated (a patch covariance
  far from isotropic, so a wrong kernel layout shows)."""
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, 33, 33, 3))
  x = x[:, 1:, 1:] + 0.8 * x[:, :-1, 1:] + 0.5 * x[:, 1:, :-1]  # spatial smoothing
  x = x @ np.array([[1.0, 0.6, 0.2], [0.0, 1.0, 0.7], [0.0, 0.0, 1.0]])  # channel mixing
  return np.clip(128 + 25 * x, 0, 255).astype(np.uint8)


def test_output_shape_dtype_and_bad_input():
  x = jnp.asarray(np.random.default_rng(0).uniform(size=(4, 32, 32, 3)), jnp.float32)
  for dtype in (jnp.float32, jnp.bfloat16):

    def build_and_apply(x, dtype=dtype):  # jitted: eager construction takes seconds on a CPU
      m = airbench.AirbenchClassifier(7, widths=SMALL, dtype=dtype, rngs=nnx.Rngs(0))
      return m(x), nnx.split(m, nnx.Param, nnx.BatchStat)[1]

    y, params = jax.jit(build_and_apply)(x)
    assert y.shape == (4, 7) and y.dtype == jnp.float32 and np.isfinite(np.asarray(y)).all()
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))
  with pytest.raises(ValueError, match="32x32x3"):
    nnx.eval_shape(lambda: airbench.AirbenchClassifier(10, in_channels=1, rngs=nnx.Rngs(0)))
  m = nnx.eval_shape(lambda: airbench.AirbenchClassifier(10, widths=SMALL, rngs=nnx.Rngs(0)))
  with pytest.raises(ValueError, match=r"\(B, 32, 32, 3\)"):
    m(jnp.zeros((2, 28, 28, 1)))


def test_parameter_count_and_collections_for_full_widths():
  widths, classes = (64, 256, 256), 10
  abstract = nnx.eval_shape(lambda: airbench.AirbenchClassifier(classes, widths=widths,
                                                                 rngs=nnx.Rngs(0)))
  _, params, stats = nnx.split(abstract, nnx.Param, nnx.BatchStat)
  n_params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))
  # By hand: whiten bias 24; per group two 3x3 convs (no bias) and two BN shifts (no scale);
  # head without bias. The whitening kernel 2x2x3x24 is frozen, so not a parameter.
  expected, cin = 24, 24
  for w in widths:
    expected += 9 * cin * w + 9 * w * w + 2 * w
    cin = w
  expected += 256 * classes
  assert n_params == expected == 1_971_352
  flat = nnx.to_flat_state(params)
  names = {"/".join(str(k) for k in path) for path, _ in flat}
  assert not any(n.endswith("scale") for n in names), "BN scale must not be a parameter"
  assert "whiten_kernel" not in names and "whiten_bias" in names
  assert stats["whiten_kernel"].get_value().shape == (2, 2, 3, 24)
  assert isinstance(stats["whiten_kernel"], airbench.Frozen)


def test_forward_flops_by_hand_and_against_xla():
  widths = (64, 256, 256)
  # Dense count, every conv tap (as the ResNet's 389 MFLOP): whiten 31^2 x 12 x 24, then per
  # group conv1 at s^2 and conv2 at (s//2)^2; head 256 x 10; x2 FLOP per multiply-add.
  dense = 31 ** 2 * 12 * 24 + 31 ** 2 * 9 * 24 * 64 + 15 ** 2 * 9 * 64 * 64
  dense += 15 ** 2 * 9 * 64 * 256 + 7 ** 2 * 9 * 256 * 256
  dense += 7 ** 2 * 9 * 256 * 256 + 3 ** 2 * 9 * 256 * 256 + 256 * 10
  assert airbench.forward_flops(widths, 10) == 2 * dense == 236_294_720
  # XLA counts only the taps that fall inside the image ((3s - 2)^2 of 9 s^2 per SAME 3x3 conv)
  # plus the elementwise work: it must sit just above that.
  inside = 31 ** 2 * 12 * 24 + 256 * 10
  for s, cin, cout in ((31, 24, 64), (15, 64, 64), (15, 64, 256), (7, 256, 256), (7, 256, 256),
                       (3, 256, 256)):
    inside += (3 * s - 2) ** 2 * cin * cout
  abstract = nnx.eval_shape(lambda: airbench.AirbenchClassifier(10, widths=widths,
                                                                 rngs=nnx.Rngs(0)))
  graph, state = nnx.split(abstract)
  fwd = jax.jit(lambda st, x: nnx.merge(graph, st)(x))
  cost = fwd.lower(state, jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)).compile()
  cost = cost.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  assert 2 * inside <= cost["flops"] <= 1.05 * 2 * inside


def test_whitening_decorrelates_patches():
  images = _correlated_images(40)
  kernel = airbench.whitening_kernel(images)
  assert kernel.shape == (2, 2, 3, 24) and kernel.dtype == np.float32
  np.testing.assert_array_equal(kernel[..., 12:], -kernel[..., :12])
  # Independent float64 reference: patches from four shifted slices, (dy, dx, c) order.
  z = (images / 255.0 - np.array(airbench.CIFAR_MEAN)) / np.array(airbench.CIFAR_STD)
  p = np.stack([z[:, dy:dy + 31, dx:dx + 31] for dy in (0, 1) for dx in (0, 1)], axis=-2)
  p = p.reshape(-1, 12)
  cov = p.T @ p / len(p)
  np.testing.assert_allclose(airbench.patch_covariance(images, chunk=7), cov, rtol=1e-10)
  lam = np.linalg.eigvalsh(cov)
  assert lam.max() / lam.min() > 20  # far from isotropic: a layout error could not hide
  # The first 12 filters, applied by the same conv as the model, whiten the patches.
  x = airbench.normalize(jnp.asarray(images, jnp.float32) / 255.0)
  y = jax.lax.conv_general_dilated(x, jnp.asarray(kernel[..., :12]), (1, 1), "VALID",
                                   dimension_numbers=("NHWC", "HWIO", "NHWC"))
  y = np.asarray(y, np.float64).reshape(-1, 12)
  got = y.T @ y / len(y)
  want = np.diag(lam / (lam + airbench.WHITEN_EPS))  # identity up to eps's shrinkage
  np.testing.assert_allclose(got, want, atol=2e-3)
  # The same filters read in another layout, (c, kh, kw), would not whiten.
  wrong = kernel[..., :12].transpose(2, 0, 1, 3).reshape(2, 2, 3, 12)
  y = jax.lax.conv_general_dilated(x, jnp.asarray(wrong), (1, 1), "VALID",
                                   dimension_numbers=("NHWC", "HWIO", "NHWC"))
  y = np.asarray(y, np.float64).reshape(-1, 12)
  assert np.abs(y.T @ y / len(y) - want).max() > 0.1
  assert np.abs(np.diag(got) - 1).max() > 1e-3 or lam.min() > 0.5  # eps visible, or no test
  # Float input in [0, 1] is the same data; out-of-range floats and wrong shapes are refused.
  np.testing.assert_allclose(airbench.whitening_kernel(images / 255.0), kernel, rtol=1e-5,
                             atol=1e-5)
  with pytest.raises(ValueError, match=r"\[0, 1\]"):
    airbench.whitening_kernel(images.astype(np.float32))
  with pytest.raises(ValueError, match="32, 32, 3"):
    airbench.whitening_kernel(np.zeros((2, 28, 28, 1), np.uint8))


def test_train_step_keeps_whitening_frozen_and_trains_bn_shift():
  c = cifar_assemble.get_config("full,tiny")
  assert c.model.arch == "airbench" and c.model.widths == SMALL
  assert cifar_assemble.get_config("D0+D1").model.get("arch", "resnet") == "resnet"
  mesh = sharding.make_mesh()
  tx = trainer.build_optimizer(c, 10)
  state, train_def, _ = trainer.init_state(c, 10, 3, tx, mesh)
  images = _correlated_images(c.batch_size, seed=1)
  state = trainer.init_from_data(c, state, images)
  kernel = airbench.whitening_kernel(images)
  np.testing.assert_array_equal(np.asarray(state["batch_stats"]["whiten_kernel"][...]), kernel)
  before = jax.tree.map(np.asarray, state)
  labels = np.arange(c.batch_size) % 10
  batch = {"image": images, "targets": np.eye(10, dtype=np.float32)[labels],
           "known": np.ones((c.batch_size, 10), np.float32)}
  step = jax.jit(trainer.make_train_step(c, train_def, tx, mesh))
  for _ in range(2):
    state, m = step(state, sharding.put_batch(batch, mesh, c.batch_size))
  assert np.isfinite(float(m["loss"]))
  after = jax.tree.map(np.asarray, state)
  # Frozen: bit-identical after the steps (no gradient, no weight decay).
  np.testing.assert_array_equal(after["batch_stats"]["whiten_kernel"][...], kernel)
  # Trained: the whitening bias, BN shifts, convs; BN running statistics move.
  for path in (("whiten_bias",), ("groups", 0, "norm1", "bias"), ("groups", 2, "conv2", "kernel"),
               ("head", "kernel")):
    a, b = after["params"], before["params"]
    for k in path:
      a, b = a[k], b[k]
    assert not np.array_equal(a[...], b[...]), path
  assert not np.array_equal(after["batch_stats"]["groups"][0]["norm1"]["mean"][...],
                            before["batch_stats"]["groups"][0]["norm1"]["mean"][...])
  assert "scale" not in after["params"]["groups"][0]["norm1"]


def test_full_tiny_trains_end_to_end_with_whitening_from_the_data(tmp_path, monkeypatch):
  root = write_cifar_pickles(tmp_path / "cifar", per_batch=40)
  from dassemble_jax.data import cifar
  # 200 training images: the loader keeps the last 5,000 for validation by default.
  monkeypatch.setattr(cifar.load_cifar10_pickles, "__defaults__", (60,))
  seen = []
  real = airbench.whitening_kernel

  def spy(images, *args, **kwargs):
    seen.append(np.asarray(images))
    return real(images, *args, **kwargs)

  monkeypatch.setattr(airbench, "whitening_kernel", spy)
  c = cifar_assemble.get_config("full,tiny")
  c.data.path = str(root)
  out = classify.train_and_evaluate(c, str(tmp_path / "w"))
  assert np.isfinite(out["mean_test_auc"]) and out["num_test"] == 40
  assert len(out["label_space"]) == 10
  assert len(seen) == 1 and seen[0].shape == (48, 32, 32, 3) and seen[0].dtype == np.uint8


def test_resnet_arch_unchanged_and_unknown_arch_refused():
  c = cifar_assemble.get_config("D0+D1,tiny")
  m = nnx.eval_shape(lambda: trainer.build_model(c, 10, 3, rngs=nnx.Rngs(0)))
  assert type(m).__name__ == "ResNetClassifier"
  c.model.arch = "vgg"
  with pytest.raises(ValueError, match="unknown model.arch"):
    trainer.build_model(c, 10, 3, rngs=nnx.Rngs(0))
