"""Every controllable property of the synthetic liver-tumor generator, in one frozen dataclass.

The defaults are the anchor's training settings (Hu et al., CVPR 2023), with every size in
millimetres: the anchor works on 1 mm isotropic volumes, so its voxel numbers are millimetres here
and the generator converts them with the voxel spacing.

`SynthConfig` is hashable, so it is passed to `jax.jit` as a static argument: changing any field
recompiles, which is what a robustness sweep wants (one compile per property value) and what a
training step never does (one config for the whole run).

A robustness study changes one property at a time, e.g.
  cfg = dataclasses.replace(SynthConfig(), kind_choices=('medium',), hu_decrement=(100., 100.))
  cfg = SynthConfig().only_kind('small', count=(1, 1))
"""

from __future__ import annotations

import dataclasses

Range = tuple[float, float]


@dataclasses.dataclass(frozen=True)
class TumorKind:
  """One size class of tumors (a row of the reference table)."""
  name: str
  # Nominal radius; each semi-axis is drawn from [lo, hi] * radius_mm (SynthConfig.axis_range).
  radius_mm: float
  # Inclusive range of the number of tumors when this kind is drawn alone.
  count: tuple[int, int]
  # Inclusive range of the number of tumors of this kind in a 'mix' scan.
  mix_count: tuple[int, int]
  # Std of the elastic control-point displacement (the anchor's elasticdeform sigma), mm.
  elastic_sigma_mm: Range


DEFAULT_KINDS = (
    TumorKind('tiny', 4.0, (3, 10), (3, 10), (0.5, 1.0)),
    TumorKind('small', 8.0, (3, 10), (5, 10), (1.0, 2.0)),
    TumorKind('medium', 16.0, (2, 5), (2, 5), (3.0, 6.0)),
    TumorKind('large', 32.0, (1, 3), (1, 3), (5.0, 10.0)),
)


@dataclasses.dataclass(frozen=True)
class SynthConfig:
  """All settings of `synthesize_tumors`. Ranges are (low, high), sampled uniformly."""

  # --- when -----------------------------------------------------------------------------------
  # Probability that a sample gets tumors at all (the anchor trains with 0.9).
  prob: float = 1.0

  # --- size, count, shape ---------------------------------------------------------------------
  kinds: tuple[TumorKind, ...] = DEFAULT_KINDS
  # Drawn uniformly per sample: a kind name from `kinds`, or 'mix' (every kind, mix_count each).
  kind_choices: tuple[str, ...] = ('tiny', 'small', 'medium', 'large', 'mix')
  # Semi-axis / radius, per axis independently.
  axis_range: Range = (0.75, 1.25)
  # Multiplies every elastic sigma: 0 gives plain ellipsoids, >1 more irregular shapes.
  elastic_scale: float = 1.0
  # Half the side of the box a tumor is drawn in, in units of its nominal radius. The anchor
  # draws a 4r box around an r ellipsoid (r up to 1.25 radius): 2.5. The room between the
  # ellipsoid and the box bounds the elastic displacement (see shapes.py).
  box_factor: float = 2.5

  # --- location -------------------------------------------------------------------------------
  # Spatial axis running feet -> head, and whether the head is at the high index (True for
  # nibabel arrays of RAS/LAS-oriented NIfTI).
  cc_axis: int = 2
  cranial_is_high: bool = True
  # Fraction of the liver's cranio-caudal extent where centres are drawn; 0 = caudal tip,
  # 1 = cranial top. (0.0, 1/3) is the lower third, where the paper finds > 60% of real tumors.
  cc_fraction: Range = (0.3, 0.7)
  # In-plane erosion of the liver before picking a centre (anchor: 5x5 at 1 mm = 2 mm).
  erosion_mm: float = 2.0
  # If set, centres are drawn only within this distance of the liver surface (in-plane).
  near_surface_mm: float | None = None
  # Fewer liver voxels than this: no tumor, info['valid'] = False.
  min_liver_voxels: int = 64

  # --- texture --------------------------------------------------------------------------------
  texture_sigma_mm: tuple[float, ...] = (3.0, 6.0, 9.0, 12.0, 15.0)
  texture_scale: Range = (0.19, 0.21)
  texture_offset: Range = (0.04, 0.06)
  texture_smooth_sigma_mm: tuple[float, ...] = (4.0, 7.0)
  texture_u0: Range = (0.5, 0.55)
  texture_threshold: float = 0.12

  # --- intensity ------------------------------------------------------------------------------
  edge_blur_mm: Range = (1.0, 2.0)
  hu_decrement: Range = (65.0, 145.0)
  # HU per unit of the CT given: 1 for HU; 210 for the anchor's [-21, 189] -> [0, 1] window.
  hu_per_unit: float = 1.0
  # Clip the output CT to this range (in the CT's own units), e.g. (0., 1.) for a scaled CT.
  clip: Range | None = None

  # --- paper-only extras (off by default, as in the anchor's training) ------------------------
  # Vessel avoidance: vessels are liver voxels whose smoothed CT exceeds the mean liver HU by
  # vessel_hu_margin; no centre within vessel_margin_mm of them.
  avoid_vessels: bool = False
  vessel_hu_margin: float = 25.0
  vessel_margin_mm: float = 4.0
  # Mass effect: peak radial push (mm) of the tissue around each tumor; 0 = off.
  mass_effect_mm: float = 0.0
  # Capsule: a rim this much brighter (HU) and this wide (mm) around each tumor; 0 = off.
  capsule_hu: float = 0.0
  capsule_mm: float = 1.5

  # --- numerics -------------------------------------------------------------------------------
  # Gaussian kernels are cut at truncate * sigma (scipy's default is 4; 3 keeps > 99% of mass).
  gaussian_truncate: float = 3.0

  def __post_init__(self):
    names = [k.name for k in self.kinds]
    for c in self.kind_choices:
      if c != 'mix' and c not in names:
        raise ValueError(f'kind_choices names {c!r}, not one of {names} or "mix"')
    if not self.kind_choices:
      raise ValueError('kind_choices is empty')
    for k in self.kinds:
      if not 0 <= k.count[0] <= k.count[1] or not 0 <= k.mix_count[0] <= k.mix_count[1]:
        raise ValueError(f'bad count range for tumor kind {k.name!r}: {k.count} / {k.mix_count}')
    lo, hi = self.cc_fraction
    if not 0.0 <= lo <= hi <= 1.0:
      raise ValueError(f'cc_fraction must satisfy 0 <= lo <= hi <= 1, got {self.cc_fraction}')
    if self.cc_axis not in (0, 1, 2):
      raise ValueError(f'cc_axis must be 0, 1 or 2, got {self.cc_axis}')
    if self.box_factor <= self.axis_range[1]:
      raise ValueError('box_factor must exceed axis_range[1] (the box holds the ellipsoid)')

  # --- helpers for robustness sweeps ----------------------------------------------------------
  def only_kind(self, name: str, count: tuple[int, int] | None = None) -> SynthConfig:
    """Only tumors of kind `name`, optionally with a fixed count range."""
    kinds = tuple(dataclasses.replace(k, count=count) if (k.name == name and count) else k
                  for k in self.kinds)
    return dataclasses.replace(self, kinds=kinds, kind_choices=(name,))

  def max_counts(self) -> tuple[int, ...]:
    """Static number of tumor slots per kind: the most any allowed choice can draw."""
    out = []
    for k in self.kinds:
      n = k.count[1] if k.name in self.kind_choices else 0
      if 'mix' in self.kind_choices:
        n = max(n, k.mix_count[1])
      out.append(n)
    return tuple(out)


def anchor_training_config() -> SynthConfig:
  """The anchor's training setting: p = 0.9, HU window [-21, 189] scaled to [0, 1]."""
  return SynthConfig(prob=0.9, hu_per_unit=210.0, clip=(0.0, 1.0))
