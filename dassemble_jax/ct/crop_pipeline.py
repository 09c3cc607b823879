"""The 3D input pipeline: Grain over converted CT shards, crops chosen on the host.

  per source: RecordSource -> this process's shard -> shuffle(seed) -> repeat
  -> mix(sources, weights)               per-source sampling weights (uniform by default)
  -> SampleWindow (RandomMap)            crop centre (fg:bg 2:1, or bg:organ:tumor 1:1:5 for
                                         tumor sources) and a zero-padded window around it
  -> batch -> [worker processes] -> iterator (get_state/set_state: checkpointable)

What the host sends is small and compact: a window of `crop_size + 2 * jitter` voxels per axis,
image float16 and label as the uint32 class bitmask (4 bytes/voxel instead of 32 channels).
`augment.augment_batch`, jitted on the device, then takes the final random crop inside the
window, rotates, zooms, shifts intensities and unpacks the bitmask into 32 channels.

Batch from the host (B = per-process batch, W = window, RAS voxel order x, y, z):
  image (B, Wx, Wy, Wz) float16 in [0, 1]      label (B, Wx, Wy, Wz) uint32 bitmask
  annotated (B, 32) uint8    source (B,) int32 (index into the pipeline's sources)
  zoom_ok (B,) uint8 (the source allows the zoom augmentation)
  centre_kind (B,) int8 (0 background, 1 foreground/organ, 2 tumor)   case_index (B,) int32
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence

import grain
import jax
import numpy as np

from dassemble_jax.data import arrayrecord_io
from dassemble_jax.data.pipeline import RecordSource

BACKGROUND, FOREGROUND, TUMOR = 0, 1, 2


@dataclasses.dataclass(frozen=True)
class CropConfig:
  """How crop centres are chosen and how large the host window is."""
  crop_size: tuple[int, int, int] = (96, 96, 96)
  jitter: int = 0                       # extra voxels per side for the on-device random crop
  fg_bg: tuple[float, float] = (2.0, 1.0)                 # non-tumor sources
  bg_organ_tumor: tuple[float, float, float] = (1.0, 1.0, 5.0)   # tumor sources
  background_tries: int = 10            # uniform draws to find a voxel with no label
  # Crops drawn from each record read (the anchor's num_samples=2): reading and decompressing
  # a whole volume costs ~20x more than cutting a window from it, so this multiplies crops/s.
  crops_per_record: int = 1

  @property
  def window(self) -> tuple[int, int, int]:
    return tuple(int(c) + 2 * self.jitter for c in self.crop_size)


class _TagSource(grain.transforms.Map):
  """Adds the pipeline's source index and the source's flags to each record."""

  def __init__(self, index: int, has_tumor: bool, zoom_ok: bool):
    self.index, self.has_tumor, self.zoom_ok = index, has_tumor, zoom_ok

  def map(self, record):
    return {**record, "source": np.int32(self.index), "has_tumor": np.bool_(self.has_tumor),
            "zoom_ok": np.uint8(self.zoom_ok)}

  def __repr__(self):
    return f"_TagSource({self.index}, {self.has_tumor}, {self.zoom_ok})"


def choose_centre(record: Mapping[str, np.ndarray], cfg: CropConfig,
                  rng: np.random.Generator) -> tuple[np.ndarray, int]:
  """A crop centre (3,) int and its kind. Missing categories fall back: tumor -> organ -> fg
  -> background (a case of a tumor source may have no tumor)."""
  shape = record["label"].shape
  if record["has_tumor"]:
    p = np.asarray(cfg.bg_organ_tumor, np.float64)
    kind = ("bg", "organ", "tumor")[rng.choice(3, p=p / p.sum())]
  else:
    p = np.asarray(cfg.fg_bg, np.float64)
    kind = ("fg", "bg")[rng.choice(2, p=p / p.sum())]
  chain = {"tumor": ("tumor", "organ", "fg"), "organ": ("organ", "fg"), "fg": ("fg",),
           "bg": ()}[kind]
  for name in chain:
    points = record[f"centres_{name}"]
    if len(points):
      return points[rng.integers(len(points))].astype(np.int64), (
          TUMOR if name == "tumor" else FOREGROUND)
  label = record["label"]
  for _ in range(cfg.background_tries):
    centre = np.array([rng.integers(n) for n in shape])
    if label[tuple(centre)] == 0:
      break
  return centre, BACKGROUND


def window_starts(centre: np.ndarray, shape, window) -> np.ndarray:
  """Window start per axis: centred on `centre`, shifted inside the volume where it fits, and
  centred on the volume (padded both sides) where the volume is smaller than the window."""
  starts = []
  for c, n, w in zip(centre, shape, window):
    starts.append(min(max(int(c) - w // 2, 0), n - w) if n >= w else -((w - n) // 2))
  return np.asarray(starts)


def extract_window(volume: np.ndarray, starts, window) -> np.ndarray:
  """volume[starts : starts + window] with zeros outside the volume."""
  out = np.zeros(window, volume.dtype)
  src, dst = [], []
  for s, n, w in zip(starts, volume.shape, window):
    lo, hi = max(s, 0), min(s + w, n)
    src.append(slice(lo, hi))
    dst.append(slice(lo - s, hi - s))
  out[tuple(dst)] = volume[tuple(src)]
  return out


class SampleWindow(grain.transforms.RandomMap):
  """Record -> a fixed-size window around a sampled crop centre (host side, cheap slicing)."""

  def __init__(self, cfg: CropConfig):
    self.cfg = cfg

  def random_map(self, record, rng: np.random.Generator):
    if self.cfg.crops_per_record == 1:
      return self._one(record, rng)
    crops = [self._one(record, rng) for _ in range(self.cfg.crops_per_record)]
    return {k: np.stack([c[k] for c in crops]) for k in crops[0]}  # (K, ...) per field

  def _one(self, record, rng: np.random.Generator):
    centre, kind = choose_centre(record, self.cfg, rng)
    window = self.cfg.window
    starts = window_starts(centre, record["label"].shape, window)
    return {
        "image": extract_window(record["image"], starts, window),
        "label": extract_window(record["label"], starts, window),
        "annotated": np.asarray(record["annotated"], np.uint8),
        "source": np.int32(record["source"]),
        "zoom_ok": np.uint8(record["zoom_ok"]),
        "centre_kind": np.int8(kind),
        "case_index": np.int32(record["case_index"]),
    }

  def __repr__(self):
    return f"SampleWindow({self.cfg})"


class _MergeCrops(grain.transforms.Map):
  """(B / K, K, ...) -> (B, ...): the K crops of each record become batch entries."""

  def map(self, batch):
    return {k: v.reshape(-1, *v.shape[2:]) for k, v in batch.items()}


def _shard(ds: grain.MapDataset, index: int, count: int) -> grain.MapDataset:
  """This process's share of one source: every count-th case; a source with fewer cases than
  processes gives each process one case (cases then repeat across processes)."""
  n = len(ds)
  if n >= count:
    return ds[index::count]
  return ds[index % n:index % n + 1]


def make_ct_dataset(dataset_dirs: Sequence[str | os.PathLike], *, split: str = "train",
                    batch_size: int, seed: int, crop: CropConfig = CropConfig(),
                    weights: Sequence[float] | None = None,
                    shard_index: int | None = None, shard_count: int | None = None,
                    num_workers: int = 0, prefetch: int = 2) -> grain.IterDataset:
  """An infinite IterDataset of per-process host batches (see the module docstring).

  `dataset_dirs`: one converted dataset per source (each written by `convert`); `weights`: the
  sampling weight of each source (default uniform: every source is drawn equally often, however
  many cases it has, as the anchor does). `batch_size` is this process's batch. Sharding is by
  JAX process unless `shard_index`/`shard_count` are given. `num_workers > 0` runs the reading
  and window extraction in that many worker processes.
  """
  if not dataset_dirs:
    raise ValueError("make_ct_dataset needs at least one dataset folder")
  if weights is not None and len(weights) != len(dataset_dirs):
    raise ValueError(f"{len(weights)} weights for {len(dataset_dirs)} sources")
  if (shard_index is None) != (shard_count is None):
    raise ValueError("pass both shard_index and shard_count, or neither (shard by JAX process)")
  if shard_count is None:
    shard_index, shard_count = jax.process_index(), jax.process_count()
  sources = []
  for i, path in enumerate(dataset_dirs):
    manifest = arrayrecord_io.read_manifest(path)
    if manifest.get("kind") != "dassemble_jax.ct/1":
      raise ValueError(f"{path}: not a converted CT dataset (manifest kind "
                       f"{manifest.get('kind')!r})")
    name = manifest["sources"][0]
    ds = grain.MapDataset.source(RecordSource(path, split))
    ds = _shard(ds, shard_index, shard_count).shuffle(seed=seed + 7919 * i).repeat()
    sources.append(ds.map(_TagSource(i, bool(manifest["has_tumor"][name]),
                                     bool(manifest["zoom_augment"][name]))))
  mixed = grain.MapDataset.mix(sources, weights) if len(sources) > 1 else sources[0]
  k = crop.crops_per_record
  if batch_size % k:
    raise ValueError(f"batch_size {batch_size} must be a multiple of crops_per_record {k}")
  ds = mixed.random_map(SampleWindow(crop), seed=seed).batch(batch_size // k,
                                                             drop_remainder=True)
  if k > 1:
    ds = ds.map(_MergeCrops())
  it = ds.to_iter_dataset(grain.ReadOptions(num_threads=2, prefetch_buffer_size=prefetch))
  if num_workers > 0:
    it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers,
                                                     per_worker_buffer_size=prefetch))
  return it


def source_names(dataset_dirs: Sequence[str | os.PathLike]) -> list[str]:
  return [arrayrecord_io.read_manifest(p)["sources"][0] for p in dataset_dirs]
