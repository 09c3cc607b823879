"""Synthetic liver tumors on the device (reference/synthetic_tumors.md).

`synthesize_tumors(key, ct, liver_mask, spacing, cfg)` is the pure, jittable, vmappable
generator; `SynthConfig` holds every controllable property.
"""

from dassemble_jax.synth.config import SynthConfig, TumorKind, anchor_training_config
from dassemble_jax.synth.generate import (label_map, synthesize_batch, synthesize_tumors,
                                          synthesize_tumors_roi)

__all__ = ['SynthConfig', 'TumorKind', 'anchor_training_config', 'label_map',
           'synthesize_batch', 'synthesize_tumors', 'synthesize_tumors_roi']
