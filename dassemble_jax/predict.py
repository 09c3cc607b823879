"""Segment CT scans with a trained Universal Model: NIfTI in, label-map NIfTI out.

  python -m dassemble_jax.predict --workdir=DIR/runs/assembly --input=CT.nii.gz --output=OUT
  python -m dassemble_jax.predict --workdir=DIR/runs/assembly --input=FOLDER --output=OUT \
      --per_class

`--workdir` is a model's training folder (config.json, class_embeddings.npy,
trained_classes.json, checkpoints/latest). Each input scan gives `OUT/<case>.nii.gz` (uint8
universal ids 1..32, lesions over their organs, the input's own grid and affine) and, with
`--per_class`, `OUT/<case>/<class>.nii.gz` (0/1). Classes the model was never trained on are
not predicted. A file that is not a readable 3D NIfTI stops with an error naming it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from typing import Any, Iterator

from absl import app
from absl import flags
from absl import logging



def _define_flags():
  """Flags exist only when this module is the program (the job imports it as a library)."""
  return {
      "workdir": flags.DEFINE_string("workdir", None, "Training folder of the model."),
      "input": flags.DEFINE_string("input", None, "A NIfTI file or a folder of them."),
      "output": flags.DEFINE_string("output", None, "Folder for the predicted label maps."),
      "per_class": flags.DEFINE_bool("per_class", False, "Also write one 0/1 file per class."),
      "sw_batch_size": flags.DEFINE_integer("sw_batch_size", None, "Windows per model call "
                                            "(default: the config's eval.sw_batch_size)."),
      "checkpoint": flags.DEFINE_enum("checkpoint", "best", ["best", "latest"],
                                      "best: the validation-selected state (the latest when the "
                                      "run validated nothing); latest: the last saved state."),
  }


_FLAGS: dict = {}


class ModelDirError(ValueError):
  """The --workdir is not a trained Universal Model folder."""


@dataclasses.dataclass
class LoadedModel:
  """A restored model as a sliding-window apply function plus what prediction needs."""
  config: Any
  apply_fn: Any
  variables: Any
  predict_kwargs: dict
  class_names: list
  step: int


@dataclasses.dataclass
class RestoredRun:
  """A training folder's state as it was saved, with what rebuilding its model needs."""
  config: Any         # the run's own ConfigDict (config.json)
  table: Any          # (32, D) class-embedding table the run trained with
  trained: Any        # (32,) bool: classes some training source (or the run it grew from) taught
  state: Any          # {'step', 'params', 'batch_stats', 'opt_state'}, replicated
  meta: dict          # checkpoint metadata (step, best score, ...)
  compiled: Any       # segmentation.train.Compiled of the run's config (jitted lazily)


def restore_run(workdir: str, checkpoint: str = "best") -> RestoredRun:
  """Restores a training folder's checkpoint with the folder's own config.

  checkpoint='best': the state that scored best on validation (checkpoints/best), or the latest
  when the run has no best one (it validated nothing); 'latest': the last saved state. Used by
  prediction and by fine-tuning (`config.init_from`). Raises ModelDirError naming the folder.
  """
  if checkpoint not in ("best", "latest"):
    raise ValueError(f"checkpoint must be 'best' or 'latest', got {checkpoint!r}")
  import jax
  import ml_collections
  from dassemble_jax import checkpointing, sharding
  from dassemble_jax.ct import taxonomy
  from dassemble_jax.models import text_encoder
  from dassemble_jax.segmentation import train_loop as seg_train

  paths = {name: os.path.join(workdir, name) for name in
           ("config.json", seg_train.EMBEDDINGS_FILE, seg_train.TRAINED_CLASSES_FILE)}
  for name, path in paths.items():
    if not os.path.isfile(path):
      raise ModelDirError(f"{workdir}: no {name}; is this a Universal Model training folder "
                          "(DIR/runs/<model>)?")
  with open(paths["config.json"]) as f:
    config = ml_collections.ConfigDict(json.load(f))
  table = text_encoder.load_embedding_table(paths[seg_train.EMBEDDINGS_FILE],
                                            num_classes=taxonomy.NUM_CLASSES)
  with open(paths[seg_train.TRAINED_CLASSES_FILE]) as f:
    trained = taxonomy.annotated_vector(json.load(f)).astype(bool)

  comp = seg_train.compiled_for(config, table.shape[1])
  abstract = jax.eval_shape(comp.init_state)
  rep = sharding.replicated(comp.mesh)
  abstract = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=rep),
                          abstract)
  ckpts = checkpointing.Checkpoints(workdir)
  try:
    restored = ckpts.restore_best(abstract) if checkpoint == "best" else None
    if restored is None:
      restored = ckpts.restore_latest(abstract)
  except Exception as e:  # noqa: BLE001 - a damaged checkpoint: say which folder
    raise ModelDirError(f"{workdir}/checkpoints: cannot restore the {checkpoint} checkpoint "
                        f"({e})") from e
  finally:
    ckpts.close()
  if restored is None:
    raise ModelDirError(f"{workdir}: no checkpoint under checkpoints/")
  state, meta = restored
  return RestoredRun(config=config, table=table, trained=trained, state=state, meta=meta,
                     compiled=comp)


def load_model(workdir: str, checkpoint: str = "best") -> LoadedModel:
  """Rebuilds the model of a training folder and restores a checkpoint of it (`restore_run`)."""
  import jax.numpy as jnp
  import numpy as np
  from dassemble_jax.ct import taxonomy
  from dassemble_jax.segmentation import evaluate

  run = restore_run(workdir, checkpoint)
  config = run.config
  e = config.eval
  thresholds = np.where(run.trained, float(e.threshold), 2.0).astype(np.float32)
  return LoadedModel(
      config=config,
      apply_fn=evaluate.apply_fn_for(run.compiled.eval_def, str(jnp.dtype(config.compute_dtype))),
      variables=evaluate.host_variables(run.state, run.table),
      predict_kwargs=dict(spacing=float(config.data.spacing),
                          window=(int(config.crop_size),) * 3, overlap=float(e.overlap),
                          sw_batch_size=int(e.sw_batch_size), thresholds=thresholds,
                          postprocess=bool(e.postprocess)),
      class_names=[c.name for c in taxonomy.CLASSES], step=int(run.meta["step"]))


def predict_with(loaded: LoadedModel, inputs, output, *, per_class: bool = False,
                 **overrides) -> Iterator:
  """`segmentation.predict.predict_paths` with the loaded model; yields ScanResults."""
  from dassemble_jax.segmentation import inference as seg_predict
  kwargs = {**loaded.predict_kwargs, **overrides}
  return seg_predict.predict_paths(loaded.apply_fn, inputs, output, per_class=per_class,
                                   class_names=loaded.class_names, params=loaded.variables,
                                   **kwargs)


def predict_file(loaded: LoadedModel, in_path, out_path, **overrides):
  """One scan to an explicit output path (for inputs whose file names repeat, e.g. KiTS)."""
  from dassemble_jax.segmentation import inference as seg_predict
  kwargs = {**loaded.predict_kwargs, **overrides}
  return seg_predict.predict_file(loaded.apply_fn, in_path, out_path, params=loaded.variables,
                                  class_names=loaded.class_names, **kwargs)


def _stages(timings: dict) -> str:
  return ", ".join(f"{k} {v:.2f} s" for k, v in timings.items())


def _rate_eta(elapsed: float, done: int, total: int) -> str:
  """'s/scan and ETA' after `done` of `total` scans (the first scan includes the compilation)."""
  per_scan = elapsed / done
  eta = time.strftime("%H:%M:%S", time.gmtime(per_scan * (total - done)))
  return f"{per_scan:.2f} s/scan | ETA {eta}"


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)  # Orbax logs every restore at INFO
  from dassemble_jax.ct.nifti_io import CaseError
  try:
    loaded = load_model(_FLAGS["workdir"].value, _FLAGS["checkpoint"].value)
  except ModelDirError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  sw_batch = _FLAGS["sw_batch_size"].value
  overrides = {} if sw_batch is None else {"sw_batch_size": sw_batch}
  print(f"model {_FLAGS['workdir'].value} ({_FLAGS['checkpoint'].value} checkpoint: step "
        f"{loaded.step}, {loaded.config.model.backbone})", flush=True)
  try:
    from dassemble_jax.segmentation.inference import find_inputs
    total = len(find_inputs(_FLAGS["input"].value))
    start = time.perf_counter()
    for i, result in enumerate(predict_with(loaded, _FLAGS["input"].value,
                                            _FLAGS["output"].value,
                                            per_class=_FLAGS["per_class"].value, **overrides),
                               start=1):
      print(f"[{i}/{total}] {result.label_map} ({_stages(result.timings)}) | "
            f"{_rate_eta(time.perf_counter() - start, i, total)}", flush=True)
  except CaseError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  _FLAGS.update(_define_flags())
  flags.mark_flags_as_required(["workdir", "input", "output"])
  app.run(lambda argv: sys.exit(main(argv)))
