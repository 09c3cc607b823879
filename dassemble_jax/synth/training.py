"""Synthetic liver tumors inside the jitted train step: config, eligibility, the batch transform.

The train step (segmentation/train_loop.py) calls `synthesize_window_batch` on the host batch before
the on-device crop and augmentation, i.e. on the window the host sent, at the voxel spacing of
the converted data (`config.data.spacing`, mm). What it does to a batch, per sample:
  * eligible (a healthy-liver source: it annotates the liver but not liver tumors, or one named
    in `config.synth.sources`; the host marks it in `synth_ok`): with probability
    `config.synth.prob` tumors are inserted in the window's liver (image darkened, the
    liver-tumor bit set in the label bitmask where the unblurred tumor mask is; tumor voxels keep
    their liver bit, as the taxonomy wants), and the liver-tumor class becomes annotated, also
    when no tumor was drawn: a healthy liver is a known tumor-free liver;
  * not eligible: untouched (the generator's empty-liver path returns the CT unchanged).

Images arrive scaled by `ct.preprocess.scale_hu` (HU window [-175, 250] -> [0, 1]), so the
decrement is converted with 425 HU per unit and the result clipped to [0, 1]. Windows are RAS:
the cranio-caudal axis is z (axis 2), the head at the high index.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from dassemble_jax.ct import preprocess, taxonomy
from dassemble_jax.data import arrayrecord_io
from dassemble_jax.synth.config import SynthConfig
from dassemble_jax.synth.generate import synthesize_batch

LIVER = taxonomy.class_by_name("liver").id
LIVER_TUMOR = taxonomy.class_by_name("liver_tumor").id
HU_PER_UNIT = preprocess.HU_MAX - preprocess.HU_MIN   # 425 HU per unit of the scaled image


def enabled(config) -> bool:
  synth = config.get("synth")
  return bool(synth is not None and synth.get("enabled", False))


def synth_config(config) -> SynthConfig:
  """The generator's settings for this training config (prob, kinds, decrement from config.synth;
  the HU scaling and orientation of converted shards)."""
  s = config.synth
  return SynthConfig(prob=float(s.prob), kind_choices=tuple(s.kind_choices),
                     hu_decrement=tuple(float(v) for v in s.hu_decrement),
                     hu_per_unit=float(HU_PER_UNIT), clip=(0.0, 1.0), cc_axis=2,
                     cranial_is_high=True)


def step_signature(config) -> dict | None:
  """What the compiled step depends on (None: no synthesis). Eligibility is host-side (the
  synth_ok field), so `sources` and `none_eligible_ok` are not part of it."""
  if not enabled(config):
    return None
  s = {k: v for k, v in config.synth.to_dict().items()
       if k not in ("sources", "none_eligible_ok")}
  return s | {"spacing": spacing_of(config)}


def spacing_of(config) -> tuple[float, float, float]:
  """Voxel size (mm) of the converted data: conversion resamples to config.data.spacing."""
  s = config.data.spacing
  return tuple(float(v) for v in s) if isinstance(s, (tuple, list)) else (float(s),) * 3


def eligible_sources(config, shard_dirs: Sequence[str]) -> np.ndarray:
  """(num_sources,) bool in pipeline order: which training sources get synthetic tumors.

  Named sources (`config.synth.sources`) must exist; by default every source whose manifest
  annotates the liver but not liver tumors (its livers are known to be healthy). No eligible
  source is an error unless `config.synth.none_eligible_ok` (then the step runs the generator on
  nothing: what the liver_synthetic job's real-tumor model does to share the compiled step).
  """
  names, healthy = [], []
  for d in shard_dirs:
    manifest = arrayrecord_io.read_manifest(d)
    name = manifest["sources"][0]
    known = set(manifest["known_classes"][name])
    names.append(name)
    healthy.append(LIVER in known and LIVER_TUMOR not in known)
  wanted = tuple(config.synth.sources)
  if wanted:
    missing = sorted(set(wanted) - set(names))
    if missing:
      raise ValueError(f"config.synth.sources names {missing}, not among the training sources "
                       f"{names}")
    out = np.asarray([n in wanted for n in names])
  else:
    out = np.asarray(healthy)
  if not out.any() and not config.synth.get("none_eligible_ok", False):
    raise ValueError(f"config.synth.enabled but no training source is eligible: {names} all "
                     "annotate liver tumors or lack the liver; name sources in "
                     "config.synth.sources")
  return out


def mark_eligible(host_batch: dict, eligible: np.ndarray) -> dict:
  """Adds the host-side field synth_ok (B,) uint8 = eligible[source]."""
  return {**host_batch, "synth_ok": eligible[np.asarray(host_batch["source"])].astype(np.uint8)}


def synthesize_window_batch(key: jax.Array, batch: dict, spacing, cfg: SynthConfig) -> dict:
  """Tumors into the eligible windows of a host batch (jittable; see the module docstring).

  batch: image (B, X, Y, Z) float16/32 in [0, 1], label (B, X, Y, Z) uint32 bitmask,
  annotated (B, 32), synth_ok (B,). Returns the batch with image (float32), label and
  annotated updated, plus synth_tumor_voxels (B,) int32 (what was inserted, for metrics/tests).
  """
  image = batch["image"].astype(jnp.float32)
  label = batch["label"]
  ok = batch["synth_ok"].astype(jnp.bool_)                               # (B,)
  liver = (label & jnp.uint32(taxonomy.bit(LIVER))) != 0                   # (B, X, Y, Z)
  new_image, tumor, _ = synthesize_batch(key, image, liver, tuple(spacing), cfg, eligible=ok)
  # The generator clips tumors to the liver, so the liver bit is already set under them.
  label = label | jnp.where(tumor, jnp.uint32(taxonomy.bit(LIVER_TUMOR)), jnp.uint32(0))
  annotated = jnp.asarray(batch["annotated"])
  annotated = annotated.at[:, LIVER_TUMOR - 1].set(
      jnp.where(ok, jnp.ones((), annotated.dtype), annotated[:, LIVER_TUMOR - 1]))
  return {**batch, "image": new_image, "label": label, "annotated": annotated,
          "synth_tumor_voxels": jnp.sum(tumor, axis=(1, 2, 3)).astype(jnp.int32)}
