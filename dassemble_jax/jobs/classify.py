"""The classification job: train and evaluate one label-assembled multi-label classifier.

  python -m dassemble_jax.main --config=configs/mnist_odd_even.py:D0+D1 --workdir=/tmp/oe

`train_and_evaluate(config, workdir)` converts the data (once), builds a mesh over every device
of every process, initialises a replicated state, trains with the trainer's step and epoch loop
(the dataset resident on the device, or streamed by Grain), picks the best epoch on the
validation split and reports per-class ROC AUC on the test split (results.json). Checkpoints
after every epoch (with the Grain position); a rerun resumes.
"""

from __future__ import annotations

import itertools
import os

import jax
import numpy as np

from dassemble_jax import atomic, checkpointing, metric_writer, sharding
from dassemble_jax import progress as progress_lib
from dassemble_jax.classification import metrics, prepare, trainer
from dassemble_jax.data import arrayrecord_io


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

  tx = trainer.build_optimizer(config, total_steps)
  state, train_def, eval_def = trainer.init_state(config, num_classes, in_channels, tx, mesh)
  if config.model.get("arch", "resnet") == "airbench":
    first = itertools.islice(arrayrecord_io.read_records(data_dir, "train", verify=False),
                             trainer.WHITEN_IMAGES)
    state = trainer.init_from_data(config, state, np.stack([r["image"] for r in first]))
  train_step = trainer.make_train_step(config, train_def, tx, mesh, eval_def=eval_def)
  predict_fn = jax.jit(trainer.make_predict_fn(eval_def))
  val = arrayrecord_io.load_split_arrays(data_dir, "validation", verify=False)

  ckpts = checkpointing.Checkpoints(workdir)
  meta = {"epoch": 0, "best_val_auc": -1.0, "best_epoch": 0, "iterators": None}
  restored = ckpts.restore_latest(checkpointing.abstract_like(state))
  if restored is not None:
    state, meta = restored
    print(f"Resumed from {workdir}/checkpoints/latest at epoch {meta['epoch']}", flush=True)

  writer = metric_writer.MetricWriter(workdir, resume_step=meta["epoch"] * steps_per_epoch)
  progress = progress_lib.Progress(total_steps, initial=meta["epoch"] * steps_per_epoch,
                                   unit="steps", items_per_unit=config.batch_size, prefix="step")
  next_epoch, iterator_state = _epoch_source(config, data_dir, mesh, train_step,
                                             steps_per_epoch, meta)

  for epoch in range(meta["epoch"] + 1, config.num_epochs + 1):
    state, train_metrics = next_epoch(state, epoch)
    train_metrics = jax.device_get(train_metrics)
    if not np.isfinite(train_metrics["loss"]):
      raise FloatingPointError(f"loss became {train_metrics['loss']} in epoch {epoch}; lower "
                               "the learning rate or check the data")
    scores = trainer.predict_split(predict_fn, state, val["image"], mesh, eval_batch)
    val_auc = metrics.per_class_auc(scores, val["targets"], val["known"])
    val_mean = float(np.nanmean(val_auc))
    is_best = val_mean > meta["best_val_auc"]
    step = epoch * steps_per_epoch
    meta = {"epoch": epoch, "best_val_auc": max(val_mean, meta["best_val_auc"]),
            "best_epoch": epoch if is_best else meta["best_epoch"],
            "iterators": iterator_state()}
    ckpts.save(epoch, state, meta, is_best=is_best)
    # train/loss, train/grad_norm (+ train/sup, train/pseudo, train/consistency semi-supervised).
    scalars = {f"train/{k}": v for k, v in train_metrics.items()}
    writer.write(step, {**scalars, "val/mean_auc": val_mean})
    progress.report(step, epoch=epoch, loss=float(train_metrics["loss"]), val_auc=val_mean)
  progress.close()

  results = _evaluate_best(ckpts, state, predict_fn, data_dir, mesh, eval_batch, label_space,
                           meta)
  ckpts.close()
  writer.write(total_steps, {"test/mean_auc": results["mean_test_auc"]})
  writer.close()
  _write_results(workdir, results)
  return results


def _epoch_source(config, data_dir, mesh, train_step, steps_per_epoch, meta):
  """(next_epoch(state, epoch) -> (state, metrics), iterator_state() -> checkpoint metadata)."""
  if config.input_mode == "resident":
    train = arrayrecord_io.load_split_arrays(data_dir, "train", verify=False)
    resident = sharding.put_replicated({k: train[k] for k in trainer.TRAIN_FIELDS}, mesh)
    run_epoch = trainer.ResidentEpoch(config, train_step, steps_per_epoch, config.batch_size)
    return (lambda state, epoch: run_epoch(state, resident, config.seed, epoch)), lambda: None
  if config.input_mode == "grain":
    from dassemble_jax.data import pipeline  # pylint: disable=import-outside-toplevel
    loader = pipeline.make_loader(data_dir, "train", global_batch_size=config.batch_size,
                                  seed=config.seed, shuffle=True, num_epochs=None,
                                  transforms=[pipeline.SelectFields(trainer.TRAIN_FIELDS)],
                                  worker_count=config.grain_workers)
    iterator = iter(loader)
    own = checkpointing.this_process(meta.get("iterators"))
    if own:
      pipeline.restore_iterator_state(iterator, own)
    next_batch = lambda: sharding.put_batch(next(iterator), mesh, config.batch_size)
    # Every process's own Grain position (each reads its own shard of the data).
    positions = lambda: checkpointing.per_process(pipeline.iterator_state_to_json(iterator))
    return trainer.stream_epoch(train_step, steps_per_epoch, next_batch, config.seed), positions
  raise ValueError(f"input_mode must be 'resident' or 'grain', got {config.input_mode!r}")


def _evaluate_best(ckpts, state, predict_fn, data_dir, mesh, eval_batch, label_space, meta):
  best = ckpts.restore_best(checkpointing.abstract_like(state))
  best_state = state if best is None else best[0]
  test = arrayrecord_io.load_split_arrays(data_dir, "test", verify=False)
  scores = trainer.predict_split(predict_fn, best_state, test["image"], mesh, eval_batch)
  auc = metrics.per_class_auc(scores, test["targets"], test["known"])
  results = {"label_space": list(label_space),
             "test_auc": {c: float(a) for c, a in zip(label_space, auc)},
             "mean_test_auc": float(np.nanmean(auc)),
             "best_epoch": int(meta["best_epoch"]), "best_val_auc": float(meta["best_val_auc"]),
             "num_test": int(test["image"].shape[0])}
  manifest = arrayrecord_io.read_manifest(data_dir)
  if manifest.get("dataset") == "chestxray":
    # Each source's test images carry its own classes only: AUC per source, NaN (skipped) for
    # the classes it lacks. JSON has no NaN: those classes are left out.
    names = [s["name"] for s in manifest["sources"]]
    by_source = metrics.per_source_auc(scores, test["targets"], test["known"], test["source"],
                                       len(names))
    results["test_auc_by_source"] = {
        n: {c: float(a) for c, a in zip(label_space, row) if np.isfinite(a)}
        for n, row in zip(names, by_source)}
  return results


def _write_results(workdir: str, results: dict) -> None:
  if jax.process_index() != 0:
    return
  atomic.write_json(os.path.join(workdir, "results.json"), results, indent=2)
  table = metrics.format_auc_table(
      results["label_space"],
      {"test AUC %": np.array([results["test_auc"][c] for c in results["label_space"]])})
  print(f"\nBest epoch {results['best_epoch']} (validation mean AUC "
        f"{100 * results['best_val_auc']:.2f}); test set of {results['num_test']} images:\n"
        f"{table}\n", flush=True)
