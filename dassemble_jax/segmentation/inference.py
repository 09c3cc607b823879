"""Whole-scan prediction plumbing: NIfTI in, label-map NIfTI (and optional per-class files) out.

The path of one scan, independent of which trained model is used:
  load (file orientation) -> reorient to RAS -> resample to the model spacing -> scale HU ->
  sliding window (probabilities) -> thresholds -> post-processing -> back to the file's own grid
  (nearest) -> write a uint8 label map with the file's affine, so it overlays the input in
  3D Slicer / ITK-SNAP.

NIfTI reading, RAS reorientation, resampling and the HU window are the CT data modules' own
(`dassemble_jax.ct.nifti_io`, `.resample`, `.preprocess.prepare_image`), so training and
prediction see the same voxels; the packed masks are `ct.bitmask`'s. Every write goes to a
temporary name and is renamed: an interrupted run leaves no half-written file.

Host time (benchmarks/predict_host.md): the scan stays int16 and is resampled as a RAS view,
slice by slice, with no full-size float copy (`ct.resample.resample_linear`); thresholds are
applied and the 32 class masks packed into one uint32 per voxel on the device, so 4 bytes a
voxel cross to the host; post-processing and the label map work on the packed masks; the way
back to the file's grid is three 1D gathers of the uint8 label map.

The model is any `apply_fn(params, windows) -> logits` on (n, d, h, w, 1) float32 windows in
[0, 1]; loading a checkpoint into such a function is the caller's (the CLI's) job.

The anchor's conventions (imported checkpoints; `inference_spec.ANCHOR_CONVENTIONS`), each an
option: `resample_rule='monai'` (MONAI Spacing's grid: round((n - 1) * old / new) + 1 voxels,
the first on the file's first voxel; ours rounds n * old / new), `crop_foreground` (predict only
inside the bounding box of voxels above -175 HU, as MONAI's CropForegroundd; zero outside),
`blend='monai'` (MONAI's windows and weights, `sliding_window.py`) and `average='logits'`
(windows' logits are averaged, then the sigmoid; ours averages probabilities).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pathlib
import shutil
import time
import uuid
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from dassemble_jax import atomic, cli
from dassemble_jax.ct import (
  bitmask,
  label_tables,
  nifti_io,
  preprocess,
  resample,
  scan_input,
  taxonomy,
)
from dassemble_jax.ct.nifti_io import CaseError
from dassemble_jax.ct.scan_input import case_name, find_inputs  # inputs: NIfTI, DICOM, zips
from dassemble_jax.segmentation import postprocess as pp
from dassemble_jax.segmentation import sliding_window as sw

# ---------------------------------------------------------------------------------------------
# Reading and writing.


def save_label_map(path: str | os.PathLike, labels: np.ndarray, affine: np.ndarray) -> None:
  """Writes an (X, Y, Z) uint8 label map with `affine` (qform and sform), atomically."""
  labels = np.asarray(labels)
  if labels.ndim != 3:
    raise ValueError(f"{path}: a label map must be 3D, got shape {labels.shape}")
  if labels.dtype != np.uint8 and labels.size and (labels.min() < 0 or labels.max() > 255):
    raise ValueError(f"{path}: labels outside 0..255 do not fit uint8")
  nifti_io.save(path, labels.astype(np.uint8, copy=False), affine)


def save_per_class(directory: str | os.PathLike, masks: np.ndarray, affine: np.ndarray,
                   class_names: Sequence[str], *, compress: bool = True,
                   skip_empty: bool = False, class_bits: Sequence[int] | None = None
                   ) -> list[pathlib.Path]:
  """One uint8 0/1 NIfTI per class, `{directory}/{name}.nii.gz` (or `.nii` uncompressed).

  `masks`: (X, Y, Z, C) bool, or packed (X, Y, Z) unsigned ints, bit k = channel k
  (`ct.bitmask.pack`). `class_bits`: the bit (channel) of each name (default: name k is bit k).
  Fast by construction (1.06 -> 0.013 s a file at 512 x 512 x 300,
  benchmarks/per_class_write.md; the anchor took ~6 s): every class's bounding box comes from
  three projections of all classes at once, only the box is read out of `masks` into one reused
  Fortran-ordered (NIfTI's x-fastest) uint8 volume that is zero elsewhere, and the file is
  deflated with ISA-L (`nifti_io.save`).

  The set appears whole or not at all: the files are written into a temporary folder beside
  `directory`, which is renamed onto it at the end (an older set under that name is replaced
  only then); a failure (a full disk) removes the temporary folder and leaves no partial set.
  """
  masks = np.asarray(masks)
  packed = masks.ndim == 3 and masks.dtype.kind == "u"
  bits = list(range(len(class_names))) if class_bits is None else [int(b) for b in class_bits]
  if len(bits) != len(class_names):
    raise ValueError(f"{len(bits)} class bits for {len(class_names)} class names")
  width = 8 * masks.itemsize if packed else masks.shape[-1]
  if packed and max(bits, default=0) >= width:
    raise ValueError(f"{len(class_names)} class names for {8 * masks.itemsize}-bit masks")
  if not packed and (masks.ndim != 4 or (class_bits is None and width != len(class_names))
                     or max(bits, default=0) >= width):
    raise ValueError(f"masks {masks.shape} do not match {len(class_names)} class names")
  directory = pathlib.Path(directory)
  directory.parent.mkdir(parents=True, exist_ok=True)
  tmp = directory.with_name(f".{directory.name}.{uuid.uuid4().hex[:8]}.tmp")
  tmp.mkdir()
  suffix = ".nii.gz" if compress else ".nii"
  try:
    boxes = bitmask.class_boxes(masks, width)
    volume = np.zeros(masks.shape[:3], np.uint8, order="F")
    names = []
    for name, k in zip(class_names, bits):
      box = boxes[k]
      if box is None and skip_empty:
        continue
      if box is not None:
        part = masks[box]
        volume[box] = (part >> part.dtype.type(k)) & 1 if packed else part[..., k]
      nifti_io.save(tmp / f"{name}{suffix}", volume, affine)
      if box is not None:
        volume[box] = 0  # the buffer is all zeros again for the next class
      names.append(f"{name}{suffix}")
    _replace_folder(tmp, directory)
  finally:
    if tmp.exists():
      shutil.rmtree(tmp, ignore_errors=True)
  return [directory / n for n in names]


def _replace_folder(tmp: pathlib.Path, directory: pathlib.Path) -> None:
  """Renames folder `tmp` onto `directory`, an existing one (an older run's) moved aside first."""
  if directory.is_dir():
    old = directory.with_name(f".{directory.name}.{uuid.uuid4().hex[:8]}.old")
    os.replace(directory, old)
    os.replace(tmp, directory)
    shutil.rmtree(old, ignore_errors=True)
  else:
    os.replace(tmp, directory)


# ---------------------------------------------------------------------------------------------
# Grids: the model's (RAS, fixed spacing) and the file's.


@dataclasses.dataclass(frozen=True)
class Grid:
  """A voxel grid: shape (3,) and voxel -> world affine (4, 4)."""
  shape: tuple[int, int, int]
  affine: np.ndarray


def to_model_grid(volume: np.ndarray, affine: np.ndarray, spacing: float | Sequence[float]
                  ) -> tuple[np.ndarray, Grid]:
  """File-orientation HU volume -> ([0, 1] float32 volume in RAS at `spacing` mm, its Grid).

  `preprocess.prepare_image`: the training data's reorientation, linear resampling and HU
  window, reading the (int16) scan as a view, with no full-size float copy but the output.
  """
  out, model_affine = preprocess.prepare_image(volume, affine, spacing)
  return out, Grid(tuple(out.shape), model_affine)


def to_model_grid_monai(volume: np.ndarray, affine: np.ndarray, spacing: float | Sequence[float]
                        ) -> tuple[np.ndarray, Grid]:
  """`to_model_grid` on MONAI Spacing's grid (what the anchor's checkpoints saw): the same
  origin and spacing, round((n - 1) * old / new) + 1 voxels per axis (the edge repeats beyond
  the last input voxel, MONAI's 'border' padding)."""
  ras, ras_affine = nifti_io.ras_view(np.asarray(volume), affine)
  spacing = np.broadcast_to(np.asarray(spacing, np.float64), (3,))
  old = nifti_io.voxel_sizes(ras_affine)
  scale = spacing / old
  shape = tuple(round((n - 1) * o / s) + 1 for n, o, s in zip(ras.shape, old, spacing))
  new_affine = np.array(ras_affine, np.float64)
  new_affine[:3, :3] = ras_affine[:3, :3] * scale[None, :]
  image = resample.resample_linear(ras, scale, shape, np.float32)
  if np.may_share_memory(image, volume):
    image = image.copy()
  return preprocess.scale_hu(image, in_place=True), Grid(shape, new_affine)


def foreground_box(volume: np.ndarray) -> tuple[slice, slice, slice] | None:
  """Bounding box of the voxels > 0 (MONAI CropForegroundd's default on the [0, 1] image:
  HU above -175); None when there are none."""
  box = []
  for axis in range(3):
    other = tuple(a for a in range(3) if a != axis)
    idx = np.flatnonzero(np.any(volume > 0, axis=other))
    if idx.size == 0:
      return None
    box.append(slice(int(idx[0]), int(idx[-1]) + 1))
  return tuple(box)


def to_original_grid(data: np.ndarray, model: Grid, original: Grid) -> np.ndarray:
  """Nearest-neighbour resampling of (X, Y, Z[, C]) `data` on `model` onto `original` (0 outside).

  `ct.resample.to_original_grid`: for the usual axis-aligned grids three 1D gathers, the 3D
  result Fortran-ordered (as NIfTI stores it).
  """
  return resample.to_original_grid(data, model.affine, original.affine, original.shape)


# ---------------------------------------------------------------------------------------------
# Prediction.


@jax.jit
def _threshold_on_device(probs, thresholds):
  return probs > thresholds


@jax.jit
def _threshold_bits_on_device(probs, thresholds):
  """(X, Y, Z, C <= 32) probabilities -> (X, Y, Z) uint32, bit k = probs[..., k] > thresholds[k]."""
  return bitmask.pack_jax(probs > thresholds)


def predict_volume(apply_fn: Callable[[Any, jax.Array], jax.Array], volume: np.ndarray, *,
                   params: Any = None, window: Sequence[int] = (96, 96, 96),
                   overlap: float = 0.5, sw_batch_size: int = 4, sigma_scale: float = 0.125,
                   thresholds: float | Sequence[float] = 0.5, affine: np.ndarray | None = None,
                   postprocess: bool = True, accumulate_on: sw.Accumulate = "auto",
                   packed: bool | None = False, blend: sw.Blend = "gaussian",
                   average: str = "probs", **postprocess_kwargs) -> np.ndarray:
  """Sliding-window probabilities -> thresholds -> post-processing: (X, Y, Z, C) bool masks.

  Args:
    apply_fn: `apply_fn(params, windows)`, (n, d, h, w, 1) -> (n, d, h, w, C) logits.
    volume: (X, Y, Z) model-ready volume (RAS, model spacing, intensities scaled).
    params: the model's parameters, passed to apply_fn.
    window, overlap, sw_batch_size, sigma_scale, accumulate_on: see
      `sliding_window_inference` (`inference_spec.InferenceSpec` holds a config's).
    thresholds: one probability threshold, or (C,) per class.
    affine: the volume's voxel -> RAS affine (left/right decisions); None = RAS array order.
    postprocess: run `postprocess.postprocess` (LCC, lung split, host-filtered lesions).
    packed: return the masks packed, (X, Y, Z) uint32 with bit k = class k + 1
      (`ct.bitmask.pack`; C <= 32), never unpacking them on the host; None: packed when
      C <= 32.
    blend: window placement and weights, 'gaussian' (ours) or 'monai' (the anchor's).
    average: 'probs' averages the windows' sigmoid probabilities (ours); 'logits' averages
      logits and applies the sigmoid after (MONAI's, the anchor's).
    **postprocess_kwargs: passed on to `postprocess.postprocess`.
  """
  if average not in ("probs", "logits"):
    raise ValueError(f"average must be 'probs' or 'logits', got {average!r}")
  probs = sw.sliding_window_inference(apply_fn, volume, params=params, window=window,
                                      overlap=overlap, sw_batch_size=sw_batch_size,
                                      sigma_scale=sigma_scale, output=average,
                                      accumulate_on=accumulate_on, blend=blend)
  if average == "logits":
    probs = (jax.nn.sigmoid(probs) if isinstance(probs, jax.Array)
             else 1.0 / (1.0 + np.exp(-probs, dtype=np.float32)))
  c = probs.shape[-1]
  if packed and c > 32:
    raise ValueError(f"packed masks hold at most 32 classes, the model has {c}")
  packed = c <= 32 if packed is None else packed
  return _threshold_and_postprocess(probs, thresholds, affine, postprocess, packed,
                                    **postprocess_kwargs)


def _threshold_and_postprocess(probs, thresholds, affine, postprocess: bool, packed: bool,
                               **postprocess_kwargs) -> np.ndarray:
  """(X, Y, Z, C) probabilities (device or host) -> masks, or packed masks when C <= 32."""
  c = probs.shape[-1]
  t = np.broadcast_to(np.asarray(thresholds, np.float32), (c,))
  if c > 32:
    masks = (np.asarray(_threshold_on_device(probs, jnp.asarray(t)))
             if isinstance(probs, jax.Array) else pp.apply_thresholds(probs, t))
    return pp.postprocess(masks, affine, **postprocess_kwargs) if postprocess else masks
  if isinstance(probs, jax.Array):
    # Threshold and pack where the probabilities are: 4 bytes per voxel cross to the host, not
    # one per voxel and class (512 x 512 x 300 x 32 bools took 1.7 s on an H100 host).
    bits = np.array(_threshold_bits_on_device(probs, jnp.asarray(t)))
  else:
    bits = bitmask.pack(pp.apply_thresholds(probs, t))
  if postprocess:
    bits = pp.postprocess_bits(bits, c, affine, copy=False, **postprocess_kwargs)
  return bits if packed else bitmask.unpack(bits, c)


class OutputError(cli.UserError, ValueError):
  """An output cannot be written (read-only folder, full disk, a file where a folder must be);
  the message names the output and the problem."""


@dataclasses.dataclass
class ScanResult:
  """What predict_file wrote and how long each stage took (seconds).

  A folder run that keeps going (`predict_paths(keep_going=True)`) reports a scan that failed
  as a ScanResult with `error` set (one line naming the file and the problem) and nothing
  written for it.
  """
  label_map: pathlib.Path | None
  per_class: list[pathlib.Path]
  timings: dict[str, float]
  input: pathlib.Path | scan_input.Scan | None = None  # a DICOM input: its Scan (names the series)
  sidecar: pathlib.Path | None = None            # <case>.json: classes, input, warnings
  statistics: list[pathlib.Path] = dataclasses.field(default_factory=list)  # JSON, CSV
  preview: pathlib.Path | None = None            # <case>.png
  dicom_seg: pathlib.Path | None = None          # <case>.seg.dcm (DICOM input, `dicom_seg`)
  warnings: list[str] = dataclasses.field(default_factory=list)
  error: str | None = None


def output_stem(out_path: str | os.PathLike) -> pathlib.Path:
  """'OUT/case_001.nii.gz' -> 'OUT/case_001': the sidecars' common prefix."""
  out_path = pathlib.Path(out_path)
  return out_path.with_name(case_name(out_path))


@contextlib.contextmanager
def _writing(target: str | os.PathLike) -> Iterator[None]:
  """OSError while writing `target` -> OutputError '<target>: cannot write it (<problem>)'."""
  try:
    yield
  except OSError as e:
    problem = e.strerror or str(e)
    raise OutputError(f"{target}: cannot write it ({problem})") from e


def remap_bits(bits: np.ndarray, channel_ids: Sequence[int]) -> np.ndarray:
  """(X, Y, Z) packed masks, bit j = channel j -> uint32 bits of universal ids (bit id - 1)."""
  out = np.zeros(bits.shape, np.uint32)
  for j, cid in enumerate(channel_ids):
    out |= ((bits >> bits.dtype.type(j)) & 1).astype(np.uint32) << np.uint32(cid - 1)
  return out


def predict_file(apply_fn: Callable[[Any, jax.Array], jax.Array], in_path: str | os.PathLike,
                 out_path: str | os.PathLike, *, params: Any = None,
                 spacing: float | Sequence[float] = 1.5, class_names: Sequence[str] | None = None,
                 per_class_dir: str | os.PathLike | None = None, compress: bool = True,
                 resample_rule: str = "round", crop_foreground: bool = False,
                 channel_ids: Sequence[int] | None = None,
                 report_ids: Sequence[int] | None = None, sidecar: bool = False,
                 statistics: bool = False, preview: bool = False, dicom_seg: bool = False,
                 **predict_kwargs) -> ScanResult:
  """One scan end to end: read, predict in the model grid, write in the file's grid.

  The label map (uint8 universal ids, lesions over organs) goes to `out_path`; with
  `per_class_dir`, one 0/1 file per class too (needs `class_names`, one per universal id).
  `resample_rule` ('round' | 'monai') and `crop_foreground`: see the module docstring.

  Args:
    channel_ids: the universal id of each of `apply_fn`'s output channels, when it computes a
      subset of the classes (`trained_run`'s `--classes`); None: channel k is id k + 1.
      `thresholds` are per channel. The post-processing runs on the universal ids.
    report_ids: the classes kept, written and reported (default: `channel_ids`, or all);
      others computed only for the post-processing (a lesion's host organ) are dropped.
    sidecar: write `<case>.json` beside the label map: class names and ids, the input, the
      classes found and any warning raised while reading or predicting the scan.
    statistics: write `<case>.statistics.json` and `.csv` (`scan_statistics`).
    preview: write `<case>.png` (`preview`): axial/coronal/sagittal overlays.
    dicom_seg: when the input is a DICOM series, also write `<case>.seg.dcm`, a DICOM-SEG of the
      label map referencing the series (`ct.dicom_seg`); a NIfTI input, or a scan where no
      class was found, gets a warning instead.
  Raises CaseError for an unreadable input, OutputError for an output that cannot be written.
  """
  if resample_rule not in ("round", "monai"):
    raise ValueError(f"resample_rule must be 'round' or 'monai', got {resample_rule!r}")
  timings = {}
  start = time.perf_counter()
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    loaded = scan_input.load(in_path)  # NIfTI or DICOM, its stored dtype (int16 for most CTs)
    volume, affine, series = loaded.data, loaded.affine, loaded.series
    del loaded  # `volume` alone holds the scan (freed below when nothing else reads it)
    original = Grid(tuple(volume.shape), affine)
    to_grid = to_model_grid_monai if resample_rule == "monai" else to_model_grid
    model_volume, model_grid = to_grid(volume, affine, spacing)
    if not (statistics or preview):
      del volume
    timings["load_resample"] = time.perf_counter() - start

    start = time.perf_counter()
    box = foreground_box(model_volume) if crop_foreground else None
    if box is not None:
      corner = np.eye(4)
      corner[:3, 3] = [b.start for b in box]
      inner_affine = model_grid.affine @ corner
      inner = np.ascontiguousarray(model_volume[box])
    else:
      inner_affine, inner = model_grid.affine, model_volume
    post_kwargs = {}
    if channel_ids is not None:
      # A subset of the classes: threshold packed, move the bits to their universal ids, then
      # the post-processing (which names classes by id).
      post_kwargs = {k: predict_kwargs.pop(k) for k in list(predict_kwargs)
                     if k not in _VOLUME_KWARGS}
      post = predict_kwargs.pop("postprocess", True)
      masks = predict_volume(apply_fn, inner, params=params, affine=inner_affine,
                             packed=True, postprocess=False, **predict_kwargs)
      masks = remap_bits(masks, channel_ids)
      if post:
        masks = pp.postprocess_bits(masks, taxonomy.NUM_CLASSES, inner_affine, copy=False,
                                    **post_kwargs)
    else:
      # Packed masks (X, Y, Z) uint32 when the model has <= 32 classes, else (X, Y, Z, C) bool.
      masks = predict_volume(apply_fn, inner, params=params, affine=inner_affine,
                             packed=None, **predict_kwargs)
    if box is not None:  # zero outside the foreground box (MONAI inverts its crop by padding)
      full = np.zeros(model_grid.shape + masks.shape[3:], masks.dtype)
      full[box] = masks
      masks = full
    del model_volume, inner
    timings["predict"] = time.perf_counter() - start
  start = time.perf_counter()
  packed = masks.ndim == 3
  ids = list(report_ids if report_ids is not None else channel_ids if channel_ids is not None
             else range(1, (masks.shape[-1] if not packed else taxonomy.NUM_CLASSES) + 1))
  if packed and (report_ids is not None or channel_ids is not None):
    keep = np.uint32(sum(1 << (i - 1) for i in ids))
    masks &= keep  # host organs computed for the post-processing only
  labels = pp.bits_to_label_map(masks) if packed else pp.masks_to_label_map(masks)
  file_labels = to_original_grid(labels, model_grid, original)
  with _writing(out_path):
    save_label_map(out_path, file_labels, affine)
  written = []
  need_bits = per_class_dir is not None or statistics
  file_masks = to_original_grid(masks, model_grid, original) if need_bits else None
  if per_class_dir is not None:
    if class_names is None or len(class_names) < max(ids):
      raise ValueError("per-class output needs class names, one per universal id")
    # One gather for all classes (packed: 4 bytes a voxel), then one file per class.
    with _writing(per_class_dir):
      written = save_per_class(per_class_dir, file_masks, affine,
                               [class_names[i - 1] for i in ids], compress=compress,
                               class_bits=[i - 1 for i in ids])
  stem = output_stem(out_path)
  # A DICOM input stays a Scan: its str names the series (a folder may hold several).
  scan = in_path if isinstance(in_path, scan_input.Scan) else pathlib.Path(in_path)
  result = ScanResult(pathlib.Path(out_path), written, timings, input=scan,
                      warnings=[f"{in_path}: {w.message}" for w in caught])
  if statistics:
    from dassemble_jax.segmentation import scan_statistics
    bits = file_masks if packed else bitmask.pack(file_masks)
    rows = scan_statistics.class_statistics(bits, volume, affine, ids)
    result.statistics = [stem.with_name(stem.name + ".statistics.json"),
                         stem.with_name(stem.name + ".statistics.csv")]
    with _writing(result.statistics[0]):
      scan_statistics.write(*result.statistics, rows, input=str(in_path),
                            label_map=str(out_path))
  if preview:
    from dassemble_jax.segmentation import preview as preview_png
    result.preview = stem.with_name(stem.name + ".png")
    with _writing(result.preview):
      preview_png.write_preview(result.preview, volume, file_labels, affine,
                                title=pathlib.Path(in_path).name)
  if dicom_seg:
    if series is None:
      result.warnings.append(f"{in_path}: not a DICOM series: no DICOM-SEG written")
    elif not np.any(file_labels):
      result.warnings.append(f"{in_path}: no class found: no DICOM-SEG written")
    else:
      from dassemble_jax.ct import dicom_seg as dicom_seg_io
      result.dicom_seg = stem.with_name(stem.name + ".seg.dcm")
      with _writing(result.dicom_seg):
        dicom_seg_io.write(result.dicom_seg, file_labels, series.headers)
  if sidecar:
    result.sidecar = stem.with_name(stem.name + ".json")
    found = sorted(int(i) for i in np.unique(file_labels) if i)
    with _writing(result.sidecar):
      atomic.write_json(result.sidecar, {
          "input": str(in_path), "label_map": pathlib.Path(out_path).name,
          "classes": {str(i): taxonomy.CLASSES[i - 1].name for i in ids},
          "label_values": label_tables.class_names(),
          "found": {str(i): taxonomy.CLASSES[i - 1].name for i in found},
          "viewer_files": [label_tables.SLICER_FILE, label_tables.ITKSNAP_FILE],
          "warnings": result.warnings})
  timings["write"] = time.perf_counter() - start
  return result


# predict_volume's own keyword arguments; the others go to the post-processing.
_VOLUME_KWARGS = frozenset(("window", "overlap", "sw_batch_size", "sigma_scale", "thresholds",
                            "accumulate_on", "blend", "average", "postprocess"))


def output_names(inputs: Sequence[pathlib.Path], out_dir: str | os.PathLike
                 ) -> list[pathlib.Path]:
  """The label map of each input, `{out_dir}/{case}.nii.gz`; CaseError (one line naming both)
  when two inputs would write the same one (`case.nii` and `case.nii.gz`)."""
  out_dir = pathlib.Path(out_dir)
  seen: dict[str, pathlib.Path] = {}
  for path in inputs:
    name = case_name(path)
    if name in seen:
      raise CaseError(f"{seen[name]} and {path} would both be written to "
                      f"{out_dir / (name + '.nii.gz')}: rename one of them")
    seen[name] = path
  return [out_dir / f"{case_name(p)}.nii.gz" for p in inputs]


def check_output_folder(out_dir: str | os.PathLike) -> pathlib.Path:
  """Creates `out_dir` and checks that a file can be written in it; OutputError otherwise."""
  out_dir = pathlib.Path(out_dir)
  if out_dir.exists() and not out_dir.is_dir():
    raise OutputError(f"{out_dir}: the output is a file, not a folder")
  try:
    out_dir.mkdir(parents=True, exist_ok=True)
    probe = out_dir / f".write_test.{uuid.uuid4().hex[:8]}"
    probe.write_bytes(b"")
    probe.unlink()
  except OSError as e:
    raise OutputError(f"{out_dir}: cannot write in this folder ({e.strerror or e})") from e
  return out_dir


def predict_paths(apply_fn: Callable[[Any, jax.Array], jax.Array], inputs: str | os.PathLike,
                  out_dir: str | os.PathLike, *, per_class: bool = False,
                  class_names: Sequence[str] | None = None, keep_going: bool = False,
                  **kwargs) -> Iterator[ScanResult]:
  """predict_file over a file or a folder: `{out_dir}/{case}.nii.gz` (+ `{out_dir}/{case}/`),
  the `<case>.json` sidecars and, once per folder, the viewer files (`ct.label_tables`).

  Checked before any scan: the inputs exist, no two give the same output name, the output
  folder can be written. `keep_going`: a scan that cannot be read or written is reported as a
  ScanResult with `error` and the run goes on with the next one (default: the error is raised).
  """
  paths = find_inputs(inputs)
  outputs = output_names(paths, out_dir)
  out_dir = check_output_folder(out_dir)
  with _writing(out_dir / label_tables.SLICER_FILE):
    label_tables.write_viewer_files(out_dir)
  kwargs.setdefault("sidecar", True)
  for path, out in zip(paths, outputs):
    name = case_name(path)
    try:
      yield predict_file(apply_fn, path, out, class_names=class_names,
                         per_class_dir=(out_dir / name) if per_class else None, **kwargs)
    except (CaseError, OutputError) as e:
      if not keep_going:
        raise
      yield ScanResult(None, [], {}, input=path, error=str(e))
