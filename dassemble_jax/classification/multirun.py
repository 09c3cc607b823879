"""Many independent runs of the same shapes as ONE vmapped, jitted program on resident data.

An experiment table is settings x seeds of small runs. Runs whose arrays have the same shapes and
whose training recipe is the same (only the seed and the data drawn differ) are stacked on a
leading "run" axis: parameters, optimiser states, keys, epoch orderings and (when they differ)
the data. One compiled call trains every run for one epoch (the steps in `lax.scan`, the runs in
`vmap`) and scores the validation split; the host picks each run's best epoch on its own
validation AUC and keeps those parameters (a `where` on the device); the test split is scored
once with each run's best parameters.

Per run the arithmetic is that of `trainer.train_and_evaluate` with the same config: init from
key(seed), step keys fold_in(key(seed + 1), step), epoch orders permutation(fold_in(key(seed +
2), epoch)), the same model, optimiser, augmentation and masked loss, best epoch by the mean
validation AUC (strictly greater). tests/classification/test_multirun.py checks the two agree.
"""

from __future__ import annotations

import dataclasses
import json
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from dassemble_jax.classification import augment
from dassemble_jax.classification import losses
from dassemble_jax.classification import metrics
from dassemble_jax.classification import semisup
from dassemble_jax.classification import trainer
from dassemble_jax.classification import assembly
from dassemble_jax.classification import prepare

_TRAIN_FIELDS = ("image", "targets", "known")


@dataclasses.dataclass
class Run:
  """One run of a table: the column (setting) it belongs to and its full config."""
  setting: str
  config: Any  # ml_collections.ConfigDict; config.seed is the run's seed


# ------------------------------------------------------------------------------------------------
# Data: raw datasets loaded once per process, assembled splits once per data config.

_RAW: dict = {}
_SPLITS: dict = {}


def load_splits(config) -> dict[str, dict[str, np.ndarray]]:
  """The assembled train/validation/test arrays of a config (what `prepare` would store).

  `config.test_subset` (optional, > 0): score a fixed random subset of that many test images
  (permutation with seed 1234, the same for every run and setting) to save time on a CPU.
  """
  d = config.data
  subset = int(config.get("test_subset", 0) or 0)
  fp = prepare._data_fingerprint(config) + f"/{subset}"  # pylint: disable=protected-access
  if fp in _SPLITS:
    return _SPLITS[fp]
  raw_key = (d.dataset, d.source, d.path)
  if raw_key not in _RAW:
    _RAW[raw_key] = prepare.load_raw(d)
  raw, raw_class_names = _RAW[raw_key]
  label_space = [str(c) for c in d.label_space]
  class_of_label = {i: n for i, n in enumerate(raw_class_names) if n in label_space}
  _SPLITS[fp] = assembly.build_splits(
      raw, label_space, assembly.source_specs(d.sources), class_of_label=class_of_label,
      test_labels=[int(x) for x in d.test_labels], exclusive=bool(d.exclusive),
      data_seed=int(d.seed))
  test = _SPLITS[fp]["test"]
  if 0 < subset < len(test["label"]):
    keep = np.sort(np.random.default_rng(1234).permutation(len(test["label"]))[:subset])
    _SPLITS[fp]["test"] = {k: v[keep] for k, v in test.items()}
  return _SPLITS[fp]


def clear_cache() -> None:
  _RAW.clear()
  _SPLITS.clear()


def _recipe_key(config) -> str:
  """What must be equal for runs to share a program: everything but the seeds and the data."""
  d = config.to_dict()
  d.pop("seed")
  data = d.pop("data")
  return json.dumps(d, sort_keys=True, default=str) + str(data.get("dataset"))


def _shape_key(splits) -> tuple:
  return tuple((s, k, splits[s][k].shape) for s in ("train", "validation", "test")
               for k in _TRAIN_FIELDS)


def group_runs(runs: Sequence[Run]) -> list[list[int]]:
  """Indices of runs that can share one vmapped program (same recipe and array shapes)."""
  groups: dict = {}
  for i, r in enumerate(runs):
    key = (_recipe_key(r.config), _shape_key(load_splits(r.config)))
    groups.setdefault(key, []).append(i)
  return list(groups.values())


def _stack(arrays: list[np.ndarray]):
  """(stacked array, 0) when the runs' arrays differ, (the one array, None) when all equal."""
  if all(a is arrays[0] or np.array_equal(a, arrays[0]) for a in arrays[1:]):
    return arrays[0], None
  return np.stack(arrays), 0


# ------------------------------------------------------------------------------------------------
# The per-run program (vmapped by `Program`).

def _semisup_cfg(config):
  cfg = config.get("semisup") if hasattr(config, "get") else None
  return cfg if cfg is not None and cfg.enabled else None


class Program:
  """Compiled init / epoch / select / predict functions for one recipe and shape."""

  def __init__(self, config, num_classes: int, in_channels: int, num_train: int):
    if config.model.get("arch", "resnet") != "resnet":
      # airbench's whitening filters come from each run's training images (trainer.init_from_data),
      # which the vmapped init here does not see: refuse rather than train with the identity.
      raise ValueError(f"multi-run tables support model.arch='resnet' only, got "
                       f"{config.model.arch!r}; train other networks with dassemble_jax.main")
    self.config = config
    self.steps_per_epoch = num_train // config.batch_size
    if self.steps_per_epoch == 0:
      raise ValueError(f"batch_size={config.batch_size} exceeds the {num_train} training "
                       "examples")
    self.total_steps = self.steps_per_epoch * config.num_epochs
    self.tx = trainer.build_optimizer(config, self.total_steps)
    self.ssl = _semisup_cfg(config)
    abstract = nnx.eval_shape(lambda: trainer.build_model(config, num_classes, in_channels,
                                                        rngs=nnx.Rngs(0)))
    self.train_def = nnx.graphdef(abstract)
    abstract.eval()
    self.eval_def = nnx.graphdef(abstract)
    self.num_classes, self.in_channels = num_classes, in_channels

  # --- one run ---
  def init(self, seed):
    model = trainer.build_model(self.config, self.num_classes, self.in_channels,
                              rngs=nnx.Rngs(jax.random.key(seed)))
    _, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    state = {"step": jnp.zeros((), jnp.int32), "params": params, "batch_stats": batch_stats,
             "opt_state": self.tx.init(params)}
    if self.ssl is not None and self.ssl.teacher == "ema":
      state["teacher"] = jax.tree.map(jnp.copy, params)
    return state

  def _loss(self, params, batch_stats, teacher, batch, key, step):
    config = self.config
    batch_stats = jax.tree.map(lambda x: x, batch_stats)  # fresh Variables (BatchNorm mutates)
    model = nnx.merge(self.train_def, params, batch_stats)
    if self.ssl is None:
      images = augment.apply(config.augment, key, batch["image"])
      logits = model(images.astype(jnp.float32) / 255.0)
      loss = losses.masked_bce(logits, batch["targets"], batch["known"])
      return loss, (nnx.state(model, nnx.BatchStat), {"sup": loss})
    cfg = self.ssl
    weak, strong = semisup.views(cfg, key, batch["image"],
                                 flip=config.augment == "flip_translate")
    b = weak.shape[0]
    logits = model(jnp.concatenate([weak, strong]))  # one forward for both views: (2B, C)
    z_weak, z_strong = logits[:b], logits[b:]
    sup = losses.masked_bce(z_weak, batch["targets"], batch["known"])
    p_target = None
    if teacher is not None:
      t_model = nnx.merge(self.eval_def, teacher, jax.lax.stop_gradient(batch_stats))
      p_target = jax.lax.stop_gradient(jax.nn.sigmoid(t_model(weak)))
    extra = semisup.semisup_losses(jax.nn.sigmoid(z_weak), jax.nn.sigmoid(z_strong),
                                   batch["known"], tau=cfg.tau, temperature=cfg.temperature,
                                   stop_gradient=cfg.stop_gradient, p_target=p_target)
    w = semisup.rampup(step, cfg.rampup_steps)
    loss = sup + w * (cfg.pseudo_weight * extra["pseudo"]
                      + cfg.consistency_weight * extra["consistency"])
    return loss, (nnx.state(model, nnx.BatchStat), {"sup": sup, **extra})

  def step(self, state, batch, seed):
    key = jax.random.fold_in(jax.random.key(seed + 1), state["step"])
    teacher = state.get("teacher")
    (loss, (batch_stats, parts)), grads = jax.value_and_grad(self._loss, has_aux=True)(
        state["params"], state["batch_stats"], teacher, batch, key, state["step"])
    updates, opt_state = self.tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    new = {"step": state["step"] + 1, "params": params, "batch_stats": batch_stats,
           "opt_state": opt_state}
    if teacher is not None:
      new["teacher"] = semisup.ema_update(teacher, params, self.ssl.ema_decay)
    return new, {"loss": loss, "grad_norm": optax.tree.norm(grads), **parts}

  def epoch(self, state, train_data, val_images, seed, epoch):
    """Trains one epoch (steps in lax.scan) and scores the validation images."""
    n = train_data["image"].shape[0]
    bs = self.config.batch_size
    perm = jax.random.permutation(jax.random.fold_in(jax.random.key(seed + 2), epoch), n)
    perm = perm[: self.steps_per_epoch * bs].reshape(self.steps_per_epoch, bs)

    def body(state, idx):
      return self.step(state, {k: train_data[k][idx] for k in _TRAIN_FIELDS}, seed)

    state, per_step = jax.lax.scan(body, state, perm)
    return state, jax.tree.map(jnp.mean, per_step), self.predict(state, val_images)

  def predict(self, state, images):
    """Sigmoid scores (N, C) in fixed chunks of eval_batch_size (lax.map: bounded memory)."""
    eb = self.config.eval_batch_size
    n = images.shape[0]
    padded = -(-n // eb) * eb
    images = jnp.concatenate([images, jnp.zeros((padded - n,) + images.shape[1:], images.dtype)])
    model = nnx.merge(self.eval_def, state["params"], state["batch_stats"])
    chunks = images.reshape((padded // eb, eb) + images.shape[1:])
    out = jax.lax.map(lambda x: jax.nn.sigmoid(model(x.astype(jnp.float32) / 255.0)), chunks)
    return out.reshape(padded, -1)[:n]


def _select(is_best, new, best):
  """Per run: new where is_best else best (leading axis = runs)."""
  def pick(a, b):
    m = is_best.reshape((-1,) + (1,) * (a.ndim - 1))
    return jnp.where(m, a, b)
  return jax.tree.map(pick, new, best)


# ------------------------------------------------------------------------------------------------
# Running a group.

_COMPILED: dict = {}


def _epoch_mode(config) -> str:
  """'scan' (accelerators) or 'loop' (CPU: XLA:CPU runs convolutions inside a while loop ~10x
  slower than the same step dispatched from Python; see trainer.resident_epoch_mode)."""
  mode = config.get("epoch_mode", "auto")
  if mode == "auto":
    mode = "loop" if jax.default_backend() == "cpu" else "scan"
  if mode not in ("scan", "loop"):
    raise ValueError(f"epoch_mode must be 'auto', 'scan' or 'loop', got {mode!r}")
  return mode


def _compiled(config, splits, seeds_arr, train_axes, val_axis, test_axis, data, val_images,
              test_images):
  """AOT-compiled (init, epoch, select, predict) for this recipe/shape/run count (cached)."""
  num_classes = splits["train"]["targets"].shape[-1]
  in_channels = splits["train"]["image"].shape[-1]
  mode = _epoch_mode(config)
  key = (_recipe_key(config), _shape_key(splits), len(seeds_arr), train_axes, val_axis,
         test_axis, mode)
  if key in _COMPILED:
    return _COMPILED[key]
  prog = Program(config, num_classes, in_channels, splits["train"]["image"].shape[0])
  init = jax.jit(jax.vmap(prog.init)).lower(seeds_arr).compile()
  state_shape = jax.eval_shape(jax.vmap(prog.init), seeds_arr)
  train_axes = dict(train_axes)
  if mode == "scan":
    epoch = jax.jit(jax.vmap(prog.epoch, in_axes=(0, train_axes, val_axis, 0, None)),
                    donate_argnums=0).lower(state_shape, data, val_images, seeds_arr,
                                            jnp.int32(0)).compile()
  else:
    epoch = _loop_epoch(prog, state_shape, data, train_axes, val_images, val_axis, seeds_arr)
  best_shape = {k: state_shape[k] for k in ("params", "batch_stats")}
  select = jax.jit(_select).lower(jax.ShapeDtypeStruct(seeds_arr.shape, bool), best_shape,
                                  best_shape).compile()
  predict = jax.jit(jax.vmap(prog.predict, in_axes=(0, test_axis))).lower(
      best_shape, test_images).compile()
  _COMPILED[key] = (prog, init, epoch, select, predict)
  return _COMPILED[key]


def _loop_epoch(prog, state_shape, data, train_axes, val_images, val_axis, seeds_arr):
  """The epoch of `Program.epoch` as a Python loop over one compiled, vmapped step."""
  n = data["image"].shape[1 if train_axes["image"] == 0 else 0]
  bs, steps = prog.config.batch_size, prog.steps_per_epoch

  def order(seed, epoch):  # the permutation Program.epoch draws
    perm = jax.random.permutation(jax.random.fold_in(jax.random.key(seed + 2), epoch), n)
    return perm[: steps * bs].reshape(steps, bs)

  def one_step(state, data, idx, seed):
    return prog.step(state, {k: data[k][idx] for k in _TRAIN_FIELDS}, seed)

  order_fn = jax.jit(jax.vmap(order, in_axes=(0, None))).lower(seeds_arr, jnp.int32(0)).compile()
  idx_shape = jax.ShapeDtypeStruct((len(seeds_arr), bs), jnp.int32)
  step_fn = jax.jit(jax.vmap(one_step, in_axes=(0, train_axes, 0, 0)), donate_argnums=0).lower(
      state_shape, data, idx_shape, seeds_arr).compile()
  val_fn = jax.jit(jax.vmap(prog.predict, in_axes=(0, val_axis))).lower(
      {k: state_shape[k] for k in ("params", "batch_stats")}, val_images).compile()

  def epoch(state, data, val_images, seeds, ep):
    idx = order_fn(seeds, ep)  # (runs, steps, batch)
    sums = None
    for i in range(steps):
      state, m = step_fn(state, data, idx[:, i], seeds)
      sums = m if sums is None else jax.tree.map(jnp.add, sums, m)
    scores = val_fn({k: state[k] for k in ("params", "batch_stats")}, val_images)
    return state, jax.tree.map(lambda x: x / steps, sums), scores

  return epoch


def run_group(runs: Sequence[Run], *, verbose: bool = True) -> list[dict]:
  """Trains `runs` (same recipe and shapes) as one vmapped program; one result per run."""
  configs = [r.config for r in runs]
  all_splits = [load_splits(c) for c in configs]
  config = configs[0]
  splits = all_splits[0]
  seeds_arr = jnp.asarray([int(c.seed) for c in configs], jnp.int32)
  data, train_axes = {}, {}
  for k in _TRAIN_FIELDS:
    data[k], train_axes[k] = _stack([s["train"][k] for s in all_splits])
  val_images, val_axis = _stack([s["validation"]["image"] for s in all_splits])
  test_images, test_axis = _stack([s["test"]["image"] for s in all_splits])
  train_axes_t = tuple(sorted(train_axes.items()))

  t0 = time.perf_counter()
  prog, init, epoch_fn, select, predict = _compiled(
      config, splits, seeds_arr, train_axes_t, val_axis, test_axis, data, val_images,
      test_images)
  compile_s = time.perf_counter() - t0

  t0 = time.perf_counter()
  data = jax.device_put(data)
  val_images, test_images = jax.device_put(val_images), jax.device_put(test_images)
  state = init(seeds_arr)
  best = jax.tree.map(jnp.copy, {k: state[k] for k in ("params", "batch_stats")})
  n = len(runs)
  best_val = np.full(n, -1.0)
  best_epoch = np.zeros(n, int)
  history = []
  for ep in range(1, config.num_epochs + 1):
    state, m, val_scores = epoch_fn(state, data, val_images, seeds_arr, jnp.int32(ep))
    val_scores, m = np.asarray(val_scores), jax.device_get(m)
    if not np.all(np.isfinite(m["loss"])):
      raise FloatingPointError(f"loss became {m['loss']} in epoch {ep}; lower the learning rate")
    val_mean = np.array([
        np.nanmean(metrics.per_class_auc(val_scores[i], s["validation"]["targets"],
                                         s["validation"]["known"]))
        for i, s in enumerate(all_splits)])
    is_best = val_mean > best_val
    best_val = np.where(is_best, val_mean, best_val)
    best_epoch = np.where(is_best, ep, best_epoch)
    best = select(jnp.asarray(is_best), {k: state[k] for k in ("params", "batch_stats")}, best)
    history.append({"epoch": ep, "loss": m["loss"].tolist(), "val_mean_auc": val_mean.tolist()})
    if verbose:
      print(f"  [{runs[0].setting} x{n}] epoch {ep}/{config.num_epochs} loss "
            f"{np.mean(m['loss']):.4f} val AUC {100 * np.mean(val_mean):.2f}", flush=True)
  test_scores = np.asarray(predict(best, test_images))
  train_s = time.perf_counter() - t0
  images_trained = n * prog.total_steps * config.batch_size
  out = []
  for i, (r, s) in enumerate(zip(runs, all_splits)):
    auc = metrics.per_class_auc(test_scores[i], s["test"]["targets"], s["test"]["known"])
    label_space = [str(c) for c in r.config.data.label_space]
    out.append({"setting": r.setting, "seed": int(r.config.seed), "label_space": label_space,
                "test_auc": {c: float(a) for c, a in zip(label_space, auc)},
                "mean_test_auc": float(np.nanmean(auc)), "best_epoch": int(best_epoch[i]),
                "best_val_auc": float(best_val[i]), "num_test": int(s["test"]["image"].shape[0]),
                "group_size": n, "compile_s": compile_s, "group_train_s": train_s,
                "group_images_per_s": images_trained / train_s,
                "history": [{"epoch": h["epoch"], "loss": h["loss"][i],
                             "val_mean_auc": h["val_mean_auc"][i]} for h in history]})
  return out


# Widest ResNet stage up to which stacking runs with vmap pays on an accelerator. Measured on an
# H100 (benchmarks/multirun.md): widths (8, 16, 32) ran 1.68x faster vmapped (8 runs), widths
# (64, 128, 256) 0.46x (5 runs): wide grouped convolutions are slow in cuDNN too, and one run of
# that width already keeps the GPU busy.
VMAP_MAX_WIDTH = 32


def vmap_runs_default(config=None) -> bool:
  """Whether to stack independent runs of `config`'s model with vmap.

  On CPU never: vmap over parameters turns each convolution into a grouped convolution, which
  XLA:CPU runs ~4-5x slower than R separate ones (benchmarks/multirun.md). On GPU/TPU when the
  model is narrow (widest stage <= VMAP_MAX_WIDTH), where one small run cannot fill the device.
  """
  if jax.default_backend() == "cpu":
    return False
  widths = tuple(config.model.widths) if config is not None else ()
  return not widths or max(widths) <= VMAP_MAX_WIDTH


def run_all(runs: Sequence[Run], *, verbose: bool = True, max_group: int | None = None,
            vmap_runs: bool | None = None) -> list[dict]:
  """Groups `runs` by recipe and shapes and runs each group as one program; input order kept.

  vmap_runs=False runs each member of a group alone, reusing the group's one compiled program;
  None decides per group with `vmap_runs_default`.
  """
  results: list = [None] * len(runs)
  for idx in group_runs(runs):
    stack = vmap_runs_default(runs[idx[0]].config) if vmap_runs is None else vmap_runs
    if not stack:
      chunks = [[i] for i in idx]
    elif max_group:
      chunks = [idx[i:i + max_group] for i in range(0, len(idx), max_group)]
    else:
      chunks = [idx]
    if verbose:
      print(f"group of {len(idx)} runs ({'vmapped' if stack else 'one at a time'}): "
            f"{sorted({runs[i].setting for i in idx})}", flush=True)
    for chunk in chunks:
      for i, res in zip(chunk, run_group([runs[i] for i in chunk], verbose=verbose)):
        results[i] = res
  return results


# ------------------------------------------------------------------------------------------------
# Summaries.

def summarize(results: Sequence[dict]) -> dict[str, dict[str, dict]]:
  """{setting: {class: {'mean', 'std', 'n', 'values'}}} of test AUC over the seeds (std: ddof=1)."""
  table: dict = {}
  for r in results:
    for c, a in r["test_auc"].items():
      table.setdefault(r["setting"], {}).setdefault(c, []).append(a)
  out = {}
  for setting, per_class in table.items():
    out[setting] = {}
    for c, vals in per_class.items():
      v = np.asarray(vals, np.float64)
      out[setting][c] = {"mean": float(np.nanmean(v)),
                         "std": float(np.nanstd(v, ddof=1)) if v.size > 1 else 0.0,
                         "n": int(v.size), "values": v.tolist()}
  return out
