"""Train the Universal Model on an assembly of partially labelled CT sources.

`train_and_evaluate(config, workdir)`: one model, trained on the sources of
`config.data.shard_dirs` (or on the phantom assembly converted into the workdir when empty),
evaluated on `config.data.test_dirs`. The steps:
  mesh over every device -> class-embedding table (once) -> replicated state from a jitted init
  -> Grain host batches (windows + bitmask labels) -> the jitted, donated step of
  train_step.py (on-device crop and augmentation, synthetic tumors with `config.synth.enabled`,
  masked BCE + Dice over the annotated (sample, class) pairs, clipped AdamW) -> Orbax
  checkpoints with the Grain iterator state (a rerun resumes exactly) -> every `eval_every`
  steps and at the end, mean DSC on the validation cases of the training sources; the best state
  is also saved as the best checkpoint -> TensorBoard + JSON lines -> sliding-window evaluation
  of the best state (evaluate.py).

The run folder it writes is described, read and restored by trained_run.py.
"""

from __future__ import annotations

import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from dassemble_jax import checkpointing, metric_writer, progress, sharding
from dassemble_jax.ct import crop_pipeline as ct_pipeline
from dassemble_jax.ct import taxonomy
from dassemble_jax.ct import volume_augment as ct_augment
from dassemble_jax.models import text_encoder
from dassemble_jax.segmentation import assembly_data, evaluate, reports, train_step, trained_run
from dassemble_jax.synth import training as synth_training

# ------------------------------------------------------------------------------------------------
# Class codes.

def class_table(config, workdir: str) -> np.ndarray:
  """(32, D) float32 class-embedding table; saved as workdir/class_embeddings.npy.

  'text': a user's .npy (`model.embedding_table`) or MiniLM embeddings of the taxonomy's prompts
  (cached under workdir/text_embeddings). 'onehot'/'learned' ignore the table: a (32, 1) zero
  placeholder keeps one step signature for every ablation.
  """
  if config.model.class_code != "text":
    table = np.zeros((taxonomy.NUM_CLASSES, 1), np.float32)
  elif config.model.embedding_table:
    table = text_encoder.load_embedding_table(config.model.embedding_table,
                                              num_classes=taxonomy.NUM_CLASSES)
  else:
    try:
      table = text_encoder.embed_prompts(
          [c.prompt_name for c in taxonomy.CLASSES], template=taxonomy.PROMPT_TEMPLATE,
          cache_path=os.path.join(workdir, "text_embeddings"))
    except Exception as e:
      raise RuntimeError(
          f"could not compute the MiniLM class table ({e}); pass "
          "--config.model.embedding_table=TABLE.npy or --config.model.class_code=onehot") from e
  trained_run.write_class_table(workdir, table)
  return table


# ------------------------------------------------------------------------------------------------
# Fine-tuning: start from a trained run's parameters.

class InitFromError(ValueError):
  """`config.init_from` does not name a trained run whose model matches this config's."""


def _leaf_shapes(tree) -> dict[str, tuple]:
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {jax.tree_util.keystr(path): tuple(leaf.shape) for path, leaf in leaves}


def init_from_run(config, comp: train_step.Compiled, fresh: train_step.State, table: np.ndarray,
                  run_dir: str, workdir: str) -> tuple[train_step.State, int]:
  """`fresh` with the parameters and norm statistics of `run_dir`'s best checkpoint (its latest
  when it has none); the optimiser state and the step start afresh, so the fine-tuning run has
  its own warm-up and schedule. Returns (state, the step the run was saved at).

  Every parameter of the Universal Model is shared by all classes (the controller reads the
  class code), so a model trained without a class can learn it here from its text code alone.
  """
  if os.path.abspath(run_dir) == os.path.abspath(workdir):
    raise InitFromError(f"init_from {run_dir} is this run's own folder; name the trained run "
                        "to start from (DIR/runs/<model>)")
  try:
    run = trained_run.restore_run(run_dir, "best")
  except trained_run.ModelDirError as e:
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
                f"{os.path.join(run_dir, trained_run.EMBEDDINGS_FILE)})")
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
  trained_run.write_run_files(workdir, config, trained_run.trained_classes(config))
  table = class_table(config, workdir)
  table_dev = sharding.put_replicated(table, mesh)
  comp = train_step.compiled_for(config, table.shape[1])
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
  writer = metric_writer.MetricWriter(workdir, resume_step=int(meta["step"]))
  bar = progress.Progress(total, initial=int(meta["step"]), unit="steps",
                          items_per_unit=int(config.batch_size), prefix="step")
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
      bar.report(step, loss=last["loss"], dice=last["dice"])
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
  bar.close()
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
    config = assembly_data.with_phantom_data(config, workdir)
  trained = train(config, workdir, stop_at_step=stop_at_step)
  out = {"step": trained["step"], "sources": trained["sources"],
         "train_seconds": trained["seconds"], "last_train_metrics": trained["last_metrics"],
         "best_step": trained["best_step"], "best_val_mean_dsc": trained["best_score"]}
  if config.data.test_dirs and trained["step"] >= int(config.num_steps):
    results = evaluate.evaluate_state(config, trained, list(config.data.test_dirs))
    reports.write_results(workdir, results, title=os.path.basename(os.path.normpath(workdir)))
    out["eval"] = {k: v for k, v in results.items() if k != "masks"}
    out["masks"] = results["masks"]
  return out
