"""Synthetic liver tumors on the device (reference/synthetic_tumors.md).

`synthesize_tumors(key, ct, liver_mask, spacing, cfg)` is the pure, jittable, vmappable
generator; `SynthConfig` holds every controllable property. In a jitted training step call
`synthesize_batch(key, ct, liver, spacing, cfg, eligible=healthy)` on the (B, X, Y, Z) batch;
for whole scans `synthesize_tumors_roi` works in a static box around the liver. Commands:
`python -m dassemble_jax.jobs.synth_overlay` (look at tumors in a real CT) and
`python -m dassemble_jax.jobs.synth_sweep` (a robustness evaluation set, one property at a time).
"""

from dassemble_jax.synth.config import SynthConfig, TumorKind, anchor_training_config
from dassemble_jax.synth.generate import (
    label_map,
    synthesize_batch,
    synthesize_tumors,
    synthesize_tumors_roi,
)

__all__ = ['SynthConfig', 'TumorKind', 'anchor_training_config', 'label_map',
           'synthesize_batch', 'synthesize_tumors', 'synthesize_tumors_roi']
