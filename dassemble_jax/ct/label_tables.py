"""The universal class ids' names and colours for viewers: one implementation for every writer.

A label map (uint8 universal ids, `ct.taxonomy`) carries no names; these sidecars give them:

  labels.ctbl          3D Slicer color table ('value name R G B A' per line); load it in Slicer's
                       Colors module, or name the label map's color node after it
  labels_itksnap.txt   ITK-SNAP label description (Segmentation > Import Label Descriptions)
  classes.json         {"0": "background", "1": "spleen", ...}

Used by the completion job (its completed label maps) and the predict command (its predicted
ones); `palette` also colours the overlays of both (PNG previews, review pictures).
"""

from __future__ import annotations

import os
import pathlib

import numpy as np

from dassemble_jax import atomic
from dassemble_jax.ct import taxonomy

SLICER_FILE = "labels.ctbl"
ITKSNAP_FILE = "labels_itksnap.txt"
CLASSES_FILE = "classes.json"


def palette(num_classes: int = taxonomy.NUM_CLASSES) -> np.ndarray:
  """(num_classes + 1, 3) uint8 colours; row 0 (background) black. Deterministic."""
  rng = np.random.default_rng(17)
  colours = rng.integers(40, 256, (num_classes + 1, 3)).astype(np.uint8)
  colours[0] = 0
  return colours


def slicer_color_table() -> str:
  """A 3D Slicer color table (.ctbl): 'value name R G B A' per line, value = universal id."""
  colours = palette()
  lines = ["# 3D Slicer color table: universal class ids of dassemble_jax (label map values)"]
  lines.append("0 background 0 0 0 0")
  for c in taxonomy.CLASSES:
    r, g, b = colours[c.id]
    lines.append(f"{c.id} {c.name} {r} {g} {b} 255")
  return "\n".join(lines) + "\n"


def itksnap_label_file() -> str:
  """An ITK-SNAP label description file (IDX R G B A VIS MSH "LABEL" per line)."""
  colours = palette()
  lines = ["################################################",
           "# ITK-SnAP Label Description File: dassemble_jax universal class ids",
           "################################################",
           '    0     0    0    0        0  0  0    "Clear Label"']
  for c in taxonomy.CLASSES:
    r, g, b = colours[c.id]
    lines.append(f'{c.id:5d} {r:5d} {g:4d} {b:4d}        1  1  1    "{c.display_name}"')
  return "\n".join(lines) + "\n"


def class_names() -> dict[str, str]:
  """{"0": "background", "<id>": "<name>", ...}: the label map's values as JSON keys."""
  return {"0": "background", **{str(c.id): c.name for c in taxonomy.CLASSES}}


def write_viewer_files(folder: str | os.PathLike) -> list[pathlib.Path]:
  """labels.ctbl, labels_itksnap.txt and classes.json in `folder` (each written atomically)."""
  folder = pathlib.Path(folder)
  paths = [folder / SLICER_FILE, folder / ITKSNAP_FILE, folder / CLASSES_FILE]
  atomic.write_text(paths[0], slicer_color_table())
  atomic.write_text(paths[1], itksnap_label_file())
  atomic.write_json(paths[2], class_names())
  return paths
