"""The label-assembly classifier's trainer: one model, one train step, one epoch loop.

Both ways of training are built from these pieces: the single run of `jobs/classify.py` (state
replicated over a mesh of every device, batches sharded, checkpoints) and the vmapped runs of
`multirun.py` (an experiment table's seeds stacked on a leading axis, one program). So a run of
the same config does the same arithmetic either way:

  init      model from key(seed) (and an EMA teacher when semi-supervision asks for one)
  step      rng = fold_in(key(seed + 1), step); on-device augmentation, masked BCE on the known
            labels (+ pseudo-label and consistency terms on the unknown ones, `config.semisup`),
            clipped AdamW under a warm-up cosine schedule
  epoch     a fresh permutation(fold_in(key(seed + 2), epoch)) of the resident examples, the
            steps either in `lax.scan` (one compiled call) or as a Python loop of compiled steps
            (`resident_epoch_mode`); streamed (Grain) batches always loop
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from dassemble_jax import optimizer, sharding
from dassemble_jax.classification import augment, losses, semisup
from dassemble_jax.cli import ConfigError
from dassemble_jax.models import airbench, classifier, densenet

State = dict[str, Any]  # {'step', 'params', 'batch_stats', 'opt_state'[, 'teacher']}
TRAIN_FIELDS = ("image", "targets", "known")
WHITEN_IMAGES = 5000  # training images whose patches set airbench's whitening (as airbench)


# ------------------------------------------------------------------------------------------------
# Model, optimiser, state.

def build_model(config, num_classes: int, in_channels: int, *, rngs: nnx.Rngs):
  m = config.model
  dtype = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[config.compute_dtype]
  arch = m.get("arch", "resnet")
  if arch == "airbench":
    if m.norm != "batch":
      raise ConfigError(f"model.arch='airbench' uses its own BatchNorm; got model.norm={m.norm!r}")
    return airbench.AirbenchClassifier(num_classes, in_channels=in_channels,
                                       widths=tuple(m.widths), dtype=dtype, rngs=rngs)
  if arch == "densenet":  # DenseNet-121 by default (chest X-rays); smaller via the fields
    return densenet.DenseNet(num_classes, in_channels=in_channels, growth_rate=m.growth_rate,
                             block_config=tuple(m.block_config),
                             num_init_features=m.num_init_features, bn_size=m.bn_size,
                             norm=m.norm, dtype=dtype, rngs=rngs)
  if arch != "resnet":
    raise ConfigError(f"unknown model.arch {arch!r}; expected 'resnet', 'airbench' or 'densenet'")
  return classifier.ResNetClassifier(num_classes, in_channels=in_channels, widths=tuple(m.widths),
                                     blocks_per_stage=m.blocks_per_stage, norm=m.norm, dtype=dtype,
                                     rngs=rngs)


def build_optimizer(config, total_steps: int) -> optax.GradientTransformation:
  return optimizer.adamw_cosine(
      learning_rate=config.learning_rate, total_steps=total_steps,
      warmup_steps=int(config.warmup_fraction * total_steps),
      weight_decay=config.weight_decay, grad_clip_norm=config.grad_clip_norm)


def semisup_config(config):
  """`config.semisup` when it is there and enabled, else None (plain partial-label training)."""
  cfg = config.get("semisup")
  return cfg if cfg is not None and cfg.enabled else None


def graph_defs(config, num_classes: int, in_channels: int):
  """(train_def, eval_def): the model's graph in training mode and in eval mode."""
  abstract = nnx.eval_shape(lambda: build_model(config, num_classes, in_channels,
                                                rngs=nnx.Rngs(0)))
  train_def = nnx.graphdef(abstract)
  abstract.eval()  # BatchNorm uses its running averages from here on
  return train_def, nnx.graphdef(abstract)


def make_init(config, num_classes: int, in_channels: int, tx) -> Callable[[jax.Array], State]:
  """A pure `init(key) -> state` (jit it with shardings, or vmap it over runs' keys)."""
  ssl = semisup_config(config)

  def init(key):
    model = build_model(config, num_classes, in_channels, rngs=nnx.Rngs(key))
    _, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    state = {"step": jnp.zeros((), jnp.int32), "params": params, "batch_stats": batch_stats,
             "opt_state": tx.init(params)}
    if ssl is not None and ssl.teacher == "ema":
      state["teacher"] = jax.tree.map(jnp.copy, params)
    return state

  return init


def init_state(config, num_classes, in_channels, tx, mesh):
  """(state, train_def, eval_def): one run's state, created replicated by a jitted init."""
  init = make_init(config, num_classes, in_channels, tx)
  state = jax.jit(init, out_shardings=sharding.replicated(mesh))(jax.random.key(config.seed))
  return (state,) + graph_defs(config, num_classes, in_channels)


def init_from_data(config, state: State, train_images) -> State:
  """Data-dependent initialisation after `init_state`: airbench's whitening filters from the
  first 5,000 training images (uint8 (N, 32, 32, 3)); the ResNet needs none (state unchanged)."""
  if config.model.get("arch", "resnet") != "airbench":
    return state
  kernel = airbench.whitening_kernel(np.asarray(train_images[:WHITEN_IMAGES]))
  return dict(state, batch_stats=airbench.set_whitening(state["batch_stats"], kernel))


# ------------------------------------------------------------------------------------------------
# The step.

def make_train_step(config, train_def, tx, mesh=None, *, eval_def=None):
  """A pure `train_step(state, batch, seed=config.seed) -> (state, metrics)`.

  batch: {'image' uint8 (B, H, W, C), 'targets' (B, C), 'known' (B, C)}. mesh: constrain the
  batch to the data axis (a single sharded run); None inside a vmap over runs. `seed` is the
  run's seed (traced when runs are stacked). With `config.semisup` enabled, the weak and strong
  views go through one forward pass and the metrics add 'sup', 'pseudo' and 'consistency';
  an EMA teacher (semisup.teacher='ema') needs `eval_def`.
  """
  ssl = semisup_config(config)
  if ssl is not None and ssl.teacher == "ema" and eval_def is None:
    raise ValueError("semisup.teacher='ema' needs the eval graph: pass eval_def")
  batch_sharding = None if mesh is None else sharding.batch_sharded(mesh)

  def loss_fn(params, batch_stats, teacher, batch, key, step):
    # Fresh Variables at this trace level: BatchNorm mutates its statistics inside the grad trace.
    batch_stats = jax.tree.map(lambda x: x, batch_stats)
    model = nnx.merge(train_def, params, batch_stats)
    if ssl is None:
      images = augment.apply(config.augment, key, batch["image"])
      logits = model(images.astype(jnp.float32) / 255.0)
      loss = losses.masked_bce(logits, batch["targets"], batch["known"])
      return loss, (nnx.state(model, nnx.BatchStat), {})
    weak, strong = semisup.views(ssl, key, batch["image"], flip=config.augment == "flip_translate")
    b = weak.shape[0]
    logits = model(jnp.concatenate([weak, strong]))  # one forward for both views: (2B, C)
    z_weak, z_strong = logits[:b], logits[b:]
    sup = losses.masked_bce(z_weak, batch["targets"], batch["known"])
    p_target = None
    if teacher is not None:
      t_model = nnx.merge(eval_def, teacher, jax.lax.stop_gradient(batch_stats))
      p_target = jax.lax.stop_gradient(jax.nn.sigmoid(t_model(weak)))
    extra = semisup.semisup_losses(jax.nn.sigmoid(z_weak), jax.nn.sigmoid(z_strong),
                                   batch["known"], tau=ssl.tau, temperature=ssl.temperature,
                                   stop_gradient=ssl.stop_gradient, p_target=p_target)
    w = semisup.rampup(step, ssl.rampup_steps)
    loss = sup + w * (ssl.pseudo_weight * extra["pseudo"]
                      + ssl.consistency_weight * extra["consistency"])
    return loss, (nnx.state(model, nnx.BatchStat), {"sup": sup, **extra})

  def train_step(state: State, batch, seed=config.seed) -> tuple[State, dict]:
    if batch_sharding is not None:
      batch = jax.lax.with_sharding_constraint(batch, batch_sharding)
    key = jax.random.fold_in(jax.random.key(seed + 1), state["step"])
    teacher = state.get("teacher")
    (loss, (batch_stats, parts)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state["params"], state["batch_stats"], teacher, batch, key, state["step"])
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    new_state = {"step": state["step"] + 1, "params": params, "batch_stats": batch_stats,
                 "opt_state": opt_state}
    if teacher is not None:
      new_state["teacher"] = semisup.ema_update(teacher, params, ssl.ema_decay)
    return new_state, {"loss": loss, "grad_norm": optax.tree.norm(grads), **parts}

  return train_step


# ------------------------------------------------------------------------------------------------
# The epoch.

def epoch_order(seed, n: int, steps_per_epoch: int, global_batch: int, epoch):
  """(steps, global_batch) example indices of an epoch: a fresh permutation per epoch."""
  perm = jax.random.permutation(jax.random.fold_in(jax.random.key(seed + 2), epoch), n)
  return perm[: steps_per_epoch * global_batch].reshape(steps_per_epoch, global_batch)


def resident_epoch_mode(config) -> str:
  """'scan' or 'loop' for an epoch over resident data ('auto': by backend).

  XLA:CPU runs convolutions inside a while loop ~10x slower than the same step called from
  Python (benchmarks/train_throughput.md), so on CPU the loop is the fast path; on GPU/TPU the
  scan removes the per-step dispatch and wins.
  """
  mode = config.get("epoch_mode", "auto")
  if mode == "auto":
    mode = "loop" if jax.default_backend() == "cpu" else "scan"
  if mode not in ("scan", "loop"):
    raise ConfigError(f"epoch_mode must be 'auto', 'scan' or 'loop', got {mode!r}")
  return mode


def _take(data: dict, idx) -> dict:
  return {k: data[k][idx] for k in TRAIN_FIELDS}


def _loop(state: State, steps: int, step_at: Callable) -> tuple[State, dict]:
  """`steps` calls of `step_at(state, i)` from Python; the mean of their metrics."""
  sums = None
  for i in range(steps):
    state, m = step_at(state, i)
    sums = m if sums is None else jax.tree.map(jnp.add, sums, m)
  return state, jax.tree.map(lambda x: x / steps, sums)


class ResidentEpoch:
  """`epoch_fn(state, data, seed, epoch) -> (state, mean metrics)` over resident data.

  data: {'image', 'targets', 'known'} of every training example. One run: `seed` a scalar.
  Runs stacked on a leading axis (`data_axes` given): state and `seed` carry the run axis, and
  data[k] too where data_axes[k] == 0 (None: one array shared by every run). The state is
  donated. `compile(...)` compiles ahead of time (for timing); otherwise the first call does.
  """

  def __init__(self, config, train_step, steps_per_epoch: int, global_batch: int, *,
               mode: str | None = None, data_axes: dict | None = None):
    self.mode = mode or resident_epoch_mode(config)
    self.steps = steps_per_epoch
    self._batch, self._step, self._axes = global_batch, train_step, data_axes
    self._fns = None

  def _vmap(self, fn, in_axes):
    return fn if self._axes is None else jax.vmap(fn, in_axes=in_axes)

  def _build(self, data):
    # Examples per run: axis -4 of the (runs,) N, H, W, C images.
    n = data["image"].shape[-4]
    steps, batch, step = self.steps, self._batch, self._step
    order = lambda seed, epoch: epoch_order(seed, n, steps, batch, epoch)
    if self.mode == "scan":
      def scan_epoch(state, data, seed, epoch):
        body = lambda state, idx: step(state, _take(data, idx), seed)
        state, per_step = jax.lax.scan(body, state, order(seed, epoch))
        return state, jax.tree.map(jnp.mean, per_step)
      return {"epoch": jax.jit(self._vmap(scan_epoch, (0, self._axes, 0, None)),
                               donate_argnums=0)}
    step_at = lambda state, data, idx, seed: step(state, _take(data, idx), seed)
    return {"order": jax.jit(self._vmap(order, (0, None))),
            "step": jax.jit(self._vmap(step_at, (0, self._axes, 0, 0)), donate_argnums=0)}

  def compile(self, state, data, seed, epoch) -> None:
    """Compiles for these arguments (arrays or jax.ShapeDtypeStruct) before the first epoch."""
    fns = self._build(data)
    if self.mode == "scan":
      fns["epoch"] = fns["epoch"].lower(state, data, seed, epoch).compile()
    else:
      fns["order"] = fns["order"].lower(seed, epoch).compile()
      batch_idx = jax.ShapeDtypeStruct(tuple(np.shape(seed)) + (self._batch,), jnp.int32)
      fns["step"] = fns["step"].lower(state, data, batch_idx, seed).compile()
    self._fns = fns

  def compiled_epoch(self):
    """The scan mode's epoch program after `compile` (e.g. for its cost analysis)."""
    return self._fns["epoch"]

  def __call__(self, state, data, seed, epoch):
    if self._fns is None:
      self._fns = self._build(data)
    if self.mode == "scan":
      return self._fns["epoch"](state, data, seed, epoch)
    idx = self._fns["order"](seed, epoch)  # (runs,) steps, batch
    return _loop(state, self.steps,
                 lambda state, i: self._fns["step"](state, data, idx[..., i, :], seed))


def stream_epoch(train_step, steps_per_epoch: int, next_batch: Callable[[], dict], seed):
  """`epoch_fn(state, epoch)` for streamed input: a compiled step per `next_batch()` (device
  arrays, e.g. Grain batches placed on the mesh); the iterator carries the position."""
  step = jax.jit(train_step, donate_argnums=0)

  def run_epoch(state, epoch):
    del epoch
    return _loop(state, steps_per_epoch, lambda state, i: step(state, next_batch(), seed))

  return run_epoch


# ------------------------------------------------------------------------------------------------
# Scoring.

def make_predict_fn(eval_def):
  """`predict(state, images uint8 (B, H, W, C)) -> sigmoid scores (B, C)`."""
  def predict(state: State, images):
    model = nnx.merge(eval_def, state["params"], state["batch_stats"])
    return jax.nn.sigmoid(model(images.astype(jnp.float32) / 255.0))
  return predict


def predict_split(predict_fn, state, images: np.ndarray, mesh, batch: int) -> np.ndarray:
  """Scores (N, C) for host images every process holds in full; padded to fixed batches."""
  n = images.shape[0]
  padded = -(-n // batch) * batch
  images = np.concatenate([images, np.zeros((padded - n,) + images.shape[1:], images.dtype)])
  rows = sharding.local_rows(batch)
  out = []
  for start in range(0, padded, batch):
    chunk = images[start:start + batch][rows]
    out.append(sharding.to_host(predict_fn(state, sharding.put_batch(chunk, mesh, batch))))
  return np.concatenate(out)[:n]
