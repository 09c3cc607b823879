"""What a trained Universal Model run folder holds, and how it comes back as a model.

The one home of the run-folder contract, used by the trainer (train_loop.py), the evaluator, the
predict CLI and the jobs. A run folder (DIR/runs/<model>) holds:

  config.json             the run's own config (rebuilds its model: `train_step.compiled_for`)
  class_embeddings.npy    the (32, D) class-code table it trained with ((32, 1) zeros when the
                          class codes are not text)
  trained_classes.json    universal ids some training source (or the run it grew from) labels:
                          the classes the model may predict
  checkpoints/{latest,best}  Orbax train states (checkpointing.py); best = best validated
  metrics.jsonl, tb/      training scalars (metric_writer.py)
  eval.json               the held-out evaluation (reports.write_results)
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from dassemble_jax import atomic, checkpointing
from dassemble_jax.ct import taxonomy
from dassemble_jax.data import arrayrecord_io
from dassemble_jax.models import text_encoder, universal_head
from dassemble_jax.segmentation import inference, postprocess, train_step
from dassemble_jax.segmentation.inference_spec import InferenceSpec
from dassemble_jax.synth import training as synth_training

CONFIG_FILE = "config.json"
EMBEDDINGS_FILE = "class_embeddings.npy"
TRAINED_CLASSES_FILE = "trained_classes.json"
EVAL_FILE = "eval.json"
CLASS_NAMES = [c.name for c in taxonomy.CLASSES]


class ModelDirError(ValueError):
  """A folder is not a trained Universal Model run (the message names what is missing)."""


# ------------------------------------------------------------------------------------------------
# Writing a run's files (the primary process only: every process computes the same content).

def write_run_files(workdir: str, config, trained: np.ndarray) -> None:
  """config.json and trained_classes.json ((32,) bool `trained` as universal ids)."""
  if jax.process_index() != 0:
    return
  atomic.write_json(os.path.join(workdir, CONFIG_FILE), json.loads(config.to_json()), indent=1)
  ids = [int(i) + 1 for i in np.flatnonzero(trained)]
  atomic.write_json(os.path.join(workdir, TRAINED_CLASSES_FILE), ids, indent=1)


def write_class_table(workdir: str, table: np.ndarray) -> None:
  if jax.process_index() == 0:
    text_encoder.save_embedding_table(os.path.join(workdir, EMBEDDINGS_FILE), table)


# ------------------------------------------------------------------------------------------------
# The classes of a run.

def trained_class_mask(source_dirs: Sequence[str]) -> np.ndarray:
  """(32,) bool: the classes annotated by any training source (what a model can have learned)."""
  ids = set()
  for d in source_dirs:
    manifest = arrayrecord_io.read_manifest(d)
    for name in manifest["sources"]:
      ids |= set(manifest["known_classes"][name])
  return taxonomy.annotated_vector(sorted(ids)).astype(bool)


def trained_classes(config) -> np.ndarray:
  """(32,) bool: classes the training config teaches: its sources' classes, plus liver tumors
  when synthetic tumors are inserted into healthy livers (synth/training.py), plus the classes
  of the run it was fine-tuned from (`init_from`)."""
  mask = trained_class_mask(list(config.data.shard_dirs))
  if synth_training.enabled(config):
    mask[synth_training.LIVER_TUMOR - 1] = True
  if config.get("init_from"):
    mask |= run_trained_classes(str(config.init_from))
  return mask


def run_trained_classes(run_dir: str) -> np.ndarray:
  """(32,) bool: the classes a run folder's model was taught (its trained_classes.json)."""
  path = os.path.join(run_dir, TRAINED_CLASSES_FILE)
  try:
    with open(path) as f:
      return taxonomy.annotated_vector(json.load(f)).astype(bool)
  except FileNotFoundError:
    raise ModelDirError(f"{run_dir}: not a Universal Model run folder (no {TRAINED_CLASSES_FILE}"
                        "; a run is DIR/runs/<model> of a training workdir)") from None
  except (OSError, ValueError) as e:
    raise ModelDirError(f"{path}: cannot read it ({e})") from e


# ------------------------------------------------------------------------------------------------
# Restoring a run.

@dataclasses.dataclass
class RestoredRun:
  """A run folder's state as it was saved, with what rebuilding its model needs."""
  config: Any         # the run's own ConfigDict (config.json)
  table: Any          # (32, D) class-embedding table the run trained with
  trained: Any        # (32,) bool: classes some training source (or the run it grew from) taught
  state: Any          # {'step', 'params', 'batch_stats', 'opt_state'}, replicated
  meta: dict          # checkpoint metadata (step, best score, ...)
  compiled: Any       # train_step.Compiled of the run's config (jitted lazily)


def restore_run(workdir: str, checkpoint: str = "best") -> RestoredRun:
  """Restores a run folder's checkpoint with the folder's own config.

  checkpoint='best': the state that scored best on validation (checkpoints/best), or the latest
  when the run has no best one (it validated nothing); 'latest': the last saved state. Used by
  prediction, evaluation and fine-tuning (`config.init_from`). Raises ModelDirError naming the
  folder.
  """
  if checkpoint not in ("best", "latest"):
    raise ValueError(f"checkpoint must be 'best' or 'latest', got {checkpoint!r}")
  for name in (CONFIG_FILE, EMBEDDINGS_FILE, TRAINED_CLASSES_FILE):
    if not os.path.isfile(os.path.join(workdir, name)):
      raise ModelDirError(f"{workdir}: no {name}; is this a Universal Model training folder "
                          "(DIR/runs/<model>)?")
  config_path = os.path.join(workdir, CONFIG_FILE)
  try:
    with open(config_path) as f:
      fields = json.load(f)
  except (OSError, ValueError) as e:
    raise ModelDirError(f"{config_path}: not a run's config ({e})") from None
  if not isinstance(fields, dict):
    raise ModelDirError(f"{config_path}: not a run's config (a JSON {type(fields).__name__}, "
                        "not an object of fields)")
  config = ml_collections.ConfigDict(fields)
  table = text_encoder.load_embedding_table(os.path.join(workdir, EMBEDDINGS_FILE),
                                            num_classes=taxonomy.NUM_CLASSES)
  trained = run_trained_classes(workdir)

  comp = train_step.compiled_for(config, table.shape[1])
  abstract = comp.abstract_state()
  ckpts = checkpointing.Checkpoints(workdir)
  try:
    restored = ckpts.restore_best(abstract) if checkpoint == "best" else None
    if restored is None:
      restored = ckpts.restore_latest(abstract)
  except Exception as e:
    raise ModelDirError(f"{workdir}/checkpoints: cannot restore the {checkpoint} checkpoint "
                        f"({e})") from e
  finally:
    ckpts.close()
  if restored is None:
    raise ModelDirError(f"{workdir}: no checkpoint under checkpoints/")
  state, meta = restored
  return RestoredRun(config=config, table=table, trained=trained, state=state, meta=meta,
                     compiled=comp)


# ------------------------------------------------------------------------------------------------
# The model as a sliding-window apply function.

def _apply(eval_def, dtype, variables, windows):
  """variables = (params, batch_stats, table); windows (n, d, h, w, 1) -> logits (n, ..., 32)."""
  params, batch_stats, table = variables
  model = nnx.merge(eval_def, params, batch_stats)
  return model(windows.astype(dtype), table).astype(jnp.float32)


def _apply_subset(eval_def, dtype, channels, variables, windows):
  """`_apply` for the classes `channels` (0-based) only: logits (n, ..., len(channels)).

  The backbone and the controller run as usual (the controller's 32 x 153 parameters are
  negligible); only the selected classes' dynamic heads, which run at full resolution with 8
  hidden channels per class, are evaluated, and the sliding window accumulates only theirs.
  """
  params, batch_stats, table = variables
  model = nnx.merge(eval_def, params, batch_stats)
  f, theta = model.head_inputs(windows.astype(dtype), table)
  heads = universal_head.HEAD_IMPLS[model.head.head_impl]
  return heads(f, theta[:, np.asarray(channels)]).astype(jnp.float32)


@functools.lru_cache(maxsize=8)
def apply_fn_for(eval_def, dtype_name: str, channels: tuple[int, ...] | None = None):
  """One (hashable) apply function per model graph, so every volume reuses the compilation;
  `channels` (0-based class indices): only those classes' heads."""
  if channels is None:
    return functools.partial(_apply, eval_def, jnp.dtype(dtype_name))
  return functools.partial(_apply_subset, eval_def, jnp.dtype(dtype_name), tuple(channels))


class ClassSelectionError(ValueError):
  """`--classes` names an unknown class or one the model was never trained on."""


def select_classes(names: Sequence[str], trained: np.ndarray) -> tuple[list[int], list[int]]:
  """Class names -> (the universal ids asked for, the ids to compute).

  The computed ids add what the post-processing of an asked class reads: a kidney or liver
  lesion's host organ(s) (lesions are kept inside them) and the other lung (the two lungs are
  split as a pair). Only trained classes are added; asking for an untrained one is an error.
  """
  asked = []
  for name in names:
    if name not in taxonomy.BY_NAME:
      raise ClassSelectionError(f"--classes: unknown class {name!r} (the classes: "
                                f"{', '.join(CLASS_NAMES)})")
    cid = taxonomy.BY_NAME[name].id
    if not trained[cid - 1]:
      raise ClassSelectionError(f"--classes: the model was never trained on {name!r} (it "
                                "predicts: " + ", ".join(
                                    CLASS_NAMES[i] for i in np.flatnonzero(trained)) + ")")
    if cid not in asked:
      asked.append(cid)
  computed = set(asked)
  for cid in asked:
    if cid in postprocess.HOST_FILTER_IDS:
      computed |= set(postprocess.host_ids(cid))
    if cid in taxonomy.PAIRS["lung"]:
      computed |= set(taxonomy.PAIRS["lung"])
  return sorted(asked), sorted(i for i in computed if trained[i - 1])


def host_variables(state: Mapping[str, Any], table: np.ndarray, device=None):
  """(params, batch_stats, table) on one device: sliding-window runs on a single device."""
  device = device or jax.devices()[0]
  return jax.device_put((jax.device_get(state["params"]), jax.device_get(state["batch_stats"]),
                         np.asarray(table, np.float32)), device)


@dataclasses.dataclass
class LoadedModel:
  """A restored run as a predictor: its apply function, weights and inference settings."""
  config: Any
  spec: InferenceSpec
  apply_fn: Any
  variables: Any
  step: int
  eval_def: Any = None  # the model graph (`apply_fn_for` builds class-subset functions on it)

  def _subset(self, classes: Sequence[str] | None, spec: InferenceSpec) -> dict:
    """predict_file arguments for a class subset (`select_classes`): its own apply function,
    thresholds and channel/report ids; {} for all classes."""
    if not classes:
      return {}
    asked, computed = select_classes(classes, spec.trained_mask)
    channels = tuple(i - 1 for i in computed)
    return {"apply_fn": apply_fn_for(self.eval_def, spec.dtype, channels),
            "thresholds": spec.thresholds[list(channels)], "channel_ids": computed,
            "report_ids": asked}

  def predict_paths(self, inputs, output, *, per_class: bool = False,
                    classes: Sequence[str] | None = None, keep_going: bool = False,
                    statistics: bool = False, preview: bool = False, dicom_seg: bool = False,
                    **spec_overrides) -> Iterator[inference.ScanResult]:
    """A NIfTI file or folder -> OUTPUT/<case>.nii.gz (+ OUTPUT/<case>/<class>.nii.gz), the
    sidecars (`inference.predict_paths`); `classes`: only these (their heads alone computed)."""
    spec = self.spec.replace(**spec_overrides)
    kwargs = {"apply_fn": self.apply_fn, **spec.file_kwargs(), **self._subset(classes, spec)}
    return inference.predict_paths(kwargs.pop("apply_fn"), inputs, output, per_class=per_class,
                                   class_names=CLASS_NAMES, params=self.variables,
                                   keep_going=keep_going, statistics=statistics,
                                   preview=preview, dicom_seg=dicom_seg, **kwargs)

  def predict_file(self, in_path, out_path, *, classes: Sequence[str] | None = None,
                   **spec_overrides) -> inference.ScanResult:
    """One scan to an explicit output path (for inputs whose file names repeat, e.g. KiTS)."""
    spec = self.spec.replace(**spec_overrides)
    kwargs = {"apply_fn": self.apply_fn, **spec.file_kwargs(), **self._subset(classes, spec)}
    return inference.predict_file(kwargs.pop("apply_fn"), in_path, out_path,
                                  params=self.variables, class_names=CLASS_NAMES, **kwargs)


def load_model(workdir: str, checkpoint: str = "best", **spec_overrides) -> LoadedModel:
  """A run folder's model as a predictor (`restore_run`; only its trained classes predicted)."""
  run = restore_run(workdir, checkpoint)
  spec = InferenceSpec.from_config(run.config, run.trained, **spec_overrides)
  return LoadedModel(config=run.config, spec=spec,
                     apply_fn=apply_fn_for(run.compiled.eval_def, spec.dtype),
                     variables=host_variables(run.state, run.table),
                     step=int(run.meta["step"]), eval_def=run.compiled.eval_def)
