"""Train the Universal Model on an assembly of partially labelled CT sources.

`train_and_evaluate(config, workdir)`: one model, trained on the sources of
`config.data.shard_dirs` (or on the phantom assembly converted into the workdir when empty),
evaluated on `config.data.test_dirs`. The steps:
  mesh over every device -> class-embedding table (once) -> replicated state from a jitted init
  -> Grain host batches (windows + bitmask labels) -> jitted, donated step: on-device crop and
  augmentation (with `config.synth.enabled`: synthetic liver tumors into the windows of
  healthy-liver sources first, synth/training.py), forward, masked BCE + Dice over the annotated
  (sample, class) pairs, clipped AdamW with warm-up + cosine -> Orbax checkpoints with the Grain
  iterator state (a rerun resumes exactly) -> every `eval_every` steps and at the end, mean DSC
  on the validation cases of the training sources; the best state is also saved as the best
  checkpoint -> TensorBoard + JSON lines -> sliding-window evaluation of the best state
  (evaluate.py).

The compiled init, step and predictor are cached per model/optimiser configuration, so the
job's single-source models (same shapes and budget) reuse the assembly model's compilation.
Files in the workdir: config.json and class_embeddings.npy (what `dassemble_jax.predict`
needs to rebuild the model), checkpoints/{latest,best}, metrics.jsonl (with val/mean_dsc),
tb/, eval.json.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from dassemble_jax import checkpointing
from dassemble_jax import metric_writer
from dassemble_jax import sharding
from dassemble_jax.ct import volume_augment as ct_augment
from dassemble_jax.ct import crop_pipeline as ct_pipeline
from dassemble_jax.ct import taxonomy
from dassemble_jax.models import text_encoder
from dassemble_jax.models.universal_head import UniversalModel
from dassemble_jax.segmentation import fused_heads
from dassemble_jax.segmentation import seg_losses
from dassemble_jax.synth import training as synth_training

State = dict[str, Any]  # {'step', 'params', 'batch_stats', 'opt_state'}
NUM_CLASSES = taxonomy.NUM_CLASSES
_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
EMBEDDINGS_FILE = "class_embeddings.npy"
TRAINED_CLASSES_FILE = "trained_classes.json"  # universal ids some training source labels


# ------------------------------------------------------------------------------------------------
# Class codes, model, optimiser.

def class_table(config, workdir: str) -> np.ndarray:
  """(32, D) float32 class-embedding table; saved as workdir/class_embeddings.npy.

  'text': a user's .npy (`model.embedding_table`) or MiniLM embeddings of the taxonomy's prompts
  (cached under workdir/text_embeddings). 'onehot'/'learned' ignore the table: a (32, 1) zero
  placeholder keeps one step signature for every ablation.
  """
  if config.model.class_code != "text":
    table = np.zeros((NUM_CLASSES, 1), np.float32)
  elif config.model.embedding_table:
    table = text_encoder.load_embedding_table(config.model.embedding_table,
                                              num_classes=NUM_CLASSES)
  else:
    try:
      table = text_encoder.embed_prompts(
          [c.prompt_name for c in taxonomy.CLASSES], template=taxonomy.PROMPT_TEMPLATE,
          cache_path=os.path.join(workdir, "text_embeddings"))
    except Exception as e:  # noqa: BLE001 - no weights (offline): say what to do instead
      raise RuntimeError(
          f"could not compute the MiniLM class table ({e}); pass "
          "--config.model.embedding_table=TABLE.npy or --config.model.class_code=onehot") from e
  if jax.process_index() == 0:
    text_encoder.save_embedding_table(os.path.join(workdir, EMBEDDINGS_FILE), table)
  return table


def build_model(config, embed_dim: int, *, rngs: nnx.Rngs) -> UniversalModel:
  m = config.model
  if m.backbone == "unet":
    kwargs = {"base_channels": int(m.base_channels), "norm": m.norm}
  else:
    kwargs = {"feature_size": int(m.feature_size)}
  return UniversalModel(m.backbone, NUM_CLASSES,
                        embed_dim if m.class_code == "text" else None,
                        class_code=m.class_code, head_impl=m.get("head_impl", "einsum"),
                        dtype=_DTYPES[config.compute_dtype], backbone_kwargs=kwargs, rngs=rngs)


def build_optimizer(config) -> optax.GradientTransformation:
  from dassemble_jax import optimizer  # pylint: disable=import-outside-toplevel
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
  dtype = _DTYPES[config.compute_dtype]
  synth_cfg = synth_training.synth_config(config) if synth_training.enabled(config) else None
  spacing = synth_training.spacing_of(config)
  fused = config.model.get("head_impl", "einsum") == "fused"

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


# ------------------------------------------------------------------------------------------------
# Fine-tuning: start from a trained run's parameters.

class InitFromError(ValueError):
  """`config.init_from` does not name a trained run whose model matches this config's."""


def _leaf_shapes(tree) -> dict[str, tuple]:
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {jax.tree_util.keystr(path): tuple(leaf.shape) for path, leaf in leaves}


def init_from_run(config, comp: Compiled, fresh: State, table: np.ndarray, run_dir: str,
                  workdir: str) -> tuple[State, int]:
  """`fresh` with the parameters and norm statistics of `run_dir`'s best checkpoint (its latest
  when it has none); the optimiser state and the step start afresh, so the fine-tuning run has
  its own warm-up and schedule. Returns (state, the step the run was saved at).

  Every parameter of the Universal Model is shared by all classes (the controller reads the
  class code), so a model trained without a class can learn it here from its text code alone.
  """
  from dassemble_jax import predict as predict_cli
  if os.path.abspath(run_dir) == os.path.abspath(workdir):
    raise InitFromError(f"init_from {run_dir} is this run's own folder; name the trained run "
                        "to start from (DIR/runs/<model>)")
  try:
    run = predict_cli.restore_run(run_dir, "best")
  except predict_cli.ModelDirError as e:
    raise InitFromError(f"init_from: {e}") from e
  for part in ("params", "batch_stats"):
    ours, theirs = _leaf_shapes(fresh[part]), _leaf_shapes(run.state[part])
    if ours != theirs:
      differ = sorted(k for k in ours.keys() | theirs.keys() if ours.get(k) != theirs.get(k))
      fields = {k: (run.config.model.get(k), config.model.get(k)) for k in
                ("backbone", "base_channels", "norm", "feature_size", "class_code")}
      if config.model.class_code == "text":
        fields["class-code width"] = (run.table.shape[1], table.shape[1])
      shown = ", ".join(f"{k}: {theirs.get(k)} there vs {ours.get(k)} here" for k in differ[:3])
      differing = {k: v for k, v in fields.items() if v[0] != v[1]}
      hint = ""
      if "class-code width" in differing:
        hint = (" (the run's class table: --config.model.embedding_table="
                f"{os.path.join(run_dir, EMBEDDINGS_FILE)})")
      raise InitFromError(
          f"init_from {run_dir}: its model does not match this config's ({len(differ)} "
          f"{part} differ: {shown}). Model fields there vs here: " +
          (", ".join(f"{k} {a} vs {b}" for k, (a, b) in differing.items()) or "none differ") +
          hint)
  params = run.state["params"]
  state = {"step": jnp.zeros_like(fresh["step"]), "params": params,
           "batch_stats": run.state["batch_stats"], "opt_state": comp.init_opt_state(params)}
  return state, int(run.meta["step"])


# ------------------------------------------------------------------------------------------------
# Data.

def make_iterator(config, shard_dirs, mesh):
  """This process's Grain iterator of host batches (infinite; checkpointable state)."""
  local_batch = sharding.check_global_batch(int(config.batch_size), mesh)
  crop = ct_pipeline.CropConfig(crop_size=(int(config.crop_size),) * 3,
                                jitter=int(config.data.jitter),
                                crops_per_record=int(config.data.crops_per_record))
  ds = ct_pipeline.make_ct_dataset([str(d) for d in shard_dirs], split="train",
                                   batch_size=local_batch, seed=int(config.seed), crop=crop,
                                   num_workers=int(config.data.num_workers))
  return iter(ds)


def _write_json(path: str, obj) -> None:
  if jax.process_index() != 0:
    return
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=1)
  os.replace(tmp, path)


# ------------------------------------------------------------------------------------------------
# The job of one model.

def train(config, workdir: str, *, stop_at_step: int | None = None) -> dict:
  """Trains (or resumes) one model in `workdir`; returns {'state', 'eval_state', 'compiled',
  'table', ...}: 'state' is the last state, 'eval_state' the best validated one (the last
  when there is no validation).

  `stop_at_step` stops early after checkpointing that step (a simulated preemption, for tests).
  """
  os.makedirs(workdir, exist_ok=True)
  shard_dirs = list(config.data.shard_dirs)
  if not shard_dirs:
    raise ValueError("config.data.shard_dirs is empty: name converted CT datasets, or run the "
                     "job (dassemble_jax.jobs.universal) which converts the phantom")
  mesh = sharding.make_mesh()
  sharding.check_global_batch(int(config.batch_size), mesh)
  _write_json(os.path.join(workdir, "config.json"), json.loads(config.to_json()))
  from dassemble_jax.segmentation import evaluate
  trained_ids = [int(i) + 1 for i in np.flatnonzero(evaluate.trained_classes(config))]
  _write_json(os.path.join(workdir, TRAINED_CLASSES_FILE), trained_ids)
  table = class_table(config, workdir)
  table_dev = sharding.put_replicated(table, mesh)
  comp = compiled_for(config, table.shape[1])
  eligible = (synth_training.eligible_sources(config, shard_dirs)
              if synth_training.enabled(config) else None)

  state = comp.init_state()
  iterator = make_iterator(config, shard_dirs, mesh)
  ckpts = checkpointing.Checkpoints(workdir)
  meta = {"step": 0, "iterators": None, "sources": ct_pipeline.source_names(shard_dirs),
          "best_score": None, "best_step": None}
  restored = ckpts.restore_latest(checkpointing.abstract_like(state))
  if restored is not None:
    # A run's own checkpoint always wins over `init_from`: a killed fine-tuning run resumes.
    state, meta = restored
    own = checkpointing.this_process(meta.get("iterators"))
    if own is not None:
      iterator.set_state(own)
    print(f"Resumed {workdir} at step {meta['step']}", flush=True)
  elif config.get("init_from"):
    state, from_step = init_from_run(config, comp, state, table, str(config.init_from),
                                     workdir)
    meta["init_from"] = {"dir": os.path.abspath(str(config.init_from)), "step": from_step}
    print(f"Initialised from {config.init_from} (step {from_step}); fine-tuning {workdir}",
          flush=True)
  validator = evaluate.Validator.for_config(config, comp, table, meta["sources"])
  best_score, best_step = meta.get("best_score"), meta.get("best_step")

  total = int(config.num_steps)
  end = total if stop_at_step is None else min(total, int(stop_at_step))
  eval_every = int(config.get("eval_every", 0) or 0)
  writer = metric_writer.MetricWriter(workdir)
  progress = metric_writer.Progress(total, int(meta["step"]), int(config.batch_size))
  last = {}
  start_time = time.perf_counter()
  for step in range(int(meta["step"]) + 1, end + 1):
    host = ct_augment.host_to_device_fields(next(iterator))
    if eligible is not None:
      host = synth_training.mark_eligible(host, eligible)
    state, step_metrics = comp.step(state, sharding.put_batch(host, mesh, int(config.batch_size)),
                                    table_dev)
    scalars = {}
    if step % int(config.log_every) == 0 or step == end:
      last = {k: float(v) for k, v in jax.device_get(step_metrics).items()}
      if not np.isfinite(last["loss"]):
        raise FloatingPointError(f"loss became {last['loss']} at step {step}; lower the "
                                 "learning rate or check the data")
      scalars.update({f"train/{k}": v for k, v in last.items()})
      progress.report(step, loss=last["loss"], dice=last["dice"])
    improved = False
    if validator is not None and eval_every > 0 and (step % eval_every == 0 or step == total):
      # Validation: mean DSC of the state after this step; a NaN score never becomes the best.
      score = validator.score(state)
      scalars["val/mean_dsc"] = score
      improved = bool(np.isfinite(score)) and (best_score is None or score > best_score)
      if improved:
        best_score, best_step = float(score), step
      print(f"  validation at step {step}: mean DSC {score:.4f} (best {best_score} at step "
            f"{best_step})", flush=True)
    if scalars:
      writer.write(step, scalars)
    if improved or step % int(config.checkpoint_every) == 0 or step == end:
      # Every process's own Grain position: each reads its own shard of the data.
      meta = {"step": step, "iterators": checkpointing.per_process(iterator.get_state()),
              "sources": meta["sources"], "init_from": meta.get("init_from"),
              "best_score": best_score, "best_step": best_step}
      ckpts.save(step, state, meta, is_best=improved)
  eval_state = state
  if best_step is not None:
    eval_state, _ = ckpts.restore_best(checkpointing.abstract_like(state))
  ckpts.close()
  writer.close()
  return {"state": state, "eval_state": eval_state, "compiled": comp, "table": table,
          "mesh": mesh, "step": int(jax.device_get(state["step"])), "last_metrics": last,
          "best_step": best_step, "best_score": best_score,
          "seconds": time.perf_counter() - start_time, "sources": meta["sources"]}


def train_and_evaluate(config, workdir: str, *, stop_at_step: int | None = None) -> dict:
  """Trains one model, then evaluates it on `config.data.test_dirs` (if any).

  With empty `config.data.shard_dirs`, the phantom sources are converted into workdir/data
  first. Returns a JSON-able summary plus, under 'masks', the held-out predictions
  ({case: (X, Y, Z, 32) bool}) for plots.
  """
  if not config.data.shard_dirs:
    from dassemble_jax.jobs import universal
    config = universal.with_phantom_data(config, workdir)
  trained = train(config, workdir, stop_at_step=stop_at_step)
  out = {"step": trained["step"], "sources": trained["sources"],
         "train_seconds": trained["seconds"], "last_train_metrics": trained["last_metrics"],
         "best_step": trained["best_step"], "best_val_mean_dsc": trained["best_score"]}
  if config.data.test_dirs and trained["step"] >= int(config.num_steps):
    from dassemble_jax.segmentation import evaluate
    results = evaluate.evaluate_state(config, trained, list(config.data.test_dirs))
    evaluate.write_results(workdir, results, title=os.path.basename(os.path.normpath(workdir)))
    out["eval"] = {k: v for k, v in results.items() if k != "masks"}
    out["masks"] = results["masks"]
  return out
