"""The overlay command on small NIfTI files in the TotalSegmentator layout, and its errors."""

import json
import os

import nibabel as nib
import numpy as np
import pytest

from dassemble_jax.jobs import synth_overlay
from dassemble_jax.synth import realct
from tests.synth.toy import ellipsoid_liver


def _write_case(tmp_path, liver_label=5, empty=False):
  spacing = (2.0, 2.0, 3.0)
  ct, liver = ellipsoid_liver((40, 36, 20), spacing, semi_mm=(34.0, 30.0, 27.0))
  seg = np.where(liver, liver_label, 0).astype(np.uint8)
  seg[:3, :3, :3] = 2  # another organ
  if empty:
    seg[seg == liver_label] = 0
  affine = np.diag(list(spacing) + [1.0])
  affine[:3, 3] = (-40.0, 10.0, 90.0)
  ct_path, seg_path = tmp_path / 'ct.nii.gz', tmp_path / 'seg.nii.gz'
  nib.save(nib.Nifti1Image(np.rint(ct).astype(np.int16), affine), ct_path)
  nib.save(nib.Nifti1Image(seg, affine), seg_path)
  return ct_path, seg_path, affine, liver


def test_overlay_writes_pngs_nifti_pair_and_summary(tmp_path):
  ct_path, seg_path, affine, liver = _write_case(tmp_path)
  out = tmp_path / 'out'
  rc = synth_overlay.main(['--out', str(out), '--ct', str(ct_path), '--seg', str(seg_path),
                     '--kind', 'small', '--seed', '3', '--max-pngs', '2'])
  assert rc == 0
  summary = json.loads((out / 'summary.json').read_text())
  assert summary['kind'] == 'small' and 3 <= summary['n_tumors'] <= 10
  assert 1 <= len(summary['pngs']) <= 2
  for name in summary['pngs']:
    assert (out / name).read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
  new = nib.load(out / 'ct_with_tumors.nii.gz')
  lab = nib.load(out / 'label.nii.gz')
  np.testing.assert_allclose(new.affine, affine)
  np.testing.assert_allclose(lab.affine, affine)
  assert new.get_data_dtype() == np.int16
  label = np.asarray(lab.dataobj)
  assert set(np.unique(label)) == {0, 1, 2}
  np.testing.assert_array_equal(label > 0, liver)           # the label covers exactly the liver
  orig = np.asarray(nib.load(ct_path).dataobj)
  diff = np.asarray(new.dataobj).astype(int) - orig
  assert np.all(diff[~liver] == 0) and diff[label == 2].mean() < -10
  assert not [p for p in os.listdir(out) if 'tmp' in p]  # nothing half-written left


def test_empty_liver_is_a_clear_error_naming_the_file(tmp_path, capsys):
  ct_path, seg_path, _, _ = _write_case(tmp_path, empty=True)
  rc = synth_overlay.main(['--out', str(tmp_path / 'out'), '--ct', str(ct_path), '--seg', str(seg_path)])
  assert rc == 2
  err = capsys.readouterr().err
  assert str(seg_path) in err and 'liver mask' in err
  assert not (tmp_path / 'out').exists()


def test_class_index_reads_the_liver_label_with_ast():
  src = ('import os\nclass_map = {\n "total": {1: "spleen", 5: "liver"},\n'
         ' "other": {1: "liver"}}\nclass_map["x"] = os.getcwd()\n')
  assert realct.class_index(src, 'liver') == 5
  with pytest.raises(ValueError, match='kidney'):
    realct.class_index(src, 'kidney')


@pytest.mark.slow
@pytest.mark.network_cache
def test_overlay_on_the_totalsegmentator_example(tmp_path):
  """Needs the totalsegmentator 2.18.0 sdist (pip download, ~cache)."""
  out = tmp_path / 'real'
  assert synth_overlay.main(['--out', str(out), '--seed', '1', '--max-pngs', '1']) == 0
  summary = json.loads((out / 'summary.json').read_text())
  assert summary['liver_voxels'] > 30000 and summary['spacing_mm'] == [3.0, 3.0, 3.0]
  assert summary['n_tumors'] >= 1 and summary['pngs']
