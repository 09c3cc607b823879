"""The real abdominal CT of the `totalsegmentator` source distribution, and NIfTI helpers.

A user's own CT and segmentation (--ct, --seg) may be NIfTI files or DICOM series (folders or
zips), read by `ct.scan_input`.

TotalSegmentator 2.18.0's sdist ships a small CT (122 x 101 x 30 voxels of 3 mm) and its
117-class segmentation under tests/reference_files/. The class names live in
totalsegmentator/map_to_binary.py, which is read with `ast` (never imported or executed).
"""

from __future__ import annotations

import ast
import dataclasses
import gzip
import pathlib
import tarfile

import nibabel as nib
import numpy as np

from dassemble_jax import atomic
from dassemble_jax.ct import scan_input
from dassemble_jax.ct.nifti_io import CaseError

TOTALSEG = 'totalsegmentator==2.18.0'
_CT = 'tests/reference_files/example_ct_sm.nii.gz'
_SEG = 'tests/reference_files/example_seg.nii.gz'
_MAP = 'totalsegmentator/map_to_binary.py'


class LiverMaskError(ValueError):
  """The liver mask of a file is missing, empty or too small for tumors."""


@dataclasses.dataclass
class Volume:
  ct: np.ndarray         # (X, Y, Z) as stored
  liver: np.ndarray      # (X, Y, Z) bool
  affine: np.ndarray     # (4, 4)
  spacing: tuple[float, float, float]
  cc_axis: int           # array axis running feet <-> head
  cranial_is_high: bool  # head at the high index along cc_axis
  source: str            # where it came from, for messages
  header: object = None


def class_index(map_source: str, name: str, task: str = 'total') -> int:
  """Label of class `name` in `class_map[task]` of a map_to_binary.py source text."""
  tree = ast.parse(map_source)
  for node in tree.body:
    if (isinstance(node, ast.Assign) and len(node.targets) == 1
        and isinstance(node.targets[0], ast.Name) and node.targets[0].id == 'class_map'
        and isinstance(node.value, ast.Dict)):
      for key, value in zip(node.value.keys, node.value.values):
        if isinstance(key, ast.Constant) and key.value == task:
          classes = ast.literal_eval(value)
          hits = [int(k) for k, v in classes.items() if v == name]
          if len(hits) != 1:
            raise ValueError(f'class {name!r} found {len(hits)} times in class_map[{task!r}]')
          return hits[0]
  raise ValueError(f'no literal class_map[{task!r}] in map_to_binary.py')


def _orientation(affine: np.ndarray) -> tuple[int, bool]:
  codes = nib.aff2axcodes(affine)
  for ax, c in enumerate(codes):
    if c in ('S', 'I'):
      return ax, c == 'S'
  raise ValueError(f'no superior/inferior axis in orientation {codes}')


def make_volume(ct_img, seg_img, liver_labels, source: str, min_voxels: int) -> Volume:
  """Builds a Volume, raising LiverMaskError (naming `source`) when the liver is unusable."""
  ct = np.asarray(ct_img.dataobj)
  seg = np.asarray(seg_img.dataobj)
  if ct.ndim != 3 or ct.shape != seg.shape:
    raise LiverMaskError(f'{source}: CT {ct.shape} and segmentation {seg.shape} must be 3D '
                         'arrays of one shape')
  liver = np.isin(seg, np.asarray(liver_labels))
  n = int(liver.sum())
  if n < min_voxels:
    raise LiverMaskError(f'{source}: the liver mask (labels {list(liver_labels)}) has {n} '
                         f'voxels, fewer than the {min_voxels} needed to place a tumor')
  cc_axis, cranial_high = _orientation(ct_img.affine)
  spacing = tuple(float(z) for z in ct_img.header.get_zooms()[:3])
  return Volume(ct, liver, ct_img.affine, spacing, cc_axis, cranial_high, source,
                ct_img.header)


def load_totalseg_example(min_voxels: int = 64) -> Volume:
  """The sdist's example CT and its liver (fetched with pip into the cache)."""
  from dassemble_jax import fetch  # pylint: disable=g-import-not-at-top
  archive = fetch.pip_download(TOTALSEG, sdist=True)
  with tarfile.open(archive) as tar:
    def read(rel):
      member = next((m for m in tar.getmembers() if m.name.endswith('/' + rel)), None)
      if member is None:
        raise FileNotFoundError(f'{archive}: no {rel} in the archive')
      return tar.extractfile(member).read()
    imgs = [nib.Nifti1Image.from_bytes(gzip.decompress(read(p))) for p in (_CT, _SEG)]
    label = class_index(read(_MAP).decode('utf-8'), 'liver')
  return make_volume(imgs[0], imgs[1], [label], f'{archive}!{_SEG}', min_voxels)


def load_files(ct_path: str, seg_path: str, liver_labels, min_voxels: int = 64) -> Volume:
  """A CT and a segmentation whose `liver_labels` mark the liver.

  Either may be a NIfTI file or a DICOM series (a folder or zip), read by `ct.scan_input`
  (CaseError naming the file when unreadable). A segmentation stored in another axis order
  than the CT (a DICOM CT with a NIfTI segmentation made from it) is reoriented onto the CT's
  voxels; one on another grid is refused.
  """
  ct = scan_input.load(ct_path)
  seg = scan_input.load(seg_path)
  labels = _onto_grid(seg.data, seg.affine, ct.data.shape, ct.affine, f'{seg_path}', f'{ct_path}')
  images = [nib.Nifti1Image(a, ct.affine) for a in (ct.data, labels)]
  for img in images:
    img.header.set_xyzt_units('mm')
  return make_volume(images[0], images[1], liver_labels, str(seg_path), min_voxels)


def _onto_grid(data, affine, shape, target_affine, where: str, target: str) -> np.ndarray:
  """`data` (on `affine`) as the voxels of grid (shape, target_affine): axis flips and
  permutations only; CaseError when the grids differ otherwise."""
  ornt = nib.orientations
  transform = ornt.ornt_transform(ornt.io_orientation(affine), ornt.io_orientation(target_affine))
  moved = ornt.apply_orientation(data, transform)
  moved_affine = affine @ ornt.inv_ornt_aff(transform, data.shape)
  if moved.shape != tuple(shape) or not np.allclose(moved_affine, target_affine, atol=1e-3):
    raise CaseError(f'{where}: not on the voxel grid of {target} (shape {data.shape} vs '
                    f'{tuple(shape)}, or another position or spacing)')
  return np.ascontiguousarray(moved) if moved is not data else data


def load_volume(ct_path: str | None, seg_path: str | None, liver_labels,
                min_voxels: int = 64) -> Volume:
  """The given CT and segmentation files, or, with neither given, the totalsegmentator example."""
  if ct_path:
    return load_files(ct_path, seg_path, liver_labels, min_voxels)
  return load_totalseg_example(min_voxels)


def add_volume_arguments(parser) -> None:
  """--ct, --seg, --liver-label: the CT the synthetic-tumor commands work on (`load_volume`)."""
  parser.add_argument('--ct', help='CT: a NIfTI file, or a DICOM series folder or zip '
                      '(default: the totalsegmentator sdist example)')
  parser.add_argument('--seg', help='segmentation NIfTI on the voxels of --ct')
  parser.add_argument('--liver-label', type=int, nargs='+', default=[5],
                      help='label(s) of the liver in --seg (TotalSegmentator: 5)')


def check_volume_arguments(parser, args) -> None:
  """Exits with a usage error when only one of --ct and --seg is given."""
  if (args.ct is None) != (args.seg is None):
    parser.error('give both --ct and --seg, or neither')


def save_nifti(array: np.ndarray, affine: np.ndarray, path: pathlib.Path, header=None) -> None:
  """Writes a NIfTI atomically (`atomic.temporary_path`), keeping the input's xyzt units."""
  img = nib.Nifti1Image(array, affine)
  if header is not None:
    img.header.set_xyzt_units(*header.get_xyzt_units())
  with atomic.temporary_path(path) as tmp:
    nib.save(img, str(tmp))


def as_input_dtype(new_ct: np.ndarray, like: np.ndarray) -> np.ndarray:
  """Rounds back to an integer CT's dtype (HU stored as int16 stays int16)."""
  if np.issubdtype(like.dtype, np.integer):
    info = np.iinfo(like.dtype)
    return np.clip(np.rint(new_ct), info.min, info.max).astype(like.dtype)
  return new_ct.astype(like.dtype)
