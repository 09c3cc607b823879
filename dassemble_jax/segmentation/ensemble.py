"""Several trained runs as one predictor: probabilities averaged over the models.

The anchor completed its assembly with three architectures; here any number of run folders
(`trained_run` contract: U-Nets, Swin UNETRs, several seeds) are loaded with `trained_run.
load_model` and run with `sliding_window.sliding_window_inference`, each with its own window and
weights. The ensemble's probability of a class is the mean of the models' probabilities; each
model's own thresholded mask is kept (packed, 4 bytes a voxel) for the disagreement term of the
confidence (`completion.class_confidence`). The mean is thresholded and post-processed like a
single model's prediction (`postprocess.postprocess_bits`).

Every model must have been trained on every class the ensemble predicts (a model that never saw
a label of a class has an untrained head for it), and all must work at the same voxel size.
Errors are one line naming the file at fault (`EnsembleError`).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

import numpy as np

from dassemble_jax.ct import bitmask, taxonomy
from dassemble_jax.segmentation import postprocess as pp
from dassemble_jax.segmentation import sliding_window as sw
from dassemble_jax.segmentation import trained_run


class EnsembleError(ValueError):
  """A run folder cannot join the ensemble (the message names the file at fault)."""


def _one_line(e: Exception) -> str:
  return " ".join(str(e).split())


def check_run_folder(run_dir: str) -> None:
  """EnsembleError naming the first file of the run-folder contract that is missing."""
  if not os.path.isdir(run_dir):
    raise EnsembleError(f"{run_dir}: no such run folder")
  for name in (trained_run.CONFIG_FILE, trained_run.EMBEDDINGS_FILE,
               trained_run.TRAINED_CLASSES_FILE):
    path = os.path.join(run_dir, name)
    if not os.path.isfile(path):
      raise EnsembleError(f"{path}: missing; {run_dir} is not a trained Universal Model run "
                          "folder (DIR/runs/<model>)")
  if not os.path.isdir(os.path.join(run_dir, "checkpoints")):
    raise EnsembleError(f"{os.path.join(run_dir, 'checkpoints')}: missing; {run_dir} has no "
                        "saved model")


@dataclasses.dataclass
class Prediction:
  """An ensemble's prediction of one volume (model grid)."""
  probs: np.ndarray             # (X, Y, Z, 32) float32, mean over the models
  bits: np.ndarray              # (X, Y, Z) uint32, thresholded + post-processed mean
  member_bits: list             # per model, (X, Y, Z) uint32 of its own thresholded probs


class Ensemble:
  """Run folders loaded as predictors; `predict` averages their probabilities."""

  def __init__(self, run_dirs: Sequence[str], checkpoint: str = "best"):
    if not run_dirs:
      raise EnsembleError("an ensemble needs at least one run folder")
    self.run_dirs = [str(d) for d in run_dirs]
    self.models = []
    for d in self.run_dirs:
      check_run_folder(d)
      try:
        self.models.append(trained_run.load_model(d, checkpoint))
      except (trained_run.ModelDirError, ValueError) as e:
        raise EnsembleError(_one_line(e)) from e
    spacings = [m.spec.spacing for m in self.models]
    for d, s in zip(self.run_dirs, spacings):
      if not np.isclose(s, spacings[0]):
        raise EnsembleError(f"{os.path.join(d, trained_run.CONFIG_FILE)}: data.spacing {s} mm "
                            f"differs from {self.run_dirs[0]}'s {spacings[0]} mm; the "
                            "ensemble's models must share one voxel size")
    self.spacing = float(spacings[0])
    self.spec = self.models[0].spec

  @property
  def trained(self) -> np.ndarray:
    """(M, 32) bool: the classes each model was taught."""
    return np.stack([m.spec.trained_mask for m in self.models])

  @property
  def common_classes(self) -> np.ndarray:
    """(32,) bool: the classes every model was taught."""
    return self.trained.all(axis=0)

  def class_mask(self, names: Sequence[str]) -> np.ndarray:
    """(32,) bool of the named classes; EnsembleError naming the trained_classes.json of a model
    that lacks one (or the unknown name)."""
    mask = np.zeros(taxonomy.NUM_CLASSES, bool)
    for name in names:
      if name not in taxonomy.BY_NAME:
        raise EnsembleError(f"class {name!r} is not in the taxonomy ({len(taxonomy.CLASSES)} "
                            "classes, ct/taxonomy.py)")
      k = taxonomy.BY_NAME[name].id - 1
      for d, trained in zip(self.run_dirs, self.trained):
        if not trained[k]:
          raise EnsembleError(f"{os.path.join(d, trained_run.TRAINED_CLASSES_FILE)}: the model "
                              f"was never trained on class {name!r}; it cannot pseudo-label it")
      mask[k] = True
    return mask

  def predict(self, volume: np.ndarray, affine: np.ndarray, classes: np.ndarray) -> Prediction:
    """(X, Y, Z) model-grid volume -> Prediction; only `classes` ((32,) bool) are predicted."""
    classes = np.asarray(classes, bool)
    total, members = None, []
    for m in self.models:
      probs = np.asarray(sw.sliding_window_inference(
          m.apply_fn, volume, params=m.variables, window=m.spec.window, overlap=m.spec.overlap,
          sw_batch_size=m.spec.sw_batch_size, sigma_scale=m.spec.sigma_scale, output="probs"),
          np.float32)
      total = probs if total is None else total + probs
      members.append(bitmask.pack(pp.apply_thresholds(probs, self._thresholds(m, classes))))
    mean = total / np.float32(len(self.models))
    bits = bitmask.pack(pp.apply_thresholds(mean, self._thresholds(self.models[0], classes)))
    if self.spec.postprocess:
      bits = pp.postprocess_bits(bits, taxonomy.NUM_CLASSES, affine, copy=False)
    return Prediction(probs=mean, bits=bits, member_bits=members)

  @staticmethod
  def _thresholds(model, classes: np.ndarray) -> np.ndarray:
    """(32,) thresholds: the model's own for `classes`, above any probability elsewhere."""
    return np.where(classes, model.spec.threshold, 2.0).astype(np.float32)
