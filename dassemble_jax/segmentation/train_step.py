"""The Universal Model of a config: its model, optimiser, jitted init and train step.

What a config compiles to, and nothing about folders: the trainer (train_loop.py) runs the step,
and a trained run is restored (trained_run.py) into the same `Compiled` state layout. The
compiled pieces are cached per model/optimiser configuration, so the job's single-source models
(same shapes and budget) reuse the assembly model's compilation.
"""

from __future__ import annotations

import json
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from dassemble_jax import optimizer, sharding
from dassemble_jax.ct import taxonomy
from dassemble_jax.ct import volume_augment as ct_augment
from dassemble_jax.models.universal_head import DEFAULT_HEAD_IMPL, UniversalModel
from dassemble_jax.segmentation import fused_heads, seg_losses
from dassemble_jax.synth import training as synth_training

State = dict[str, Any]  # {'step', 'params', 'batch_stats', 'opt_state'}
NUM_CLASSES = taxonomy.NUM_CLASSES
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def head_impl(config) -> str:
  """The config's dynamic-head implementation; the model's own default when it names none."""
  return config.model.get("head_impl", DEFAULT_HEAD_IMPL)


def build_model(config, embed_dim: int, *, rngs: nnx.Rngs) -> UniversalModel:
  m = config.model
  if m.backbone == "unet":
    # eval_batch_stats: the anchor's BatchNorm at inference (imported U-Nets; unet3d.py).
    kwargs = {"base_channels": int(m.base_channels), "norm": m.norm,
              "eval_batch_stats": bool(m.get("eval_batch_stats", False))}
  else:
    kwargs = {"feature_size": int(m.feature_size)}
  return UniversalModel(m.backbone, NUM_CLASSES,
                        embed_dim if m.class_code == "text" else None,
                        class_code=m.class_code, head_impl=head_impl(config),
                        dtype=DTYPES[config.compute_dtype], backbone_kwargs=kwargs, rngs=rngs)


def build_optimizer(config) -> optax.GradientTransformation:
  total = int(config.num_steps)
  return optimizer.adamw_cosine(
      learning_rate=config.learning_rate, total_steps=total,
      warmup_steps=max(1, min(int(config.warmup_steps), total - 1)),
      weight_decay=config.weight_decay, grad_clip_norm=config.grad_clip_norm)


def augment_config(config) -> ct_augment.AugmentConfig:
  a = config.augment
  return ct_augment.AugmentConfig(
      crop_size=(int(config.crop_size),) * 3, rot90_prob=float(a.rot90_prob),
      shift_prob=float(a.shift_prob), shift=float(a.shift), zoom_prob=float(a.zoom_prob),
      zoom_range=tuple(float(z) for z in a.zoom_range))


# ------------------------------------------------------------------------------------------------
# Compiled pieces, cached by the configuration that shapes them.

def _signature(config, embed_dim: int) -> str:
  """What the compiled init/step depend on (not the data folders): a hashable cache key."""
  keys = ("model", "augment", "compute_dtype", "crop_size", "batch_size", "num_steps",
          "learning_rate", "warmup_steps", "weight_decay", "grad_clip_norm", "seed")
  sig = {k: config[k].to_dict() if hasattr(config[k], "to_dict") else config[k] for k in keys}
  # Synthesis changes the step (and its batch fields); its spacing is the data's.
  if synth_training.enabled(config):
    sig["synth"] = synth_training.step_signature(config)
  return json.dumps(sig | {"embed_dim": embed_dim}, sort_keys=True, default=str)


class Compiled:
  """The jitted init, train step and graph definitions of one model configuration."""

  def __init__(self, config, embed_dim: int, mesh):
    self.tx = build_optimizer(config)
    self.mesh = mesh
    replicated = sharding.replicated(mesh)
    make = lambda key: build_model(config, embed_dim, rngs=nnx.Rngs(key))

    def init(key):
      _, params, batch_stats = nnx.split(make(key), nnx.Param, nnx.BatchStat)
      return {"step": jnp.zeros((), jnp.int32), "params": params, "batch_stats": batch_stats,
              "opt_state": self.tx.init(params)}

    self._init = jax.jit(init, out_shardings=replicated)
    # A fresh optimiser state for given parameters: the start of a fine-tuning run.
    self.init_opt_state = jax.jit(self.tx.init, out_shardings=replicated)
    abstract = nnx.eval_shape(lambda: make(jax.random.key(0)))
    self.train_def = nnx.graphdef(abstract)
    abstract.eval()  # BatchNorm uses its running averages from here on
    self.eval_def = nnx.graphdef(abstract)
    self.step = jax.jit(make_train_step(config, self.train_def, self.tx, mesh),
                        out_shardings=(replicated, replicated), donate_argnums=0)
    self.seed = int(config.seed)

  def init_state(self) -> State:
    # 'rbg' keys: XLA's RngBitGenerator compiles in about half the time of threefry on the CPU
    # (the init program is otherwise mostly random-number code, compiled once per process).
    return self._init(jax.random.key(self.seed, impl="rbg"))

  def abstract_state(self) -> State:
    """ShapeDtypeStructs of `init_state()`, replicated over the mesh: a restore's target."""
    rep = sharding.replicated(self.mesh)
    return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=rep),
                        jax.eval_shape(self.init_state))


_COMPILED: dict[tuple, Compiled] = {}


def compiled_for(config, embed_dim: int) -> Compiled:
  """The cached Compiled for this configuration and set of devices (built on first use)."""
  key = (_signature(config, embed_dim), tuple(d.id for d in jax.devices()))
  if key not in _COMPILED:
    _COMPILED[key] = Compiled(config, embed_dim, sharding.make_mesh())
  return _COMPILED[key]


def make_train_step(config, train_def, tx, mesh):
  """A pure `train_step(state, host_batch, table) -> (state, metrics)`.

  host_batch: the Grain batch as global arrays (windows, uint32 bitmask labels, annotated,
  source, zoom_ok; with synthesis also synth_ok), sharded on 'data'; the crop/augmentation rng
  is fold_in(seed key, step), the synthesis rng fold_in(another seed key, step).
  """
  base_key = jax.random.key(int(config.seed) + 1)
  synth_key = jax.random.key(int(config.seed) + 2)
  batch_sharding = sharding.batch_sharded(mesh)
  aug = augment_config(config)
  dtype = DTYPES[config.compute_dtype]
  synth_cfg = synth_training.synth_config(config) if synth_training.enabled(config) else None
  spacing = synth_training.spacing_of(config)
  fused = head_impl(config) == "fused"

  def loss_fn(params, batch_stats, data, table):
    # Fresh Variables at this trace level: BatchNorm mutates its statistics inside the grad trace.
    batch_stats = jax.tree.map(lambda x: x, batch_stats)
    model = nnx.merge(train_def, params, batch_stats)
    if fused:
      # Heads + loss sums in one kernel: the (B, X, Y, Z, 32) logits never exist.
      f, theta = model.head_inputs(data["image"].astype(dtype), table)
      loss = fused_heads.partial_label_loss_from_heads(f, theta, data["label_bits"],
                                                       data["annotated"], mesh=mesh)
    else:
      logits = model(data["image"].astype(dtype), table)     # (B, X, Y, Z, 32)
      loss = seg_losses.partial_label_loss(logits, data["label"], data["annotated"])
    return loss.total, (loss, nnx.state(model, nnx.BatchStat))

  def train_step(state: State, batch, table) -> tuple[State, dict]:
    batch = jax.lax.with_sharding_constraint(batch, batch_sharding)
    key = jax.random.fold_in(base_key, state["step"])
    extra = {}
    if synth_cfg is not None:
      # On the host window, before the crop: the generator sees the data's own voxel spacing.
      batch = synth_training.synthesize_window_batch(
          jax.random.fold_in(synth_key, state["step"]), batch, spacing, synth_cfg)
      extra["synth_tumor_voxels"] = jnp.sum(batch.pop("synth_tumor_voxels"))
      extra["synth_samples"] = jnp.sum(batch.pop("synth_ok").astype(jnp.int32))
    data = ct_augment.augment_batch(key, batch, aug)
    (_, (loss, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state["params"], state["batch_stats"], data, table)
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    new_state = {"step": state["step"] + 1, "params": params, "batch_stats": batch_stats,
                 "opt_state": opt_state}
    return new_state, {"loss": loss.total, "bce": loss.bce, "dice": loss.dice,
                       "annotated_pairs": loss.num_pairs, "grad_norm": optax.tree.norm(grads),
                       **extra}

  return train_step
