"""The Universal Model's 32-class taxonomy (25 organs, 6 tumor types, kidney cyst).

The order is the paper's and the reference's (`shared/reference/universal_model.md`): output
channel k of the model is class id k + 1. Never reorder: checkpoints, text-embedding tables and
the shards' label bitmasks all index classes by this id.

Classes overlap (a liver tumor voxel is also liver), so a voxel carries a set of classes; shards
store that set as a uint32 bitmask, bit k = class id k + 1 (packed and unpacked by
`dassemble_jax.ct.bitmask`).
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class CtClass:
  """One class of the taxonomy."""
  id: int             # 1-based; channel id - 1 of the model output, bit id - 1 of the bitmask
  name: str           # stable snake_case key used in dataset tables and configs
  display_name: str   # for plots and reports
  prompt_name: str    # what the text encoder reads, inside PROMPT_TEMPLATE

  @property
  def prompt(self) -> str:
    return PROMPT_TEMPLATE.format(self.prompt_name)

  @property
  def is_tumor(self) -> bool:
    return self.id in TUMOR_IDS


# The anchor's prompt ("A computerized tomography of a {}"): the class code is an embedding of
# this sentence, computed once offline.
PROMPT_TEMPLATE = "A computerized tomography of a {}."

_TABLE = (
    (1, "spleen", "Spleen", "spleen"),
    (2, "kidney_right", "Right Kidney", "right kidney"),
    (3, "kidney_left", "Left Kidney", "left kidney"),
    (4, "gallbladder", "Gallbladder", "gallbladder"),
    (5, "esophagus", "Esophagus", "esophagus"),
    (6, "liver", "Liver", "liver"),
    (7, "stomach", "Stomach", "stomach"),
    (8, "aorta", "Aorta", "aorta"),
    (9, "postcava", "Postcava (IVC)", "postcava"),
    (10, "portal_splenic_vein", "Portal Vein and Splenic Vein", "portal vein and splenic vein"),
    (11, "pancreas", "Pancreas", "pancreas"),
    (12, "adrenal_gland_right", "Right Adrenal Gland", "right adrenal gland"),
    (13, "adrenal_gland_left", "Left Adrenal Gland", "left adrenal gland"),
    (14, "duodenum", "Duodenum", "duodenum"),
    (15, "hepatic_vessel", "Hepatic Vessel", "hepatic vessel"),
    (16, "lung_right", "Right Lung", "right lung"),
    (17, "lung_left", "Left Lung", "left lung"),
    (18, "colon", "Colon", "colon"),
    (19, "intestine", "Intestine", "intestine"),
    (20, "rectum", "Rectum", "rectum"),
    (21, "bladder", "Bladder", "bladder"),
    (22, "prostate", "Prostate", "prostate"),
    (23, "femur_head_left", "Left Head of Femur", "left head of femur"),
    (24, "femur_head_right", "Right Head of Femur", "right head of femur"),
    (25, "celiac_trunk", "Celiac Trunk", "celiac trunk"),
    (26, "kidney_tumor", "Kidney Tumor", "kidney tumor"),
    (27, "liver_tumor", "Liver Tumor", "liver tumor"),
    (28, "pancreas_tumor", "Pancreas Tumor", "pancreas tumor"),
    (29, "hepatic_vessel_tumor", "Hepatic Vessel Tumor", "hepatic vessel tumor"),
    (30, "lung_tumor", "Lung Tumor", "lung tumor"),
    (31, "colon_tumor", "Colon Tumor", "colon tumor"),
    (32, "kidney_cyst", "Kidney Cyst", "kidney cyst"),
)

CLASSES: tuple[CtClass, ...] = tuple(CtClass(*row) for row in _TABLE)
NUM_CLASSES = 32
BY_NAME: dict[str, CtClass] = {c.name: c for c in CLASSES}

# Lesions: the classes that make a source a "tumor source" (background/organ/tumor crop centres
# 1:1:5) and that the crop sampler treats as tumor. The kidney cyst is a lesion too.
TUMOR_IDS = frozenset(range(26, 33))

# Left/right pairs that some datasets annotate as one label: name -> (right id, left id). Such a
# label is split by the two largest connected components (`preprocess.split_pair_label`).
PAIRS: dict[str, tuple[int, int]] = {
    "kidney": (2, 3),
    "adrenal_gland": (12, 13),
    "lung": (16, 17),
    "femur_head": (23, 24),
}

# Host organ of each lesion: its voxels are also voxels of the host (the organ channel contains
# its tumors). A str names a pair of `PAIRS`. Hepatic vessel tumors (MSD Task08) lie in the
# liver, not inside the vessels.
TUMOR_HOST: dict[int, int | str] = {
    26: "kidney", 27: 6, 28: 11, 29: 6, 30: "lung", 31: 18, 32: "kidney",
}


def class_by_name(name: str) -> CtClass:
  try:
    return BY_NAME[name]
  except KeyError:
    raise KeyError(f"unknown class {name!r}; known: {sorted(BY_NAME)}") from None


def prompts() -> list[str]:
  """One prompt per class, in id order (the rows of the text-embedding table)."""
  return [c.prompt for c in CLASSES]


def bit(class_id: int) -> np.uint32:
  """The bitmask bit of a class id (1-based)."""
  if not 1 <= class_id <= NUM_CLASSES:
    raise ValueError(f"class id {class_id} outside 1..{NUM_CLASSES}")
  return np.uint32(1) << np.uint32(class_id - 1)


def annotated_vector(ids) -> np.ndarray:
  """(32,) uint8: 1 where the class id is in `ids`."""
  out = np.zeros(NUM_CLASSES, np.uint8)
  for i in ids:
    if not 1 <= i <= NUM_CLASSES:
      raise ValueError(f"class id {i} outside 1..{NUM_CLASSES}")
    out[i - 1] = 1
  return out
