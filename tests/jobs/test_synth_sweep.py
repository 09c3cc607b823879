"""The robustness sweep: one property changes per value, the index lists every case."""

import dataclasses
import json

import nibabel as nib
import numpy as np
import pytest

from dassemble_jax.jobs import synth_sweep
from tests.synth.toy import ellipsoid_liver


@pytest.mark.parametrize('prop', synth_sweep.PROPERTIES)
def test_each_property_changes_only_its_fields(prop):
  base = synth_sweep.base_config()
  fields = {f.name for f in dataclasses.fields(base)}
  for value in synth_sweep.DEFAULT_VALUES[prop]:
    cfg = synth_sweep.config_for(prop, value)
    changed = {f for f in fields if getattr(cfg, f) != getattr(base, f)}
    allowed = {'size': {'kinds'}, 'count': {'kinds'}, 'irregularity': {'elastic_scale'},
               'texture': {'texture_sigma_mm'}, 'decrement': {'hu_decrement'},
               'location': {'cc_fraction', 'near_surface_mm'}}[prop]
    assert changed <= allowed, (prop, value, changed)
  assert synth_sweep.config_for('size', 5.0).kinds[0].radius_mm == 5.0
  assert synth_sweep.config_for('count', 4).kinds[0].count == (4, 4)
  assert synth_sweep.config_for('location', 'lower_third').cc_fraction == (0.0, 1 / 3)


def test_sweep_writes_cases_and_index(tmp_path):
  spacing = (2.0, 2.0, 3.0)
  ct, liver = ellipsoid_liver((40, 36, 20), spacing, semi_mm=(34.0, 30.0, 27.0))
  affine = np.diag(list(spacing) + [1.0])
  nib.save(nib.Nifti1Image(np.rint(ct).astype(np.int16), affine), tmp_path / 'ct.nii.gz')
  nib.save(nib.Nifti1Image(liver.astype(np.uint8) * 5, affine), tmp_path / 'seg.nii.gz')
  out = tmp_path / 'sweep'
  rc = synth_sweep.main(['--out', str(out), '--property', 'count', '--values', '2', '--cases', '2',
                   '--ct', str(tmp_path / 'ct.nii.gz'), '--seg', str(tmp_path / 'seg.nii.gz')])
  assert rc == 0
  index = json.loads((out / 'index.json').read_text())
  assert index['property'] == 'count' and len(index['cases']) == 2
  for case in index['cases']:
    assert case['n_tumors'] == 2 and case['valid']
    label = np.asarray(nib.load(out / case['files']['label']).dataobj)
    assert (label == 2).sum() == sum(c['voxels'] for c in case['components'])
    assert np.all((label > 0) == liver)
  assert synth_sweep.main(['--out', str(out), '--property', 'location', '--values', 'nowhere',
                     '--ct', str(tmp_path / 'ct.nii.gz'),
                     '--seg', str(tmp_path / 'seg.nii.gz')]) == 2


@pytest.mark.parametrize("command", ["synth_sweep", "synth_overlay", "robustness"])
def test_ct_without_seg_is_a_usage_error(tmp_path, capsys, command):
  """Every synthetic-tumor command refuses --ct without --seg before loading anything."""
  import importlib
  main = importlib.import_module(f"dassemble_jax.jobs.{command}").main
  args = ["--out", str(tmp_path / "out"), "--ct", str(tmp_path / "ct.nii.gz")]
  args += {"synth_sweep": ["--property", "size"], "robustness": ["--workdir", str(tmp_path)],
           "synth_overlay": []}[command]
  with pytest.raises(SystemExit) as e:
    main(args)
  assert e.value.code == 2 and "give both --ct and --seg" in capsys.readouterr().err
  assert not (tmp_path / "out").exists()
