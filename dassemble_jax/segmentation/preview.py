"""A PNG per predicted scan (`predict --preview`): axial, coronal and sagittal overlays.

Radiological convention, as 3D Slicer and ITK-SNAP show CT: axial and coronal views have the
patient's right on the image's left (axial seen from the feet, anterior up; coronal seen from
the front, superior up); the sagittal view has anterior on the left, superior up. The scan is
first viewed in RAS order (`nifti_io.ras_view`: index grows towards the patient's Right,
Anterior, Superior), whatever the file's own axis order, so an LPS-stored scan and its
RAS-stored copy give the same picture. Each view cuts through the slice holding the most
labelled voxels (the volume's middle when nothing was predicted), pixels keep their physical
aspect ratio, and a legend names every class drawn (`ct.label_tables` colours, one per
universal id).
"""

from __future__ import annotations

import os

import numpy as np

from dassemble_jax import atomic
from dassemble_jax.ct import label_tables, nifti_io, taxonomy

# An abdominal soft-tissue window (HU): level 40, width 400.
WINDOW = (-160.0, 240.0)
VIEWS = ("axial", "coronal", "sagittal")
# Each view's (row, column) world directions, to label the image's edges.
_EDGES = {"axial": ("A", "P", "R", "L"), "coronal": ("S", "I", "R", "L"),
          "sagittal": ("S", "I", "A", "P")}


def _slice_index(labels: np.ndarray, axis: int) -> int:
  """The slice along `axis` with the most labelled voxels (the middle one if none)."""
  other = tuple(a for a in range(3) if a != axis)
  counts = np.count_nonzero(labels, axis=other)
  return int(np.argmax(counts)) if counts.any() else labels.shape[axis] // 2


def radiological_views(volume: np.ndarray, labels: np.ndarray, affine: np.ndarray
                       ) -> dict[str, tuple[np.ndarray, np.ndarray, float]]:
  """{view: (image 2D, labels 2D, aspect)} in the radiological convention (module docstring).

  `volume` and `labels` are (X, Y, Z) in the file's own axis order with voxel -> world
  `affine`; aspect = the rows' pixel height / the columns' pixel width (mm), for imshow.
  """
  vol, ras_affine = nifti_io.ras_view(np.asarray(volume), affine)
  lab, _ = nifti_io.ras_view(np.asarray(labels), affine)
  spacing = nifti_io.voxel_sizes(ras_affine)
  out = {}
  # RAS axes: 0 = x (towards the right), 1 = y (front), 2 = z (head). Each 2D cut is transposed
  # to (rows, columns) and both flipped, so the first row is anterior / superior and the first
  # column the patient's right (axial, coronal) or front (sagittal).
  for view, axis, (row_axis, col_axis) in (("axial", 2, (1, 0)), ("coronal", 1, (2, 0)),
                                           ("sagittal", 0, (2, 1))):
    i = _slice_index(lab, axis)
    image, cut = (np.flip(np.take(a, i, axis=axis).T, axis=(0, 1)) for a in (vol, lab))
    out[view] = (image, cut, float(spacing[row_axis] / spacing[col_axis]))
  return out


def _rgb(image: np.ndarray, labels: np.ndarray, colours: np.ndarray) -> np.ndarray:
  """Windowed grey CT with the labels blended in their colours (alpha 0.55)."""
  lo, hi = WINDOW
  grey = np.clip((image.astype(np.float32) - lo) / (hi - lo), 0.0, 1.0)
  rgb = np.repeat(grey[..., None], 3, -1)
  m = labels > 0
  rgb[m] = 0.45 * rgb[m] + 0.55 * colours[labels[m]]
  return rgb


def write_preview(path: str | os.PathLike, volume: np.ndarray, labels: np.ndarray,
                  affine: np.ndarray, title: str = "") -> str:
  """The three overlays side by side with a legend, as one PNG (written atomically)."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  from matplotlib.patches import Patch

  colours = label_tables.palette().astype(np.float32) / 255.0
  views = radiological_views(volume, labels, affine)
  fig, axes = plt.subplots(1, 3, figsize=(12, 4.6))
  for ax, view in zip(axes, VIEWS):
    image, lab, aspect = views[view]
    ax.imshow(_rgb(image, lab, colours), aspect=aspect, interpolation="nearest")
    top, bottom, left, right = _EDGES[view]
    ax.set_title(view, fontsize=9)
    for text, xy in ((top, (0.5, 0.98)), (bottom, (0.5, 0.02)), (left, (0.02, 0.5)),
                     (right, (0.98, 0.5))):
      ax.text(*xy, text, transform=ax.transAxes, color="yellow", fontsize=9, ha="center",
              va="center", fontweight="bold")
    ax.axis("off")
  present = [int(i) for i in np.unique(labels) if i]
  handles = [Patch(color=colours[i], label=taxonomy.CLASSES[i - 1].display_name)
             for i in present]
  if handles:
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 6), fontsize=8,
               frameon=False)
  else:
    fig.text(0.5, 0.03, "no class predicted", ha="center", fontsize=8)
  fig.suptitle(f"{title}  (radiological convention: patient's right on the image left)",
               fontsize=9)
  fig.tight_layout(rect=(0, 0.08, 1, 0.95))
  with atomic.temporary_path(path) as tmp:
    fig.savefig(tmp, dpi=80)
  plt.close(fig)
  return str(path)
