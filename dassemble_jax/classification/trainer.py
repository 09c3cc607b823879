"""Train and evaluate a label-assembled multi-label classifier.

`train_and_evaluate(config, workdir)` is the whole job: convert the data (once), build a mesh
over every device of every process, initialise a replicated state with a jitted init, train with
a jitted, donated step (a whole epoch per compiled call when the data is resident on the device,
a Python loop over Grain batches otherwise), pick the best epoch on the validation split, and
report per-class ROC AUC on the test split. Checkpoints after every epoch; a rerun resumes.
"""

from __future__ import annotations

import itertools
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from dassemble_jax.classification import augment
from dassemble_jax import checkpointing
from dassemble_jax.classification import losses
from dassemble_jax import metric_writer
from dassemble_jax.classification import metrics
from dassemble_jax import sharding
from dassemble_jax.data import arrayrecord_io
from dassemble_jax.classification import prepare
from dassemble_jax.models import airbench
from dassemble_jax.models import classifier

State = dict[str, Any]  # {'step', 'params', 'batch_stats', 'opt_state'}
_TRAIN_FIELDS = ("image", "targets", "known")
WHITEN_IMAGES = 5000  # training images whose patches set airbench's whitening (as airbench)


# ------------------------------------------------------------------------------------------------
# Model, optimiser, state.

def build_model(config, num_classes: int, in_channels: int, *, rngs: nnx.Rngs):
  m = config.model
  dtype = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[config.compute_dtype]
  arch = m.get("arch", "resnet")
  if arch == "airbench":
    if m.norm != "batch":
      raise ValueError(f"model.arch='airbench' uses its own BatchNorm; got model.norm={m.norm!r}")
    return airbench.AirbenchClassifier(num_classes, in_channels=in_channels,
                                       widths=tuple(m.widths), dtype=dtype, rngs=rngs)
  if arch != "resnet":
    raise ValueError(f"unknown model.arch {arch!r}; expected 'resnet' or 'airbench'")
  return classifier.ResNetClassifier(num_classes, in_channels=in_channels, widths=tuple(m.widths),
                                     blocks_per_stage=m.blocks_per_stage, norm=m.norm, dtype=dtype,
                                     rngs=rngs)


def build_optimizer(config, total_steps: int) -> optax.GradientTransformation:
  warmup = int(config.warmup_fraction * total_steps)
  schedule = optax.warmup_cosine_decay_schedule(
      0.0, config.learning_rate, warmup_steps=max(1, warmup),
      decay_steps=max(total_steps, warmup + 1), end_value=config.learning_rate * 1e-2)
  # No weight decay on biases and norm scales (1-D parameters).
  decay_mask = lambda params: jax.tree.map(lambda p: p.ndim > 1, params)
  return optax.chain(optax.clip_by_global_norm(config.grad_clip_norm),
                     optax.adamw(schedule, weight_decay=config.weight_decay, mask=decay_mask))


def init_state(config, num_classes, in_channels, tx, mesh):
  """A replicated train state, created directly on the devices by a jitted init."""
  def init(key):
    model = build_model(config, num_classes, in_channels, rngs=nnx.Rngs(key))
    _, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    return {"step": jnp.zeros((), jnp.int32), "params": params, "batch_stats": batch_stats,
            "opt_state": tx.init(params)}
  key = jax.random.key(config.seed)
  state = jax.jit(init, out_shardings=sharding.replicated(mesh))(key)
  abstract = nnx.eval_shape(lambda: build_model(config, num_classes, in_channels,
                                                rngs=nnx.Rngs(0)))
  train_def = nnx.graphdef(abstract)
  abstract.eval()  # BatchNorm uses its running averages from here on
  eval_def = nnx.graphdef(abstract)
  return state, train_def, eval_def


def init_from_data(config, state: State, train_images) -> State:
  """Data-dependent initialisation after `init_state`: airbench's whitening filters from the
  first 5,000 training images (uint8 (N, 32, 32, 3)); the ResNet needs none (state unchanged)."""
  if config.model.get("arch", "resnet") != "airbench":
    return state
  kernel = airbench.whitening_kernel(np.asarray(train_images[:WHITEN_IMAGES]))
  return dict(state, batch_stats=airbench.set_whitening(state["batch_stats"], kernel))


# ------------------------------------------------------------------------------------------------
# Steps.

def make_train_step(config, train_def, tx, mesh):
  """A pure `train_step(state, batch) -> (state, metrics)`; rng = fold_in(seed key, step)."""
  base_key = jax.random.key(config.seed + 1)
  batch_sharding = sharding.batch_sharded(mesh)

  def loss_fn(params, batch_stats, batch, key):
    images = augment.apply(config.augment, key, batch["image"])
    # Fresh Variables at this trace level: BatchNorm mutates its statistics inside the grad trace.
    batch_stats = jax.tree.map(lambda x: x, batch_stats)
    model = nnx.merge(train_def, params, batch_stats)
    logits = model(images.astype(jnp.float32) / 255.0)
    loss = losses.masked_bce(logits, batch["targets"], batch["known"])
    return loss, nnx.state(model, nnx.BatchStat)

  def train_step(state: State, batch) -> tuple[State, dict]:
    batch = jax.lax.with_sharding_constraint(batch, batch_sharding)
    key = jax.random.fold_in(base_key, state["step"])
    (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state["params"], state["batch_stats"], batch, key)
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    new_state = {"step": state["step"] + 1, "params": params, "batch_stats": batch_stats,
                 "opt_state": opt_state}
    return new_state, {"loss": loss, "grad_norm": optax.tree.norm(grads)}

  return train_step


def epoch_order(seed: int, n: int, steps_per_epoch: int, global_batch: int, epoch):
  """(steps, global_batch) example indices of an epoch: a fresh permutation per epoch."""
  perm = jax.random.permutation(jax.random.fold_in(jax.random.key(seed + 2), epoch), n)
  return perm[: steps_per_epoch * global_batch].reshape(steps_per_epoch, global_batch)


def make_epoch_fn(config, train_step, steps_per_epoch: int, global_batch: int):
  """One compiled call per epoch over resident data: permute, then `lax.scan` the steps."""

  def run_epoch(state: State, data: dict, epoch):
    order = epoch_order(config.seed, data["image"].shape[0], steps_per_epoch, global_batch, epoch)

    def body(state, idx):
      return train_step(state, {k: data[k][idx] for k in _TRAIN_FIELDS})

    state, per_step = jax.lax.scan(body, state, order)
    return state, jax.tree.map(jnp.mean, per_step)

  return run_epoch


def make_resident_loop_fn(config, train_step, steps_per_epoch: int, global_batch: int):
  """The same epoch as `make_epoch_fn`, as a Python loop of jitted steps on resident data.

  XLA:CPU runs convolutions inside a while loop ~10x slower than the same step called from
  Python (benchmarks/train_throughput.md), so on CPU the loop is the fast path; on GPU/TPU the
  scan removes the per-step dispatch and wins.
  """
  order_fn = jax.jit(epoch_order, static_argnums=(0, 1, 2, 3))
  step = jax.jit(lambda state, data, idx: train_step(state, {k: data[k][idx]
                                                             for k in _TRAIN_FIELDS}),
                 donate_argnums=0)

  def run_epoch(state: State, data: dict, epoch):
    order = order_fn(config.seed, data["image"].shape[0], steps_per_epoch, global_batch, epoch)
    sums = None
    for i in range(steps_per_epoch):
      state, m = step(state, data, order[i])
      sums = m if sums is None else jax.tree.map(jnp.add, sums, m)
    return state, jax.tree.map(lambda x: x / steps_per_epoch, sums)

  return run_epoch


def resident_epoch_mode(config) -> str:
  mode = config.epoch_mode
  if mode == "auto":
    mode = "loop" if jax.default_backend() == "cpu" else "scan"
  if mode not in ("scan", "loop"):
    raise ValueError(f"epoch_mode must be 'auto', 'scan' or 'loop', got {config.epoch_mode!r}")
  return mode


def make_predict_fn(eval_def):
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


# ------------------------------------------------------------------------------------------------
# The job.

def train_and_evaluate(config, workdir: str) -> dict:
  """Trains, selects the best epoch on validation, evaluates on test; returns the results."""
  os.makedirs(workdir, exist_ok=True)
  mesh = sharding.make_mesh()
  sharding.check_global_batch(config.batch_size, mesh)
  eval_batch = config.eval_batch_size
  sharding.check_global_batch(eval_batch, mesh, "eval_batch_size")

  # Shards are checksummed by `prepare` (just written, or verified on reuse): read them as is.
  data_dir = prepare.prepare(config, workdir)
  manifest = arrayrecord_io.read_manifest(data_dir)
  label_space = manifest["label_space"]
  num_classes = len(label_space)
  num_train = manifest["splits"]["train"]["num_records"]
  steps_per_epoch = num_train // config.batch_size
  if steps_per_epoch == 0:
    raise ValueError(f"batch_size={config.batch_size} exceeds the {num_train} training examples")
  total_steps = steps_per_epoch * config.num_epochs
  in_channels = manifest["fields"]["image"]["shape"][-1]

  tx = build_optimizer(config, total_steps)
  state, train_def, eval_def = init_state(config, num_classes, in_channels, tx, mesh)
  if config.model.get("arch", "resnet") == "airbench":
    first = itertools.islice(arrayrecord_io.read_records(data_dir, "train", verify=False),
                             WHITEN_IMAGES)
    state = init_from_data(config, state, np.stack([r["image"] for r in first]))
  train_step = make_train_step(config, train_def, tx, mesh)
  predict_fn = jax.jit(make_predict_fn(eval_def))
  val = arrayrecord_io.load_split_arrays(data_dir, "validation", verify=False)

  ckpts = checkpointing.Checkpoints(workdir)
  meta = {"epoch": 0, "best_val_auc": -1.0, "best_epoch": 0, "iterators": None}
  restored = ckpts.restore_latest(checkpointing.abstract_like(state))
  if restored is not None:
    state, meta = restored
    print(f"Resumed from {workdir}/checkpoints/latest at epoch {meta['epoch']}", flush=True)

  writer = metric_writer.MetricWriter(workdir)
  progress = metric_writer.Progress(total_steps, meta["epoch"] * steps_per_epoch,
                                    config.batch_size)
  if config.input_mode == "resident":
    train = arrayrecord_io.load_split_arrays(data_dir, "train", verify=False)
    resident = sharding.put_replicated({k: train[k] for k in _TRAIN_FIELDS}, mesh)
    if resident_epoch_mode(config) == "scan":
      run_epoch = jax.jit(make_epoch_fn(config, train_step, steps_per_epoch, config.batch_size),
                          donate_argnums=0)
    else:
      run_epoch = make_resident_loop_fn(config, train_step, steps_per_epoch, config.batch_size)
    next_epoch = lambda state, epoch: run_epoch(state, resident, epoch)
  elif config.input_mode == "grain":
    from dassemble_jax.data import pipeline
    loader = pipeline.make_loader(data_dir, "train", global_batch_size=config.batch_size,
                                  seed=config.seed, shuffle=True, num_epochs=None,
                                  transforms=[pipeline.SelectFields(_TRAIN_FIELDS)],
                                  worker_count=config.grain_workers)
    iterator = iter(loader)
    own = checkpointing.this_process(meta.get("iterators"))
    if own:
      pipeline.restore_iterator_state(iterator, own)
    step_fn = jax.jit(train_step, donate_argnums=0)

    def next_epoch(state, epoch):
      del epoch  # the iterator carries the position
      sums = None
      for _ in range(steps_per_epoch):
        state, m = step_fn(state, sharding.put_batch(next(iterator), mesh, config.batch_size))
        sums = m if sums is None else jax.tree.map(jnp.add, sums, m)
      return state, jax.tree.map(lambda x: x / steps_per_epoch, sums)
  else:
    raise ValueError(f"input_mode must be 'resident' or 'grain', got {config.input_mode!r}")

  for epoch in range(meta["epoch"] + 1, config.num_epochs + 1):
    state, train_metrics = next_epoch(state, epoch)
    train_metrics = jax.device_get(train_metrics)
    if not np.isfinite(train_metrics["loss"]):
      raise FloatingPointError(f"loss became {train_metrics['loss']} in epoch {epoch}; lower "
                               "the learning rate or check the data")
    scores = predict_split(predict_fn, state, val["image"], mesh, eval_batch)
    val_auc = metrics.per_class_auc(scores, val["targets"], val["known"])
    val_mean = float(np.nanmean(val_auc))
    is_best = val_mean > meta["best_val_auc"]
    step = epoch * steps_per_epoch
    meta = {"epoch": epoch, "best_val_auc": max(val_mean, meta["best_val_auc"]),
            "best_epoch": epoch if is_best else meta["best_epoch"],
            # Every process's own Grain position (each reads its own shard of the data).
            "iterators": (checkpointing.per_process(pipeline.iterator_state_to_json(iterator))
                          if config.input_mode == "grain" else None)}
    ckpts.save(epoch, state, meta, is_best=is_best)
    scalars = {"train/loss": train_metrics["loss"], "train/grad_norm": train_metrics["grad_norm"],
               "val/mean_auc": val_mean}
    writer.write(step, scalars)
    progress.report(step, epoch=epoch, loss=float(train_metrics["loss"]), val_auc=val_mean)

  results = _evaluate_best(ckpts, state, predict_fn, data_dir, mesh, eval_batch, label_space,
                           meta)
  ckpts.close()
  writer.write(total_steps, {"test/mean_auc": results["mean_test_auc"]})
  writer.close()
  _write_results(workdir, results)
  return results


def _evaluate_best(ckpts, state, predict_fn, data_dir, mesh, eval_batch, label_space, meta):
  best = ckpts.restore_best(checkpointing.abstract_like(state))
  best_state = state if best is None else best[0]
  test = arrayrecord_io.load_split_arrays(data_dir, "test", verify=False)
  scores = predict_split(predict_fn, best_state, test["image"], mesh, eval_batch)
  auc = metrics.per_class_auc(scores, test["targets"], test["known"])
  return {"label_space": list(label_space),
          "test_auc": {c: float(a) for c, a in zip(label_space, auc)},
          "mean_test_auc": float(np.nanmean(auc)),
          "best_epoch": int(meta["best_epoch"]), "best_val_auc": float(meta["best_val_auc"]),
          "num_test": int(test["image"].shape[0])}


def _write_results(workdir: str, results: dict) -> None:
  if jax.process_index() != 0:
    return
  path = os.path.join(workdir, "results.json")
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(results, f, indent=2)
  os.replace(tmp, path)
  table = metrics.format_auc_table(
      results["label_space"],
      {"test AUC %": np.array([results["test_auc"][c] for c in results["label_space"]])})
  print(f"\nBest epoch {results['best_epoch']} (validation mean AUC "
        f"{100 * results['best_val_auc']:.2f}); test set of {results['num_test']} images:\n"
        f"{table}\n", flush=True)
