"""A procedural abdomen CT with partial labels: the embedded default when no data is at hand.

Each case is a deformed, randomly sized torso in RAS world millimetres: skin and subcutaneous
fat, an abdominal muscle wall, visceral fat, the spine, femur heads, and the taxonomy's organs
as ellipsoids and tubes with plausible positions and portal-venous HU values, bent by one smooth
random displacement field, blurred (partial volume) and noised; optionally liver, kidney and
pancreas tumors (hypodense spheres inside their organ).

`write_phantom_sources` writes several sources, each in a public dataset's own folder layout and
annotating only that dataset's classes (LiTS-like liver + tumor, KiTS-like kidneys + tumor, an
MSD spleen task, a BTCV-like 13-organ set; and, outside the default four, a healthy-liver
source in the CHAOS layout: liver only, no tumors, for training with synthetic tumors), with a
LPS-style affine and a coarser native
spacing, and converts each through `convert.convert_dataset`: the same path as real data.
Everything is a function of the seed.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from dassemble_jax.ct import convert, datasets, nifti_io

# Organs in painting order (later ones win where shapes overlap): key -> (centre, radii) in body
# half-extents (x: + right, y: + anterior, z: + superior), HU. Tubes have radii[2] = inf.
_INF = np.inf
_ORGANS = (
    ("intestine", (0.0, 0.30, -0.35), (0.50, 0.28, 0.35), 35),
    ("colon", (0.0, 0.05, -0.10), (0.62, 0.45, 0.12), -20),
    ("liver", (0.45, 0.05, 0.50), (0.45, 0.52, 0.42), 100),
    ("spleen", (-0.58, -0.25, 0.45), (0.16, 0.22, 0.24), 110),
    ("stomach", (-0.30, 0.28, 0.50), (0.24, 0.20, 0.22), 25),
    ("gallbladder", (0.32, 0.30, 0.22), (0.08, 0.08, 0.11), 5),
    ("pancreas", (-0.02, -0.05, 0.18), (0.36, 0.07, 0.07), 90),
    ("duodenum", (0.20, 0.00, 0.05), (0.10, 0.09, 0.14), 40),
    ("kidney_right", (0.40, -0.38, 0.05), (0.12, 0.14, 0.24), 160),
    ("kidney_left", (-0.40, -0.38, 0.08), (0.12, 0.14, 0.24), 160),
    ("adrenal_gland_right", (0.24, -0.32, 0.38), (0.04, 0.05, 0.07), 30),
    ("adrenal_gland_left", (-0.24, -0.32, 0.40), (0.04, 0.05, 0.07), 30),
    ("bladder", (0.0, 0.30, -0.86), (0.22, 0.16, 0.13), 10),
    ("femur_head_right", (0.58, -0.05, -0.92), (0.11, 0.11, 0.11), 700),
    ("femur_head_left", (-0.58, -0.05, -0.92), (0.11, 0.11, 0.11), 700),
    ("aorta", (-0.08, -0.28, 0.0), (0.07, 0.07, _INF), 180),
    ("postcava", (0.12, -0.25, 0.0), (0.08, 0.08, _INF), 140),
    ("portal_splenic_vein", (0.05, -0.12, 0.30), (0.40, 0.035, 0.035), 160),
    ("esophagus", (-0.06, -0.30, 0.85), (0.045, 0.045, 0.15), 40),
)
_TUMOR_HOSTS = {"liver_tumor": "liver", "kidney_tumor": ("kidney_right", "kidney_left"),
                "pancreas_tumor": "pancreas"}


@dataclasses.dataclass(frozen=True)
class PhantomCase:
  hu: np.ndarray            # (X, Y, Z) int16, RAS voxel order
  masks: dict               # structure key -> (X, Y, Z) bool
  affine: np.ndarray        # (4, 4) RAS


def make_case(rng: np.random.Generator, shape=(96, 80, 64), spacing=(1.875, 1.875, 2.5),
              tumors: Sequence[str] = ()) -> PhantomCase:
  """One phantom in RAS voxel order. `tumors` names lesions to add ('liver_tumor', ...)."""
  shape = tuple(int(n) for n in shape)
  spacing = np.asarray(spacing, np.float64)
  extent = np.asarray(shape) * spacing
  # Normalised coordinates in [-1, 1] per axis, bent by one smooth random displacement field.
  axes = [np.linspace(-1, 1, n, dtype=np.float32) for n in shape]
  grid = np.stack(np.meshgrid(*axes, indexing="ij"))                        # (3, X, Y, Z)
  # Displacement: a random combination of the first 3x3x3 cosine modes per component, evaluated
  # as one separable contraction (smooth everywhere, and ~50x cheaper than a spline zoom).
  coeffs = rng.normal(0, 0.04, (3, 3, 3, 3)).astype(np.float32) / (1 + np.arange(3))[:, None,
                                                                                    None]
  bases = [np.cos(np.pi * np.arange(3)[None, :] * (a[:, None] + 1) / 2) for a in axes]
  grid += np.einsum("cijk,xi,yj,zk->cxyz", coeffs, *bases, optimize=True).astype(np.float32)
  body_scale = rng.uniform(0.88, 1.0, 2)
  x, y, z = grid[0] / body_scale[0], grid[1] / body_scale[1], grid[2]

  hu = np.full(shape, -1000.0, np.float32)
  r_body = x ** 2 / 0.92 ** 2 + y ** 2 / 0.78 ** 2
  masks = {"body": r_body < 1.0}
  hu[masks["body"]] = -100.0                                        # subcutaneous fat
  muscle = r_body < 0.80
  hu[muscle] = 50.0                                                 # abdominal wall muscle
  hu[r_body < 0.68] = -80.0                                         # visceral fat
  spine = (x ** 2 + (y + 0.55) ** 2) < 0.13 ** 2
  hu[spine] = 350.0
  hu[(x ** 2 + (y + 0.55) ** 2) < 0.08 ** 2] = 200.0               # cancellous core

  for name, centre, radii, value in _ORGANS:
    jitter = rng.normal(0, 0.03, 3)
    size = rng.uniform(0.85, 1.15)
    d = sum(((c - m - j) / (r * size)) ** 2 for c, m, j, r in
            zip((x, y, z), centre, jitter, radii) if np.isfinite(r))
    mask = (d < 1.0) & masks["body"]
    masks[name] = mask
    hu[mask] = value + rng.normal(0, 8)
  # Keep structures disjoint where painting overwrote them (the label maps are single-label).
  taken = np.zeros(shape, bool)
  for name, *_ in reversed(_ORGANS):
    masks[name] &= ~taken
    taken |= masks[name]

  for tumor in tumors:
    hosts = _TUMOR_HOSTS[tumor]
    host = masks[hosts] if isinstance(hosts, str) else np.logical_or.reduce(
        [masks[h] for h in hosts])
    inside = np.argwhere(ndimage.binary_erosion(host, iterations=2))
    lesion = np.zeros(shape, bool)
    if len(inside):
      for _ in range(rng.integers(1, 3)):
        centre = inside[rng.integers(len(inside))]
        radius_mm = rng.uniform(6, 15)
        dist = sum(((o - c) * s) ** 2 for o, c, s in zip(np.ogrid[tuple(map(slice, shape))],
                                                         centre, spacing))
        lesion |= (dist < radius_mm ** 2) & host
    masks[tumor] = lesion
    hu[lesion] -= rng.uniform(40, 70)                                # hypodense

  hu = ndimage.gaussian_filter(hu, 0.6)
  hu += rng.normal(0, 12, shape).astype(np.float32)
  affine = np.diag([*spacing, 1.0])
  affine[:3, 3] = -extent / 2 + spacing / 2
  return PhantomCase(np.clip(np.round(hu), -1024, 3000).astype(np.int16), masks, affine)


# ----------------------------------------------------------------------------------------------
# Sources: (dataset spec to copy, local label value -> phantom structure(s), tumors).

_SOURCES = {
    "phantom_lits": ("lits", {1: ("liver",), 2: ("liver_tumor",)}, ("liver_tumor",)),
    "phantom_kits": ("kits19", {1: ("kidney_right", "kidney_left"), 2: ("kidney_tumor",)},
                     ("kidney_tumor",)),
    "phantom_spleen": ("msd_task09_spleen", {1: ("spleen",)}, ()),
    "phantom_btcv": ("btcv", {1: ("spleen",), 2: ("kidney_right",), 3: ("kidney_left",),
                              4: ("gallbladder",), 5: ("esophagus",), 6: ("liver",),
                              7: ("stomach",), 8: ("aorta",), 9: ("postcava",),
                              10: ("portal_splenic_vein",), 11: ("pancreas",),
                              12: ("adrenal_gland_right",), 13: ("adrenal_gland_left",)}, ()),
    # Healthy livers (like the anchor's CHAOS/BTCV training CTs): the liver annotated, no
    # tumors drawn and no tumor class, for `synth` training. Not a default source.
    "phantom_healthy_liver": ("chaos", {1: ("liver",)}, ()),
}
# The default assembly (the universal job): unchanged when extra sources are added below it.
SOURCE_NAMES = ("phantom_lits", "phantom_kits", "phantom_spleen", "phantom_btcv")
# Every source; a source's index here seeds its cases, so new sources go at the end.
ALL_SOURCE_NAMES = tuple(_SOURCES)


def source_spec(name: str) -> datasets.DatasetSpec:
  """The phantom source's spec: its public dataset's mapping and layout under a new name."""
  base, _, _ = _SOURCES[name]
  spec = dataclasses.replace(datasets.get(base), name=name,
                             description=f"procedural phantom in the {base} layout")
  if name not in datasets.DATASETS:
    datasets.register(spec)
  return spec


def _local_label(case: PhantomCase, table) -> np.ndarray:
  label = np.zeros(case.hu.shape, np.uint8)
  for value, structures in sorted(table.items()):
    for s in structures:
      label[case.masks[s]] = value  # tumors come last: they overwrite their host organ
  return label


def _paths(layout_root: pathlib.Path, base: str, i: int):
  if base == "lits":
    return layout_root / f"volume-{i}.nii.gz", layout_root / f"segmentation-{i}.nii.gz"
  if base.startswith("kits"):
    folder = layout_root / f"case_{i:05d}"
    return folder / "imaging.nii.gz", folder / "segmentation.nii.gz"
  if base.startswith("msd_"):
    return (layout_root / "imagesTr" / f"phantom_{i:03d}.nii.gz",
            layout_root / "labelsTr" / f"phantom_{i:03d}.nii.gz")
  if base == "btcv":
    return (layout_root / "img" / f"img{i:04d}.nii.gz",
            layout_root / "label" / f"label{i:04d}.nii.gz")
  if base == "chaos":
    return (layout_root / "images" / f"liver_{i:03d}.nii.gz",
            layout_root / "labels" / f"liver_{i:03d}.nii.gz")
  raise ValueError(f"no phantom layout for {base!r}")


def write_raw_source(name: str, raw_dir, num_cases: int, seed: int, *, shape=(96, 80, 64),
                     spacing=(1.875, 1.875, 2.5)) -> pathlib.Path:
  """Writes `num_cases` NIfTI pairs of source `name` in its dataset's layout under raw_dir."""
  base, table, tumors = _SOURCES[name]
  root = pathlib.Path(raw_dir)
  source_index = ALL_SOURCE_NAMES.index(name)
  items = []
  for i in range(num_cases):
    rng = np.random.default_rng([seed, source_index, i])
    case = make_case(rng, shape, spacing, tumors)
    image_path, label_path = _paths(root, base, i)
    shape_now = np.asarray(case.hu.shape)
    # Store voxel (0, 0, 0) at the patient's right-posterior corner: x and y flipped.
    lps_affine = case.affine.copy()
    lps_affine[:3, :3] = case.affine[:3, :3] @ np.diag([-1.0, -1.0, 1.0])
    lps_affine[:3, 3] = case.affine[:3, :3] @ np.r_[shape_now[0] - 1, shape_now[1] - 1, 0] \
        + case.affine[:3, 3]
    nifti_io.save(image_path, np.flip(case.hu, (0, 1)), lps_affine)
    nifti_io.save(label_path, np.flip(_local_label(case, table), (0, 1)), lps_affine)
    items.append((image_path, label_path))
  if base.startswith("msd_"):
    meta = {"name": name, "labels": {"0": "background", **{str(k): "+".join(v)
                                                             for k, v in table.items()}},
            "training": [{"image": f"./imagesTr/{p.name}", "label": f"./labelsTr/{q.name}"}
                         for p, q in items]}
    (root / "dataset.json").write_text(json.dumps(meta, indent=1))
  return root


def write_phantom_sources(out_root, num_cases_per_source: int = 4, seed: int = 0, *,
                          sources: Sequence[str] = SOURCE_NAMES, shape=(96, 80, 64),
                          native_spacing=(1.875, 1.875, 2.5), spacing: float = 1.5,
                          workers: int = 0, overwrite: bool = False,
                          progress: bool = False) -> dict[str, pathlib.Path]:
  """Writes each source's raw NIfTI files and converts them; returns {source: shard folder}.

  Layout: out_root/raw/<source>/ (the public dataset's layout) and out_root/shards/<source>/
  (ArrayRecord shards + manifest, ready for `pipeline.make_ct_dataset`).
  """
  out_root = pathlib.Path(out_root)
  result = {}
  for name in sources:
    spec = source_spec(name)
    raw = write_raw_source(name, out_root / "raw" / name, num_cases_per_source, seed,
                           shape=shape, spacing=native_spacing)
    target = out_root / "shards" / name
    convert.convert_dataset(spec, raw, target, spacing=spacing, workers=workers,
                            overwrite=overwrite, seed=seed, progress=progress)
    result[name] = target
  return result
