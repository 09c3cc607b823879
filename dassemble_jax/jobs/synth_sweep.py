"""A robustness evaluation set: synthetic tumors sweeping one property at a time.

  python -m dassemble_jax.jobs.synth_sweep --out /tmp/sweep --property size --cases 4
  python -m dassemble_jax.jobs.synth_sweep --out DIR --property decrement --values 30,65,105,145 \
      --ct ct.nii.gz --seg seg.nii.gz --liver-label 5

Every other property stays at the base setting (small-to-medium tumors, 1-3 per case, the
reference's ranges). Writes, per property value and replicate, a CT with tumors and its label
(0 background, 1 liver, 2 tumor) as NIfTI with the source's affine, and index.json: one entry per
case with the property, its value, the files, the sampled parameters and each tumor component's
volume and equivalent radius in mm (for sensitivity by radius bin: 0-5, 5-10, > 10 mm).

The other half of the benchmark (run a trained checkpoint on these cases, plot sensitivity/DSC per
bin) waits for the Universal Model trainer; index.json is the contract it will read.
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib
import sys

import numpy as np

from dassemble_jax import atomic, cli
from dassemble_jax.synth.config import SynthConfig, TumorKind

# Property -> (default values, how a value changes the base config, value label).
PROPERTIES = ('size', 'count', 'irregularity', 'texture', 'decrement', 'location')
DEFAULT_VALUES = {
    'size': [3.0, 5.0, 8.0, 12.0, 16.0, 24.0],          # nominal radius, mm
    'count': [1, 2, 4, 8],                              # tumors per case
    'irregularity': [0.0, 1.0, 2.0, 4.0],               # elastic sigma multiplier
    'texture': [3.0, 6.0, 9.0, 12.0, 15.0],             # texture sigma_a, mm
    'decrement': [30.0, 65.0, 105.0, 145.0],            # HU
    'location': ['lower_third', 'middle_third', 'upper_third', 'near_surface'],
}


def base_config() -> SynthConfig:
  """One 'sweep' kind of radius 10 mm, 1-3 tumors per case; the reference's other ranges."""
  kind = TumorKind('sweep', 10.0, (1, 3), (1, 3), (1.0, 3.0))
  return SynthConfig(kinds=(kind,), kind_choices=('sweep',))


def config_for(prop: str, value, base: SynthConfig | None = None) -> SynthConfig:
  """The base config with one property set to `value`."""
  cfg = base or base_config()
  k = cfg.kinds[0]
  if prop == 'size':
    sigma = (0.125 * value, 0.25 * value)  # keep shape irregularity relative to the size
    return dataclasses.replace(cfg, kinds=(dataclasses.replace(
        k, radius_mm=float(value), elastic_sigma_mm=sigma),))
  if prop == 'count':
    n = int(value)
    return dataclasses.replace(cfg, kinds=(dataclasses.replace(k, count=(n, n),
                                                               mix_count=(n, n)),))
  if prop == 'irregularity':
    return dataclasses.replace(cfg, elastic_scale=float(value))
  if prop == 'texture':
    return dataclasses.replace(cfg, texture_sigma_mm=(float(value),))
  if prop == 'decrement':
    return dataclasses.replace(cfg, hu_decrement=(float(value), float(value)))
  if prop == 'location':
    fractions = {'lower_third': (0.0, 1 / 3), 'middle_third': (1 / 3, 2 / 3),
                 'upper_third': (2 / 3, 1.0), 'near_surface': (0.0, 1.0)}
    if value not in fractions:
      raise ValueError(f'location must be one of {list(fractions)}, got {value!r}')
    return dataclasses.replace(cfg, cc_fraction=fractions[value],
                               near_surface_mm=5.0 if value == 'near_surface' else None)
  raise ValueError(f'unknown property {prop!r}; choose from {PROPERTIES}')


def components(tumor: np.ndarray, spacing) -> list[dict]:
  """Each connected tumor: voxels, volume (mL) and equivalent-sphere radius (mm)."""
  from scipy import ndimage  # pylint: disable=g-import-not-at-top
  lab, n = ndimage.label(tumor)
  if n == 0:
    return []
  sizes = ndimage.sum(tumor, lab, range(1, n + 1))
  vox_mm3 = float(np.prod(spacing))
  return [{'voxels': int(s), 'volume_ml': round(s * vox_mm3 / 1000, 4),
               'radius_mm': round((3 * s * vox_mm3 / (4 * np.pi)) ** (1 / 3), 3)} for s in sizes]


def run(out: pathlib.Path, prop: str, values, cases: int, seed: int, vol) -> dict:
  import jax  # pylint: disable=g-import-not-at-top

  from dassemble_jax.synth import realct  # pylint: disable=g-import-not-at-top
  from dassemble_jax.synth.generate import label_map, synthesize_tumors  # pylint: disable=g-import-not-at-top

  out.mkdir(parents=True, exist_ok=True)
  base = dataclasses.replace(base_config(), cc_axis=vol.cc_axis,
                             cranial_is_high=vol.cranial_is_high)
  ct = vol.ct.astype(np.float32)
  entries = []
  for vi, value in enumerate(values):
    cfg = config_for(prop, value, base)
    keys = jax.random.split(jax.random.fold_in(jax.random.key(seed), vi), cases)
    for c in range(cases):
      new, tumor, info = jax.device_get(synthesize_tumors(keys[c], ct, vol.liver, vol.spacing,
                                                          cfg))
      case = f'{prop}_{vi:02d}_{c:03d}'
      files = {'ct': f'{case}_ct.nii.gz', 'label': f'{case}_label.nii.gz'}
      realct.save_nifti(realct.as_input_dtype(new, vol.ct), vol.affine, out / files['ct'],
                        vol.header)
      realct.save_nifti(label_map(vol.liver, tumor), vol.affine, out / files['label'],
                        vol.header)
      act = info['active']
      entries.append({
          'case': case, 'property': prop, 'value': value, 'files': files, 'valid': bool(info['valid']),
          'n_tumors': int(info['n_tumors']), 'hu_decrement': float(info['hu_decrement']),
          'texture_sigma_mm': float(info['texture_sigma_mm']),
          'semi_axes_mm': np.round(info['semi_axes_mm'][act], 2).tolist(),
          'centres_voxel': info['centres'][act].tolist(),
          'components': components(tumor, vol.spacing)})
  index = {'source': vol.source, 'spacing_mm': list(vol.spacing), 'property': prop,
               'values': list(values), 'cases_per_value': cases, 'seed': seed,
               'base_config': repr(base), 'cases': entries}
  atomic.write_json(out / 'index.json', index, indent=1)
  return index


def parse_values(prop: str, text: str | None) -> list:
  """'3,5,8' -> [3.0, 5.0, 8.0] (names for 'location'); empty -> the property's preset."""
  if not text:
    return list(DEFAULT_VALUES[prop])
  items = [t.strip() for t in text.split(',') if t.strip()]
  try:
    return items if prop == 'location' else [float(t) for t in items]
  except ValueError as e:
    raise ValueError(f'--values {text!r}: {e}') from e


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  p.add_argument('--out', required=True, type=pathlib.Path)
  p.add_argument('--property', required=True, choices=PROPERTIES)
  p.add_argument('--values', help='comma-separated values (default: a preset per property)')
  p.add_argument('--cases', type=int, default=4, help='cases per value')
  p.add_argument('--seed', type=int, default=0)
  from dassemble_jax.synth import realct  # pylint: disable=g-import-not-at-top
  realct.add_volume_arguments(p)
  cli.add_debug_argument(p)
  args = p.parse_args(argv)
  realct.check_volume_arguments(p, args)
  return cli.run_main(lambda _: _run_and_report(args), user_errors=_user_errors(), output=args.out,
                      exit_code=2, debug=args.debug)


def _user_errors() -> tuple[type[BaseException], ...]:
  """Bad input (a NIfTI that does not read, a liver mask too small, a bad --values entry: the
  ValueErrors of parse_values and config_for); OSError is one line too (cli.run_main)."""
  from nibabel.filebasedimages import ImageFileError  # pylint: disable=g-import-not-at-top

  from dassemble_jax.data.errors import DataFormatError  # pylint: disable=g-import-not-at-top
  from dassemble_jax.synth import realct  # pylint: disable=g-import-not-at-top
  return (realct.LiverMaskError, DataFormatError, ImageFileError, ValueError)


def _run_and_report(args) -> int:
  from dassemble_jax.synth import realct  # pylint: disable=g-import-not-at-top
  cli.check_output_folder(args.out)
  values = parse_values(args.property, args.values)
  vol = realct.load_volume(args.ct, args.seg, args.liver_label)
  index = run(args.out, args.property, values, args.cases, args.seed, vol)
  print(f"{len(index['cases'])} cases ({args.property}: {values}) -> {args.out / 'index.json'}")
  return 0


if __name__ == '__main__':
  sys.exit(main())
