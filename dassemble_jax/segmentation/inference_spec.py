"""How a config predicts: the sliding-window and thresholding settings, resolved once.

Validation during training, the held-out evaluation, the predict CLI and the robustness benchmark
all predict through `inference.predict_volume`; each used to build its arguments from the config
by hand, and the copies drifted. `InferenceSpec.from_config` is the one place that reads them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from dassemble_jax.ct import taxonomy
from dassemble_jax.segmentation import train_step

# A class the model never saw a label of is never predicted: its threshold is above any
# probability.
_NEVER = 2.0

# The anchor's inference (MONAI transforms + sliding_window_inference), as config.eval fields:
# what an imported checkpoint's run records (segmentation/anchor_import.py). Every field
# defaults to the project's own convention when a config does not name it.
ANCHOR_CONVENTIONS = {"blend": "monai", "average": "logits", "resample_rule": "monai",
                      "crop_foreground": True}


@dataclasses.dataclass(frozen=True)
class InferenceSpec:
  """The settings that turn a model into masks (hashable: tuples, not arrays)."""
  window: tuple[int, int, int]      # sliding-window size in voxels (the training crop)
  overlap: float                    # fraction shared by neighbouring windows, per axis
  sw_batch_size: int                # windows per model call
  sigma_scale: float                # Gaussian importance weighting: sigma / window
  threshold: float                  # probability threshold of every trained class
  trained: tuple[bool, ...]         # (32,) classes the model was taught; the others never
  postprocess: bool                 # the anchor's post-processing (LCC, lung split, lesions)
  spacing: float                    # model voxel size in mm (inputs are resampled to it)
  nsd_tolerance_mm: float           # NSD tolerance of the evaluation
  head_impl: str                    # dynamic-head implementation the model was built with
  dtype: str                        # compute dtype name ('float32', 'bfloat16')
  # Conventions (inference.py; ANCHOR_CONVENTIONS for imported checkpoints):
  blend: str = "gaussian"           # window placement/weights: 'gaussian' (ours) or 'monai'
  average: str = "probs"            # what overlapping windows average: 'probs' or 'logits'
  resample_rule: str = "round"      # model-grid size: 'round' (n*old/new) or 'monai'
  crop_foreground: bool = False     # predict inside the body's bounding box only

  @classmethod
  def from_config(cls, config, trained: Sequence[bool] | np.ndarray | None = None,
                  **overrides: Any) -> InferenceSpec:
    """The spec of a run's config; `trained` (32,) bool defaults to every class; overrides
    replace single fields (e.g. sw_batch_size from a command line)."""
    e = config.eval
    trained = (np.ones(taxonomy.NUM_CLASSES, bool) if trained is None
               else np.asarray(trained, bool))
    spec = cls(window=(int(config.crop_size),) * 3, overlap=float(e.overlap),
               sw_batch_size=int(e.sw_batch_size),
               sigma_scale=float(e.get("sigma_scale", 0.125)), threshold=float(e.threshold),
               trained=tuple(bool(t) for t in trained), postprocess=bool(e.postprocess),
               spacing=float(config.data.spacing),
               nsd_tolerance_mm=float(e.get("nsd_tolerance_mm", 2.0)),
               head_impl=train_step.head_impl(config),
               dtype=str(config.compute_dtype),
               blend=str(e.get("blend", "gaussian")), average=str(e.get("average", "probs")),
               resample_rule=str(e.get("resample_rule", "round")),
               crop_foreground=bool(e.get("crop_foreground", False)))
    return dataclasses.replace(spec, **overrides) if overrides else spec

  def replace(self, **fields: Any) -> InferenceSpec:
    return dataclasses.replace(self, **fields)

  @property
  def trained_mask(self) -> np.ndarray:
    return np.asarray(self.trained, bool)

  @property
  def thresholds(self) -> np.ndarray:
    """(32,) float32 per-class thresholds: `threshold` for trained classes, never otherwise."""
    return np.where(self.trained_mask, self.threshold, _NEVER).astype(np.float32)

  def volume_kwargs(self, *, postprocess: bool | None = None) -> dict:
    """Keyword arguments of `inference.predict_volume` for a volume already in the model grid
    (postprocess=False: the cheap validation score during training)."""
    return {"window": self.window, "overlap": self.overlap, "sw_batch_size": self.sw_batch_size,
            "sigma_scale": self.sigma_scale, "thresholds": self.thresholds,
            "postprocess": self.postprocess if postprocess is None else postprocess,
            "blend": self.blend, "average": self.average}

  def file_kwargs(self) -> dict:
    """Keyword arguments of `inference.predict_file` / `predict_paths` (a scan in its own grid,
    resampled to `spacing` and back)."""
    return {"spacing": self.spacing, "resample_rule": self.resample_rule,
            "crop_foreground": self.crop_foreground, **self.volume_kwargs()}
