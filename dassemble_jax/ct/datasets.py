"""How each public CT dataset's labels map into the universal taxonomy: data, not code.

One `DatasetSpec` per dataset. `labels` maps a local label (a voxel value, or a class name for
TotalSegmentator) to its target(s) in the universal taxonomy:
  * an int: a universal class id (1..32);
  * a str: a left/right pair of `taxonomy.PAIRS` ("kidney"), split per case by the two largest
    connected components in RAS orientation (`preprocess.split_pair_label`);
  * a tuple of those: the voxel belongs to all of them (TotalSegmentator's "kidney_cyst_left"
    is a kidney cyst and part of the left kidney);
  * 0: dropped (a class outside the taxonomy, e.g. CT-ORG's bone).
A label value found in a case but absent from `labels` is an error (a wrong `--dataset`, or a
corrupt file), except where `drop_unlisted` says the dataset has more classes than we map.

`annotated` lists the universal ids every case of the dataset annotates: every other class is
unknown for its cases and excluded from the loss. `optional` ids count as annotated only in the
cases where they occur (BTCV's duodenum exists in its extra cases only).

Tumor voxels are also voxels of their host organ (`taxonomy.TUMOR_HOST`) when the dataset
annotates that organ; `preprocess.map_labels` applies it, so the table does not repeat it.

Adding a dataset: add one `DatasetSpec` to `_SPECS` (pick a layout of `layouts.LAYOUTS`, or the
generic "paired" layout with globs), run `pytest tests/test_ct_datasets.py` (it checks every
entry), then convert it:
  python -m dassemble_jax.ct.convert --dataset NAME --input RAW_DIR --output SHARD_DIR
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from dassemble_jax.ct import taxonomy

Target = int | str | tuple


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """One dataset's label mapping and folder layout."""
  name: str
  description: str
  layout: str                                  # key of layouts.LAYOUTS
  labels: Mapping[Any, Target]                 # local value or class name -> target(s)
  annotated: tuple[int, ...]                   # universal ids annotated in every case
  optional: tuple[int, ...] = ()               # annotated only in cases where they occur
  by_name: bool = False                        # `labels` keyed by class names
  drop_unlisted: bool = False                  # unknown local labels are dropped, not errors
  layout_args: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  zoom_augment: bool = False                   # the anchor zooms (1.3-1.5) the MSD tasks only
  # The names the dataset's own dataset.json gives its labels: convert refuses a folder whose
  # dataset.json names them otherwise (another dataset given under this one's --dataset).
  label_names: Mapping[int, str] = dataclasses.field(default_factory=dict)

  def targets(self, local) -> tuple[Target, ...]:
    """The targets of one local label as a tuple (empty when dropped)."""
    target = self.labels[local]
    items = target if isinstance(target, tuple) else (target,)
    return tuple(t for t in items if t != 0)

  def pair_targets(self) -> set[str]:
    return {t for local in self.labels for t in self.targets(local) if isinstance(t, str)}

  def output_ids(self) -> set[int]:
    """Every universal id this dataset can write (pairs expanded)."""
    ids = set()
    for local in self.labels:
      for t in self.targets(local):
        ids.update(taxonomy.PAIRS[t] if isinstance(t, str) else (t,))
    return ids

  @property
  def has_tumor(self) -> bool:
    return bool(set(self.annotated + self.optional) & taxonomy.TUMOR_IDS)


def _msd(task: str, labels, annotated, description, label_names):
  return DatasetSpec(name=f"msd_{task}", description=description, layout="msd", labels=labels,
                     annotated=annotated, zoom_augment=True,
                     label_names={0: "background", **label_names})


# TotalSegmentator v2 "total" task, by class name (its class_map['total']). Lobes merge into a
# lung per side; small_bowel is the taxonomy's intestine. Its femur_left/right label the whole
# femur (v2 has no separate head): within an abdominal field of view that is the head and neck,
# so we map it to the head of femur; crop it yourself if your scans reach the knees.
_TOTALSEG_LABELS = {
    "spleen": 1, "kidney_right": 2, "kidney_left": 3, "gallbladder": 4, "esophagus": 5,
    "liver": 6, "stomach": 7, "aorta": 8, "inferior_vena_cava": 9,
    "portal_vein_and_splenic_vein": 10, "pancreas": 11, "adrenal_gland_right": 12,
    "adrenal_gland_left": 13, "duodenum": 14,
    "lung_upper_lobe_right": 16, "lung_middle_lobe_right": 16, "lung_lower_lobe_right": 16,
    "lung_upper_lobe_left": 17, "lung_lower_lobe_left": 17,
    "colon": 18, "small_bowel": 19, "urinary_bladder": 21, "prostate": 22,
    "femur_left": 23, "femur_right": 24,
    # The side is known, so the cyst goes into its own kidney explicitly (no pair split).
    "kidney_cyst_right": (32, 2), "kidney_cyst_left": (32, 3),
}

_SPECS = (
    DatasetSpec(
        name="btcv", description="BTCV (Multi-Atlas Labeling Beyond the Cranial Vault), 13 organs",
        layout="paired",
        layout_args={"image_glob": "**/img*.nii*", "label_glob": "**/label*.nii*"},
        labels={0: 0, **{i: i for i in range(1, 14)}, 14: 14},
        annotated=tuple(range(1, 14)), optional=(14,)),
    DatasetSpec(
        name="tcia_pancreas_ct",
        description="TCIA Pancreas-CT multi-organ labels (Gibson et al.: spleen, left kidney, "
                    "gallbladder, esophagus, liver, stomach, pancreas, duodenum); images as "
                    "TCIA distributes them (DICOM folders PANCREAS_0001/...) or NIfTI in images/",
        layout="paired",
        layout_args={"image_glob": ("**/images/*.nii*", "**/PANCREAS_[0-9]*"),
                     "label_glob": "**/label*/*.nii*"},
        labels={0: 0, 1: 1, 2: 3, 3: 4, 4: 5, 5: 6, 6: 7, 7: 11, 8: 14},
        annotated=(1, 3, 4, 5, 6, 7, 11, 14)),
    DatasetSpec(
        name="chaos", description="CHAOS CT liver (converted to NIfTI, liver = 1)",
        layout="paired",
        layout_args={"image_glob": "**/images/*.nii*", "label_glob": "**/labels/*.nii*"},
        labels={0: 0, 1: 6}, annotated=(6,)),
    DatasetSpec(
        name="lits", description="LiTS liver + liver tumor", layout="paired",
        layout_args={"image_glob": "**/volume-*.nii*", "label_glob": "**/segmentation-*.nii*"},
        labels={0: 0, 1: 6, 2: 27}, annotated=(6, 27)),
    DatasetSpec(
        name="kits", description="KiTS21/KiTS23 kidney, tumor, cyst", layout="kits",
        labels={0: 0, 1: "kidney", 2: 26, 3: 32}, annotated=(2, 3, 26, 32)),
    DatasetSpec(
        name="kits19", description="KiTS19 kidney + tumor (no cyst label)", layout="kits",
        labels={0: 0, 1: "kidney", 2: 26}, annotated=(2, 3, 26)),
    DatasetSpec(
        name="word", description="WORD, 16 abdominal organs", layout="paired",
        layout_args={"image_glob": "**/imagesTr/*.nii*", "label_glob": "**/labelsTr/*.nii*"},
        labels={0: 0, 1: 6, 2: 1, 3: 3, 4: 2, 5: 7, 6: 4, 7: 5, 8: 11, 9: 14, 10: 18, 11: 19,
                12: "adrenal_gland", 13: 20, 14: 21, 15: 23, 16: 24},
        annotated=(6, 1, 3, 2, 7, 4, 5, 11, 14, 18, 19, 12, 13, 20, 21, 23, 24)),
    DatasetSpec(
        name="abdomenct_1k", description="AbdomenCT-1K liver, kidney, spleen, pancreas",
        layout="paired",
        layout_args={"image_glob": "**/Case_*_0000.nii*", "label_glob": "**/Case_*.nii*",
                     "label_exclude": r"_0000\.nii"},
        labels={0: 0, 1: 6, 2: "kidney", 3: 1, 4: 11}, annotated=(6, 2, 3, 1, 11)),
    DatasetSpec(
        name="amos", description="AMOS 2022 CT (ids <= 500; the MRI cases are excluded)",
        layout="msd", layout_args={"case_regex": r"amos_0*([1-9]\d{0,1}|[1-4]\d\d|500)$"},
        labels={0: 0, 1: 1, 2: 2, 3: 3, 4: 4, 5: 5, 6: 6, 7: 7, 8: 8, 9: 9, 10: 11, 11: 12,
                12: 13, 13: 14, 14: 21, 15: 22},
        annotated=(1, 2, 3, 4, 5, 6, 7, 8, 9, 11, 12, 13, 14, 21, 22),
        # AMOS's dataset.json, spelling included ("arota").
        label_names={0: "background", 1: "spleen", 2: "right kidney", 3: "left kidney",
                     4: "gall bladder", 5: "esophagus", 6: "liver", 7: "stomach", 8: "arota",
                     9: "postcava", 10: "pancreas", 11: "right adrenal gland",
                     12: "left adrenal gland", 13: "duodenum", 14: "bladder",
                     15: "prostate/uterus"}),
    DatasetSpec(
        name="ct_org", description="CT-ORG liver, bladder, lungs, kidneys (bone, brain dropped)",
        layout="paired",
        layout_args={"image_glob": "**/volume-*.nii*", "label_glob": "**/labels-*.nii*"},
        labels={0: 0, 1: 6, 2: 21, 3: "lung", 4: "kidney", 5: 0, 6: 0},
        annotated=(6, 21, 16, 17, 2, 3)),
    # The last argument: the label names of each task's dataset.json.
    _msd("task03_liver", {0: 0, 1: 6, 2: 27}, (6, 27), "MSD Task03 Liver",
         {1: "liver", 2: "cancer"}),
    _msd("task06_lung", {0: 0, 1: 30}, (30,), "MSD Task06 Lung", {1: "cancer"}),
    _msd("task07_pancreas", {0: 0, 1: 11, 2: 28}, (11, 28), "MSD Task07 Pancreas",
         {1: "pancreas", 2: "cancer"}),
    _msd("task08_hepatic_vessel", {0: 0, 1: 15, 2: 29}, (15, 29), "MSD Task08 Hepatic vessel",
         {1: "Vessel", 2: "Tumour"}),
    _msd("task09_spleen", {0: 0, 1: 1}, (1,), "MSD Task09 Spleen", {1: "spleen"}),
    _msd("task10_colon", {0: 0, 1: 31}, (31,), "MSD Task10 Colon",
         {1: "colon cancer primaries"}),
    DatasetSpec(
        name="totalsegmentator",
        description="TotalSegmentator v2 (117 classes, 'total' task), mapped by class name",
        layout="totalsegmentator", labels=_TOTALSEG_LABELS, by_name=True, drop_unlisted=True,
        annotated=(1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 16, 17, 18, 19, 21, 22, 23,
                   24, 32)),
)

DATASETS: dict[str, DatasetSpec] = {spec.name: spec for spec in _SPECS}


def get(name: str) -> DatasetSpec:
  try:
    return DATASETS[name]
  except KeyError:
    raise KeyError(f"unknown dataset {name!r}; known: {sorted(DATASETS)}") from None


def register(spec: DatasetSpec) -> DatasetSpec:
  """Adds a dataset at run time (the phantom's sources, a user's private set); validated."""
  validate(spec)
  DATASETS[spec.name] = spec
  return spec


def validate(spec: DatasetSpec) -> None:
  """Raises ValueError when an entry is inconsistent (ids, pairs, annotated classes, hosts)."""
  where = f"dataset {spec.name!r}"
  for local in spec.labels:
    for t in spec.targets(local):
      if isinstance(t, str):
        if t not in taxonomy.PAIRS:
          raise ValueError(f"{where}: label {local!r} -> unknown pair {t!r}")
      elif not (isinstance(t, int) and 1 <= t <= taxonomy.NUM_CLASSES):
        raise ValueError(f"{where}: label {local!r} -> {t!r}, not a class id in 1..32")
    if not spec.by_name and not isinstance(local, int):
      raise ValueError(f"{where}: local label {local!r} must be an int (by_name is False)")
  extra = set(spec.label_names) - set(spec.labels)
  if extra:
    raise ValueError(f"{where}: label_names for values {sorted(extra)} that labels do not map")
  known = set(spec.annotated) | set(spec.optional)
  for i in known:
    if not 1 <= i <= taxonomy.NUM_CLASSES:
      raise ValueError(f"{where}: annotated id {i} outside 1..32")
  out = spec.output_ids()
  if out != known:
    raise ValueError(f"{where}: labels write ids {sorted(out)} but annotated+optional are "
                     f"{sorted(known)}; they must agree")
  for tumor in known & taxonomy.TUMOR_IDS:
    host = taxonomy.TUMOR_HOST[tumor]
    if isinstance(host, str) and host not in spec.pair_targets():
      sides = set(taxonomy.PAIRS[host])
      if sides <= known:
        # Both sides annotated separately: the generic rule cannot know the side, the table must.
        for local in spec.labels:
          targets = spec.targets(local)
          if tumor in targets and not sides & set(targets):
            raise ValueError(f"{where}: label {local!r} is class {tumor} inside a left/right "
                             f"pair annotated per side; map it to ({tumor}, side id)")


for _spec in _SPECS:
  validate(_spec)
