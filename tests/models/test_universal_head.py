"""The universal head equals a per-sample, per-class loop (the anchor's algorithm) in float64
NumPy; class-code ablations; the glued model; no recompiles; bf16 compute."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from dassemble_jax.models import universal_head as uh

jax.config.update("jax_default_matmul_precision", "highest")


def numpy_init(ctor, seed=0):
  """Abstract construction + NumPy random values (no per-parameter compiles); see
  tests/models/test_models_3d.py."""
  graphdef, state = nnx.split(nnx.eval_shape(ctor))
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = str(path[-1])
    if "var" in name:
      return np.ones(leaf.shape, leaf.dtype)
    if "mean" in name:
      return np.zeros(leaf.shape, leaf.dtype)
    if "scale" in name:
      return (1 + 0.1 * rng.normal(size=leaf.shape)).astype(leaf.dtype)
    fan_in = max(1, int(np.prod(leaf.shape[:-1])))
    std = 0.2 if leaf.ndim < 2 or "bias" in name else 1.0 / np.sqrt(fan_in)
    return (rng.normal(size=leaf.shape) * std).astype(leaf.dtype)

  return nnx.merge(graphdef, jax.tree_util.tree_map_with_path(fill, state))


def _np(x):
  return np.asarray(x, np.float64)


def _group_norm(x, scale, bias, groups, eps=1e-5):
  """(D, H, W, C) single sample."""
  c = x.shape[-1]
  g = x.reshape(-1, groups, c // groups)
  mu = g.mean((0, 2), keepdims=True)
  var = g.var((0, 2), keepdims=True)
  return ((g - mu) / np.sqrt(var + eps)).reshape(x.shape) * scale + bias


def _reference(head, deep, dec, table):
  """The anchor's forward, one sample and one class at a time, float64."""
  deep, dec = _np(deep), _np(dec)
  if head.class_code == "text":
    codes = np.maximum(_np(table) @ _np(head.text_to_vision.kernel[...])
                       + _np(head.text_to_vision.bias[...]), 0)
  elif head.class_code == "learned":
    codes = _np(head.organ_embedding[...])
  else:
    codes = np.eye(head.num_classes)
  out = np.zeros(dec.shape[:4] + (head.num_classes,))
  for b in range(deep.shape[0]):
    g = np.maximum(_group_norm(deep[b], _np(head.gap_norm.scale[...]),
                               _np(head.gap_norm.bias[...]), head.gap_norm.num_groups), 0)
    g = g.mean((0, 1, 2)) @ _np(head.gap_proj.kernel[...]) + _np(head.gap_proj.bias[...])
    f = np.maximum(_group_norm(dec[b], _np(head.precls_norm.scale[...]),
                               _np(head.precls_norm.bias[...]), head.precls_norm.num_groups), 0)
    f = f @ _np(head.precls_conv.kernel[...]) + _np(head.precls_conv.bias[...])  # (D,H,W,8)
    for k in range(head.num_classes):
      theta = (np.concatenate([g, codes[k]]) @ _np(head.controller.kernel[...])
               + _np(head.controller.bias[...]))
      # The anchor's split: weights 64, 64, 8 then biases 8, 8, 1; each weight (out, in).
      w1, w2, w3 = theta[:64].reshape(8, 8), theta[64:128].reshape(8, 8), theta[128:136]
      b1, b2, b3 = theta[136:144], theta[144:152], theta[152]
      h = np.maximum(f @ w1.T + b1, 0)
      h = np.maximum(h @ w2.T + b2, 0)
      out[b, ..., k] = h @ w3 + b3
  return out


def _inputs(b=2, deep_c=32, dec_c=16, k=5, e=7, seed=0):
  rng = np.random.default_rng(seed)
  deep = rng.normal(size=(b, 2, 2, 3, deep_c)).astype(np.float32)
  dec = rng.normal(size=(b, 4, 5, 6, dec_c)).astype(np.float32)
  table = rng.normal(size=(k, e)).astype(np.float32)
  return deep, dec, table


@pytest.mark.parametrize("class_code", uh.CLASS_CODES)
def test_head_equals_per_sample_per_class_loop(class_code):
  deep, dec, table = _inputs()
  head = numpy_init(lambda: uh.UniversalHead(32, 16, 5, 7, class_code=class_code,
                                             rngs=nnx.Rngs(0)), seed=1)
  # Larger generated weights so the three dynamic layers do not shrink everything to ~0.
  head.controller.kernel[...] = head.controller.kernel[...] * 6
  logits = nnx.jit(lambda h, *a: h(*a))(head, deep, dec, table)
  assert logits.shape == (2, 4, 5, 6, 5)
  ref = _reference(head, deep, dec, table)
  np.testing.assert_allclose(logits, ref, rtol=1e-4, atol=1e-4)
  assert np.std(ref) > 0.2  # the comparison is not between near-constants
  expected_in = 256 + (5 if class_code == "onehot" else 256)
  assert head.controller.kernel.shape == (expected_in, 153)


@pytest.mark.parametrize("impl", sorted(uh.HEAD_IMPLS))
def test_dynamic_heads_equal_grouped_loop(impl):
  rng = np.random.default_rng(2)
  feats = rng.normal(size=(3, 2, 3, 4, 8)).astype(np.float32)
  theta = rng.normal(size=(3, 4, 153)).astype(np.float32)
  out = np.asarray(jax.jit(uh.HEAD_IMPLS[impl])(feats, theta))
  for b in range(3):
    for k in range(4):
      t = _np(theta[b, k])
      h = np.maximum(_np(feats[b]) @ t[:64].reshape(8, 8).T + t[136:144], 0)
      h = np.maximum(h @ t[64:128].reshape(8, 8).T + t[144:152], 0)
      np.testing.assert_allclose(out[b, ..., k], h @ t[128:136] + t[152], rtol=1e-5, atol=1e-5)


def test_head_parameter_count_matches_anchor():
  # U-Net head with a CLIP-width (512) table: the anchor's GAP, precls_conv, text_to_vision and
  # controller.
  head = nnx.eval_shape(lambda: uh.UniversalHead(512, 64, 32, 512, rngs=nnx.Rngs(0)))
  n = sum(x.size for x in jax.tree.leaves(nnx.state(head, nnx.Param)))
  anchor = (2 * 512 + 512 * 256 + 256) + (2 * 64 + 64 * 8 + 8) + (512 * 256 + 256) + (
      512 * 153 + 153)
  assert n == anchor


def test_table_is_an_input_and_errors_are_clear():
  deep, dec, table = _inputs()
  head = numpy_init(lambda: uh.UniversalHead(32, 16, 5, 7, rngs=nnx.Rngs(0)))
  # Not a parameter: nothing of shape (5, 7) is in the state.
  assert all(x.shape != (5, 7) for x in jax.tree.leaves(nnx.state(head)))
  with pytest.raises(ValueError, match="needs the"):
    head(deep, dec)
  with pytest.raises(ValueError, match=r"\(5, 7\)"):
    head(deep, dec, table[:4])
  with pytest.raises(ValueError, match="class_code"):
    uh.UniversalHead(32, 16, 5, 7, class_code="clip", rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="embed_dim"):
    uh.UniversalHead(32, 16, 5, None, rngs=nnx.Rngs(0))


def _unet_model(dtype=None, num_classes=5, embed_dim=7):
  return uh.UniversalModel("unet", num_classes, embed_dim, dtype=dtype,
                           backbone_kwargs=dict(base_channels=4), rngs=nnx.Rngs(0))


def test_universal_model_unet_no_recompiles():
  model = numpy_init(_unet_model)
  graphdef, state = nnx.split(model)

  @jax.jit
  @chex.assert_max_traces(n=1)
  def forward(state, x, table):
    return nnx.merge(graphdef, state)(x, table)

  rng = np.random.default_rng(0)
  table = rng.normal(size=(5, 7)).astype(np.float32)
  outs = []
  for _ in range(3):  # three different batches of the same shape: one trace
    x = rng.normal(size=(2, 16, 16, 16, 1)).astype(np.float32)
    outs.append(forward(state, x, table))
  assert outs[0].shape == (2, 16, 16, 16, 5) and outs[0].dtype == jnp.float32
  assert not np.allclose(outs[0], outs[1])
  # A different table of the same shape (a new prompt set) also reuses the program.
  forward(state, x, table + 1)


def test_full_size_models_abstract_and_bf16():
  # Both backbones at full size, 2 x 96^3, 32 classes, MiniLM's 384-d table: shapes, dtypes and
  # parameter totals without allocating anything.
  x = jax.ShapeDtypeStruct((2, 96, 96, 96, 1), jnp.float32)
  table = jax.ShapeDtypeStruct((32, 384), jnp.float32)
  for backbone, n_backbone in (("unet", 19_073_600), ("swin", 62_186_610)):
    model = nnx.eval_shape(lambda: uh.UniversalModel(backbone, 32, 384, dtype=jnp.bfloat16,
                                                     rngs=nnx.Rngs(0)))
    params = jax.tree.leaves(nnx.state(model, nnx.Param))
    assert all(p.dtype == jnp.float32 for p in params)
    assert sum(p.size for p in params) - n_backbone == sum(
        p.size for p in jax.tree.leaves(nnx.state(model.head, nnx.Param)))
    graphdef, state = nnx.split(model)
    out = jax.eval_shape(lambda s, x, t: nnx.merge(graphdef, s)(x, t), state, x, table)
    assert out.shape == (2, 96, 96, 96, 32) and out.dtype == jnp.bfloat16


def test_bad_backbone_name():
  with pytest.raises(ValueError, match="backbone"):
    uh.UniversalModel("resnet", rngs=nnx.Rngs(0))


@pytest.mark.slow  # ~12 s: XLA's CPU compile of 3D conv backward passes
def test_gradients_reach_backbone_and_head():
  # The functional training pattern: differentiate w.r.t. Params, carry BatchNorm stats.
  model = numpy_init(_unet_model)
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  rng = np.random.default_rng(1)
  x = rng.normal(size=(2, 8, 8, 8, 1)).astype(np.float32)
  y = (rng.random(size=(2, 8, 8, 8, 5)) > 0.5).astype(np.float32)
  table = rng.normal(size=(5, 7)).astype(np.float32)

  def loss_fn(params, rest):
    # Fresh Variables at this trace level: BatchNorm mutates its stats during the forward.
    rest = jax.tree.map(lambda v: v, rest)
    m = nnx.merge(graphdef, params, rest)
    logits = m(x, table)
    loss = jnp.mean(jnp.maximum(logits, 0) - logits * y + jnp.log1p(jnp.exp(-jnp.abs(logits))))
    return loss, nnx.state(m, nnx.BatchStat)

  # CPU backend optimisations off: they triple the compile time and change nothing checked.
  step = jax.jit(jax.value_and_grad(loss_fn, has_aux=True)).lower(params, rest).compile(
      {"xla_backend_optimization_level": 0})
  (loss, stats), grads = step(params, rest)
  assert np.isfinite(float(loss))
  for part in (grads["head"]["controller"]["kernel"], grads["head"]["text_to_vision"]["kernel"],
               grads["backbone"]["down0"]["conv1"]["conv"]["kernel"],
               grads["backbone"]["up0"]["up"]["kernel"]):
    g = np.asarray(part[...])
    assert np.isfinite(g).all() and np.abs(g).max() > 0
  # Training-mode BatchNorm moved its running mean away from the initial zeros.
  assert np.abs(np.asarray(stats["backbone"]["down0"]["conv1"]["norm"]["mean"][...])).max() > 0


def test_blockdiag_heads_match_einsum_heads_in_value_and_gradient():
  rng = np.random.default_rng(3)
  feats = rng.normal(size=(2, 3, 2, 4, 8))
  theta = rng.normal(size=(2, 5, 153))
  loss = lambda fn: lambda f, t: (jnp.sin(fn(f, t)) ** 2).sum()

  def value_and_grads(fn, dtype):
    return jax.value_and_grad(loss(fn), argnums=(0, 1))(jnp.asarray(feats.astype(dtype)),
                                                         jnp.asarray(theta.astype(dtype)))

  # In float64 the two forms are the same function up to the order of additions.
  with jax.enable_x64(True):
    a, ga = value_and_grads(uh.dynamic_heads, np.float64)
    b, gb = value_and_grads(uh.dynamic_heads_blockdiag, np.float64)
    np.testing.assert_allclose(a, b, rtol=1e-12)
    for x, y in zip(ga, gb, strict=True):
      np.testing.assert_allclose(x, y, rtol=1e-10, atol=1e-12 * np.abs(y).max())
  # In float32 each form is as close to that value as float32 allows. sin(logit)^2 of logits in
  # the tens amplifies rounding: both forms are ~1e-4 off the float64 gradient (largest entry
  # ~50), so entries are compared relative to the largest one, not one by one.
  for fn in (uh.dynamic_heads, uh.dynamic_heads_blockdiag):
    v, g = value_and_grads(fn, np.float32)
    assert v.dtype == jnp.float32
    np.testing.assert_allclose(v, a, rtol=1e-5)
    for x, y in zip(g, ga, strict=True):
      np.testing.assert_allclose(x, y, rtol=0, atol=2e-5 * np.abs(y).max())
  with pytest.raises(ValueError, match="head_impl"):
    uh.UniversalHead(16, 16, 4, 8, head_impl="loop", rngs=nnx.Rngs(0))
