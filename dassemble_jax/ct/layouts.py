"""Finding the (image, label) pairs of a dataset in its own folder layout.

A layout function takes the dataset's root folder (and the spec's `layout_args`) and returns
`(cases, problems)`: the cases to convert, sorted by id, and `(path, message)` for files that
cannot form a case (a label without its image, a duplicate id); the converter treats problems
like bad cases (fail, or skip and list). Images without a label (test splits) are not cases.

Layouts:
  msd               dataset.json + imagesTr/ + labelsTr/ (MSD tasks, AMOS)
  paired            image and label files matched by the number in their names, found by globs
                    (BTCV img/label, LiTS volume-/segmentation-, CT-ORG, WORD, AbdomenCT-1K);
                    an image may be a DICOM series folder or zip (TCIA Pancreas-CT)
  kits              case_XXXXX/imaging.nii.gz + segmentation.nii.gz
  totalsegmentator  <subject>/ct.nii.gz + <subject>/segmentations/<class>.nii.gz, or a
                    multilabel <subject>/<label_file> read through a class map {value: name}
"""

from __future__ import annotations

import ast
import dataclasses
import json
import pathlib
import re
from collections.abc import Callable, Mapping

from dassemble_jax.ct.nifti_io import CaseError

_NII = re.compile(r"\.nii(\.gz)?$")


@dataclasses.dataclass(frozen=True)
class Case:
  """One case to convert. Exactly one of `label` and `label_files` is set."""
  case_id: str
  image: pathlib.Path
  label: pathlib.Path | None = None
  label_files: tuple[tuple[str, pathlib.Path], ...] = ()   # (class name, binary mask file)
  names: Mapping[int, str] | None = None                   # class map of a multilabel file

  @property
  def files(self) -> list[str]:
    out = [str(self.image)]
    if self.label is not None:
      out.append(str(self.label))
    if self.label_files:
      out.append(str(self.label_files[0][1].parent))
    return out


def _stem(path: pathlib.Path) -> str:
  return _NII.sub("", path.name)


def _is_hidden(path: pathlib.Path) -> bool:
  # MSD's tarballs carry macOS "._name.nii.gz" resource forks: not NIfTI, skip them.
  return any(part.startswith(".") for part in path.parts[-3:])


def _key(path: pathlib.Path) -> str:
  """Pairing key: the last number in the name (img0001 ~ label0001, volume-3 ~ segmentation-3),
  without a trailing nnU-Net modality suffix (_0000); the whole stem when there is no number."""
  stem = re.sub(r"_0000$", "", _stem(path))
  numbers = re.findall(r"\d+", stem)
  return str(int(numbers[-1])) if numbers else stem


def _keep(case_id: str, case_regex: str | None) -> bool:
  return case_regex is None or re.search(case_regex, case_id) is not None


def _is_series(path: pathlib.Path) -> bool:
  """A folder or zip that may hold a DICOM series (read, and checked, by ct/scan_input.py)."""
  return path.is_dir() or (path.is_file() and path.suffix.lower() == ".zip")


def paired(root: pathlib.Path, *, image_glob: str | tuple[str, ...], label_glob: str,
           label_exclude: str | None = None, case_regex: str | None = None):
  """Images and labels found by globs (several for images: any of them), matched by `_key`.

  Images are NIfTI files, or DICOM series folders or zips; labels are NIfTI files."""
  def find(patterns, exclude=None, series=False):
    found = {}
    problems = []
    patterns = (patterns,) if isinstance(patterns, str) else patterns
    for path in sorted({p for pattern in patterns for p in root.glob(pattern)}):
      if _is_hidden(path):
        continue
      if not ((path.is_file() and _NII.search(path.name)) or (series and _is_series(path))):
        continue
      if exclude and re.search(exclude, path.name):
        continue
      key = _key(path)
      if key in found:
        problems.append((str(path), f"same case number as {found[key]}"))
        continue
      found[key] = path
    return found, problems

  images, problems = find(image_glob, None, series=True)
  labels, more = find(label_glob, label_exclude)
  problems += more
  cases = []
  for key, label in labels.items():
    if key not in images:
      problems.append((str(label), f"label without an image (no {image_glob} with number {key})"))
      continue
    case_id = _stem(images[key])
    if _keep(case_id, case_regex):
      cases.append(Case(case_id, images[key], label=label))
  return sorted(cases, key=lambda c: c.case_id), problems


def msd(root: pathlib.Path, *, case_regex: str | None = None, valid_labels=None):
  """MSD layout: dataset.json lists training pairs (paths relative to dataset.json)."""
  candidates = sorted(root.glob("dataset.json")) or sorted(root.glob("*/dataset.json"))
  if not candidates:
    raise CaseError(f"{root}: no dataset.json (expected the MSD layout: dataset.json, imagesTr/, "
                    "labelsTr/)")
  meta_path = candidates[0]
  try:
    meta = json.loads(meta_path.read_text())
    training = meta["training"]
  except (json.JSONDecodeError, KeyError, TypeError) as e:
    raise CaseError(f"{meta_path}: not an MSD dataset.json ({type(e).__name__}: {e})") from e
  if valid_labels is not None and isinstance(meta.get("labels"), dict):
    # A dataset.json that names labels the spec does not know means the wrong --dataset.
    bad = [k for k in meta["labels"] if not (k.isdigit() and int(k) in valid_labels)]
    if bad:
      raise CaseError(f"{meta_path}: label values {bad} ({[meta['labels'][k] for k in bad]}) "
                      f"are outside the dataset's mapping {sorted(valid_labels)}")
  base = meta_path.parent
  cases, problems = [], []
  for entry in training:
    try:
      image = (base / entry["image"]).resolve()
      label = (base / entry["label"]).resolve()
    except (KeyError, TypeError):
      problems.append((str(meta_path), f"training entry {entry!r} lacks image/label"))
      continue
    if _is_hidden(image):
      continue
    case_id = _stem(image)
    if not _keep(case_id, case_regex):
      continue
    cases.append(Case(case_id, image, label=label))
  return sorted(cases, key=lambda c: c.case_id), problems


def kits(root: pathlib.Path, *, case_regex: str | None = None):
  """KiTS: case_XXXXX/imaging.nii.gz + segmentation.nii.gz (cases without one are test cases)."""
  cases = []
  for folder in sorted(root.glob("**/case_*")):
    image, label = folder / "imaging.nii.gz", folder / "segmentation.nii.gz"
    if folder.is_dir() and image.exists() and label.exists() and _keep(folder.name, case_regex):
      cases.append(Case(folder.name, image, label=label))
  return cases, []


def totalsegmentator(root: pathlib.Path, *, class_map: Mapping[int, str] | None = None,
                     label_file: str = "seg.nii.gz", case_regex: str | None = None):
  """TotalSegmentator: one folder per subject with ct.nii.gz and segmentations/*.nii.gz."""
  cases, problems = [], []
  for image in sorted(root.glob("**/ct.nii.gz")):
    subject = image.parent
    if not _keep(subject.name, case_regex):
      continue
    seg_dir = subject / "segmentations"
    if seg_dir.is_dir():
      files = tuple(sorted((_stem(p), p) for p in seg_dir.glob("*.nii*") if not _is_hidden(p)))
      if not files:
        problems.append((str(seg_dir), "no segmentation files"))
        continue
      cases.append(Case(subject.name, image, label_files=files))
    elif (subject / label_file).exists():
      if class_map is None:
        problems.append((str(subject / label_file), "a multilabel file needs --class-map"))
        continue
      cases.append(Case(subject.name, image, label=subject / label_file, names=dict(class_map)))
    else:
      problems.append((str(subject), f"neither segmentations/ nor {label_file}"))
  return cases, problems


LAYOUTS: dict[str, Callable] = {
    "msd": msd, "paired": paired, "kits": kits, "totalsegmentator": totalsegmentator,
}


def read_class_map(path: str | pathlib.Path, key: str = "total") -> dict[int, str]:
  """A class map {value: name} from JSON, or from TotalSegmentator's map_to_binary.py.

  The Python file is parsed with `ast` and only the literal `class_map[key]` is evaluated:
  nothing from the file is imported or executed.
  """
  path = pathlib.Path(path)
  text = path.read_text()
  if path.suffix == ".json":
    raw = json.loads(text)
    raw = raw.get(key, raw) if isinstance(raw, dict) and key in raw else raw
    return {int(k): str(v) for k, v in raw.items()}
  tree = ast.parse(text, filename=str(path))
  for node in tree.body:
    targets = getattr(node, "targets", None) or [getattr(node, "target", None)]
    if any(isinstance(t, ast.Name) and t.id == "class_map" for t in targets):
      if not isinstance(node.value, ast.Dict):
        break
      for k, v in zip(node.value.keys, node.value.values):
        if isinstance(k, ast.Constant) and k.value == key:
          return {int(a): str(b) for a, b in ast.literal_eval(v).items()}
      raise CaseError(f"{path}: class_map has no key {key!r}")
  raise CaseError(f"{path}: no literal `class_map = {{...}}` found")
