"""Many independent runs of the same shapes as ONE vmapped, jitted program on resident data.

An experiment table is settings x seeds of small runs. Runs whose arrays have the same shapes and
whose training recipe is the same (only the seed and the data drawn differ) are stacked on a
leading "run" axis: parameters, optimiser states, keys, epoch orderings and (when they differ)
the data. The trainer's init, step and epoch loop (`trainer.py`: the same ones the single run of
`jobs/classify.py` uses) run under `vmap` over that axis; after each epoch the validation split
is scored, the host picks each run's best epoch on its own validation AUC and keeps those
parameters (a `where` on the device); the test split is scored once with each run's best
parameters. Best epoch as the single run: the mean validation AUC, strictly greater.
tests/classification/test_multirun.py checks the two agree.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from dassemble_jax import progress
from dassemble_jax.classification import assembly, metrics, prepare, trainer
from dassemble_jax.cli import ConfigError

_TRAIN_FIELDS = trainer.TRAIN_FIELDS


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
# The program of a group: the trainer's init, step and epoch, vmapped over the runs.

class Program:
  """init / epoch / predict for R stacked runs of one recipe and shape.

  data_axes: {field: 0 or None} of the training arrays, 0 where each run has its own (see
  `trainer.ResidentEpoch`).
  """

  def __init__(self, config, num_classes: int, in_channels: int, num_train: int,
               data_axes: dict | None = None):
    if config.model.get("arch", "resnet") != "resnet":
      # airbench's whitening filters come from each run's training images (trainer.init_from_data),
      # which the vmapped init here does not see: refuse rather than train with the identity.
      raise ConfigError(f"multi-run tables support model.arch='resnet' only, got "
                       f"{config.model.arch!r}; train other networks with dassemble_jax.main")
    self.config = config
    self.steps_per_epoch = num_train // config.batch_size
    if self.steps_per_epoch == 0:
      raise ConfigError(f"batch_size={config.batch_size} exceeds the {num_train} training "
                       "examples")
    self.total_steps = self.steps_per_epoch * config.num_epochs
    self.tx = trainer.build_optimizer(config, self.total_steps)
    train_def, eval_def = trainer.graph_defs(config, num_classes, in_channels)
    init = trainer.make_init(config, num_classes, in_channels, self.tx)
    self.init = jax.jit(jax.vmap(lambda seed: init(jax.random.key(seed))))
    step = trainer.make_train_step(config, train_def, self.tx, eval_def=eval_def)
    self.epoch = trainer.ResidentEpoch(
        config, step, self.steps_per_epoch, config.batch_size,
        data_axes=dict.fromkeys(_TRAIN_FIELDS) if data_axes is None else data_axes)
    self._predict_one = trainer.make_predict_fn(eval_def)
    self._predict: dict = {}

  def predict(self, params, images, axis=None):
    """Scores (runs, N, C) of images (N, ...) or, axis=0, (runs, N, ...); params: each run's
    {'params', 'batch_stats'}. In fixed chunks of eval_batch_size (lax.map: bounded memory)."""
    key = (axis, tuple(images.shape))
    if key not in self._predict:
      self._predict[key] = jax.jit(jax.vmap(self._chunked, in_axes=(0, axis)))
    return self._predict[key](params, images)

  def compile_predict(self, params, images, axis=None) -> None:
    """Compiles `predict` for these arguments (arrays or shapes) ahead of the first call."""
    fn = jax.jit(jax.vmap(self._chunked, in_axes=(0, axis)))
    self._predict[(axis, tuple(images.shape))] = fn.lower(params, images).compile()

  def _chunked(self, params, images):
    eb = self.config.eval_batch_size
    n = images.shape[0]
    padded = -(-n // eb) * eb
    images = jnp.concatenate([images, jnp.zeros((padded - n,) + images.shape[1:], images.dtype)])
    chunks = images.reshape((padded // eb, eb) + images.shape[1:])
    out = jax.lax.map(lambda x: self._predict_one(params, x), chunks)
    return out.reshape(padded, -1)[:n]


def _params(state):
  return {k: state[k] for k in ("params", "batch_stats")}


def _select(is_best, new, best):
  """Per run: new where is_best else best (leading axis = runs)."""
  def pick(a, b):
    m = is_best.reshape((-1,) + (1,) * (a.ndim - 1))
    return jnp.where(m, a, b)
  return jax.tree.map(pick, new, best)


# ------------------------------------------------------------------------------------------------
# Running a group.

_COMPILED: dict = {}


def _compiled(config, splits, seeds_arr, train_axes, val_axis, test_axis, data, val_images,
              test_images):
  """(program, select), compiled ahead of time for this recipe/shape/run count (cached)."""
  num_classes = splits["train"]["targets"].shape[-1]
  in_channels = splits["train"]["image"].shape[-1]
  mode = trainer.resident_epoch_mode(config)
  key = (_recipe_key(config), _shape_key(splits), len(seeds_arr), train_axes, val_axis,
         test_axis, mode)
  if key in _COMPILED:
    return _COMPILED[key]
  prog = Program(config, num_classes, in_channels, splits["train"]["image"].shape[0],
                 dict(train_axes))
  state_shape = jax.eval_shape(prog.init, seeds_arr)
  prog.init = prog.init.lower(seeds_arr).compile()
  prog.epoch.compile(state_shape, data, seeds_arr, jnp.int32(0))
  best_shape = _params(state_shape)
  for images, axis in ((val_images, val_axis), (test_images, test_axis)):
    prog.compile_predict(best_shape, images, axis)
  select = jax.jit(_select).lower(jax.ShapeDtypeStruct(seeds_arr.shape, bool), best_shape,
                                  best_shape).compile()
  _COMPILED[key] = (prog, select)
  return _COMPILED[key]


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
  prog, select = _compiled(
      config, splits, seeds_arr, train_axes_t, val_axis, test_axis, data, val_images,
      test_images)
  compile_s = time.perf_counter() - t0

  t0 = time.perf_counter()
  data = jax.device_put(data)
  val_images, test_images = jax.device_put(val_images), jax.device_put(test_images)
  state = prog.init(seeds_arr)
  best = jax.tree.map(jnp.copy, _params(state))
  n = len(runs)
  best_val = np.full(n, -1.0)
  best_epoch = np.zeros(n, int)
  history = []
  bar = progress.Progress(config.num_epochs, unit="epochs", items_per_unit=n * prog.steps_per_epoch
                          * config.batch_size, prefix=f"  [{runs[0].setting} x{n}] epoch")
  for ep in range(1, config.num_epochs + 1):
    state, m = prog.epoch(state, data, seeds_arr, jnp.int32(ep))
    val_scores = np.asarray(prog.predict(_params(state), val_images, val_axis))
    m = jax.device_get(m)
    if not np.all(np.isfinite(m["loss"])):
      raise FloatingPointError(f"loss became {m['loss']} in epoch {ep}; lower the learning rate")
    val_mean = np.array([
        np.nanmean(metrics.per_class_auc(val_scores[i], s["validation"]["targets"],
                                         s["validation"]["known"]))
        for i, s in enumerate(all_splits)])
    is_best = val_mean > best_val
    best_val = np.where(is_best, val_mean, best_val)
    best_epoch = np.where(is_best, ep, best_epoch)
    best = select(jnp.asarray(is_best), _params(state), best)
    history.append({"epoch": ep, "loss": m["loss"].tolist(), "val_mean_auc": val_mean.tolist()})
    if verbose:
      bar.report(ep, loss=float(np.mean(m["loss"])), val_auc=float(np.mean(val_mean)))
  bar.close()
  test_scores = np.asarray(prog.predict(best, test_images, test_axis))
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
                # Examples each source holds (a config's -1 means "all available").
                "source_sizes": {src["name"]: [int(np.sum(s[split]["source"] == j))
                                               for split in ("train", "validation")]
                                 for j, src in enumerate(r.config.data.sources)},
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
