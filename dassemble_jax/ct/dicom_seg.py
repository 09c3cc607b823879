"""DICOM-SEG out: a predicted label map as a DICOM Segmentation of the series it was read from.

highdicom builds the object: one frame per source slice (in the series' slice order, so frame k
lies on slice k and references its SOP instance), one segment per class present, each segment
labelled with the class's name (`ct.taxonomy`), coded with SNOMED CT concepts from pydicom's
code dictionary (organs as anatomical structures; tumors and the kidney cyst as morphologically
abnormal structures in their host organ), coloured as the viewer sidecars (`label_tables`), and
produced by an 'Artificial Intelligence' algorithm named dassemble_jax. Patient, study and frame
of reference come from the source series, so PACS viewers (OHIF, 3D Slicer's DICOM module)
show it over the CT.

Segments of the classes where left and right differ (kidney_right / kidney_left, ...) share the
organ's code; their labels say the side. The file is written atomically and read back with
highdicom's own reader before it is renamed into place.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Sequence

import highdicom as hd
import numpy as np
from pydicom.sr.codedict import codes

from dassemble_jax import __version__, atomic
from dassemble_jax.ct import label_tables, taxonomy
from dassemble_jax.ct.nifti_io import CaseError

_SCT = codes.SCT
# Universal id -> (SNOMED CT property type, host organ for lesions or None).
_CODES = {
    1: (_SCT.Spleen, None), 2: (_SCT.Kidney, None), 3: (_SCT.Kidney, None),
    4: (_SCT.Gallbladder, None), 5: (_SCT.Esophagus, None), 6: (_SCT.Liver, None),
    7: (_SCT.Stomach, None), 8: (_SCT.Aorta, None), 9: (_SCT.InferiorVenaCava, None),
    10: (_SCT.Vein, None), 11: (_SCT.Pancreas, None), 12: (_SCT.AdrenalGland, None),
    13: (_SCT.AdrenalGland, None), 14: (_SCT.Duodenum, None), 15: (_SCT.BloodVessel, None),
    16: (_SCT.Lung, None), 17: (_SCT.Lung, None), 18: (_SCT.Colon, None),
    19: (_SCT.SmallIntestine, None), 20: (_SCT.Rectum, None), 21: (_SCT.Bladder, None),
    22: (_SCT.Prostate, None), 23: (_SCT.HeadOfFemur, None), 24: (_SCT.HeadOfFemur, None),
    25: (_SCT.CeliacAxis, None),
    26: (_SCT.Neoplasm, _SCT.Kidney), 27: (_SCT.Neoplasm, _SCT.Liver),
    28: (_SCT.Neoplasm, _SCT.Pancreas), 29: (_SCT.Neoplasm, _SCT.Liver),
    30: (_SCT.Neoplasm, _SCT.Lung), 31: (_SCT.Neoplasm, _SCT.Colon),
    32: (_SCT.Cyst, _SCT.Kidney),
}
_VERSION = __version__


def _segment(number: int, class_id: int, algorithm) -> hd.seg.SegmentDescription:
  cls = taxonomy.CLASSES[class_id - 1]
  prop, host = _CODES[class_id]
  r, g, b = (int(v) for v in label_tables.palette()[class_id])
  return hd.seg.SegmentDescription(
      segment_number=number, segment_label=cls.name,
      segmented_property_category=(codes.cid7150.MorphologicallyAbnormalStructure if host
                                   else codes.cid7150.AnatomicalStructure),
      segmented_property_type=prop,
      anatomic_regions=[host] if host is not None else None,
      algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
      algorithm_identification=algorithm,
      display_color=hd.color.CIELabColor.from_rgb(r, g, b))


def build(labels: np.ndarray, source_headers: Sequence, *, series_number: int = 9901,
          series_description: str = "dassemble_jax segmentation") -> hd.seg.Segmentation:
  """(X, Y, Z) uint8 universal ids on the series' own grid (X columns, Y rows, Z its slices in
  order, as `dicom_io.read_series` returns them) -> a highdicom Segmentation.

  Every class present becomes a segment (segment numbers 1.. in id order); a map with no class
  gives a Segmentation with no segment, which DICOM does not allow: refused.
  """
  labels = np.asarray(labels)
  n_cols, n_rows, n_slices = labels.shape
  if n_slices != len(source_headers):
    raise ValueError(f"label map has {n_slices} slices, the series {len(source_headers)}")
  first = source_headers[0]
  if (int(first.Rows), int(first.Columns)) != (n_rows, n_cols):
    raise ValueError(f"label map slices are {n_cols} x {n_rows}, the series' "
                     f"{first.Columns} x {first.Rows} (columns x rows)")
  ids = [int(v) for v in np.unique(labels) if v != 0]
  unknown = [v for v in ids if v not in _CODES]
  if unknown:
    raise ValueError(f"label values {unknown} are not universal class ids 1..32")
  algorithm = hd.AlgorithmIdentificationSequence(
      name="dassemble_jax Universal Model", family=codes.cid7162.ArtificialIntelligence,
      version=_VERSION)
  segments = [_segment(k, class_id, algorithm) for k, class_id in enumerate(ids, 1)]
  # Label values -> segment numbers 1..n; frames (slices, rows, columns) in series order.
  lut = np.zeros(256, np.uint8)
  lut[ids] = np.arange(1, len(ids) + 1)
  frames = np.ascontiguousarray(lut[labels].transpose(2, 1, 0))
  return hd.seg.Segmentation(
      source_images=list(source_headers), pixel_array=frames,
      segmentation_type=hd.seg.SegmentationTypeValues.BINARY, segment_descriptions=segments,
      series_instance_uid=hd.UID(), series_number=series_number, sop_instance_uid=hd.UID(),
      instance_number=1, manufacturer="dassemble_jax", manufacturer_model_name="Universal Model",
      software_versions=_VERSION, device_serial_number="0",
      series_description=series_description, omit_empty_frames=True)


def write(path: str | os.PathLike, labels: np.ndarray, source_headers: Sequence, **kwargs
          ) -> pathlib.Path:
  """Writes `build(...)` to `path` atomically, after reading it back with highdicom's reader
  (`hd.seg.segread`) and checking its segments and referenced series. CaseError naming the
  path when the label map has no class or the written object does not read back."""
  path = pathlib.Path(path)
  if not np.any(np.asarray(labels)):
    raise CaseError(f"{path}: no class was found in the scan: a DICOM-SEG needs at least one "
                    "segment (the NIfTI label map is written)")
  seg = build(labels, source_headers, **kwargs)
  with atomic.temporary_path(path) as tmp:
    seg.save_as(tmp)
    check(tmp, source_headers, [s.SegmentLabel for s in seg.SegmentSequence])
  return path


def check(path: str | os.PathLike, source_headers: Sequence, segment_labels: Sequence[str]
          ) -> hd.seg.Segmentation:
  """Reads a DICOM-SEG back with highdicom; CaseError unless it holds `segment_labels` and
  references the source series."""
  try:
    seg = hd.seg.segread(path)
  except Exception as e:  # highdicom and pydicom raise many types
    raise CaseError(f"{path}: the DICOM-SEG written does not read back: {type(e).__name__}: "
                    f"{e}") from e
  got = [seg.get_segment_description(k).segment_label for k in seg.segment_numbers]
  series = str(source_headers[0].SeriesInstanceUID)
  referenced = {str(s.SeriesInstanceUID) for s in seg.ReferencedSeriesSequence}
  if got != list(segment_labels) or referenced != {series}:
    raise CaseError(f"{path}: the DICOM-SEG written reads back with segments {got} referencing "
                    f"series {sorted(referenced)}, expected {list(segment_labels)} and {series}")
  return seg
