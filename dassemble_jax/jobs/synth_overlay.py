"""Look at synthetic tumors in a real CT: PNG overlays and the NIfTI pair.

  python -m dassemble_jax.jobs.synth_overlay --out /tmp/synth_overlay
  python -m dassemble_jax.jobs.synth_overlay --out DIR --ct ct.nii.gz --seg seg.nii.gz --liver-label 5

Default input: the abdominal CT and TotalSegmentator segmentation of the `totalsegmentator`
2.18.0 source distribution (fetched with pip). Writes into --out:
  ct_with_tumors.nii.gz   the CT with tumors (input dtype, original affine)
  label.nii.gz            0 background, 1 liver, 2 tumor (uint8, original affine)
  tumor_XX.png            axial / coronal / sagittal through tumor XX, before and after
  summary.json            the sampled properties (kind, count, HU decrement, centres in mm)
An empty or too-small liver mask exits with status 2 and a message naming the file.
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib
import sys

import numpy as np

from dassemble_jax import atomic, cli

WINDOW = (-160.0, 240.0)  # abdominal soft-tissue window for display


def _render_pngs(vol, new_ct, label, out: pathlib.Path, max_pngs: int) -> list[str]:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  import nibabel as nib  # pylint: disable=g-import-not-at-top
  from scipy import ndimage  # pylint: disable=g-import-not-at-top

  # Display in RAS so every view has the same handedness whatever the file's orientation.
  ornt = nib.orientations.io_orientation(vol.affine)
  to_ras = lambda a: nib.orientations.apply_orientation(a, ornt)
  before, after, lab = to_ras(vol.ct.astype(np.float32)), to_ras(new_ct.astype(np.float32)), \
      to_ras(label)
  perm = [int(ornt[i, 0]) for i in range(3)]
  sp = [vol.spacing[perm.index(ax)] for ax in range(3)]  # RAS spacing per output axis
  comps, n = ndimage.label(lab == 2)
  centres = ndimage.center_of_mass(lab == 2, comps, range(1, n + 1)) if n else []
  sizes = ndimage.sum(lab == 2, comps, range(1, n + 1)) if n else []
  order = np.argsort(sizes)[::-1][:max_pngs]
  written = []
  for rank, idx in enumerate(order):
    x, y, z = (round(c) for c in centres[idx])
    views = [('axial', lambda a, z=z: a[:, :, z].T, (sp[0], sp[1])),
             ('coronal', lambda a, y=y: a[:, y, :].T, (sp[0], sp[2])),
             ('sagittal', lambda a, x=x: a[x, :, :].T, (sp[1], sp[2]))]
    fig, axes = plt.subplots(2, 3, figsize=(12, 8))
    for col, (name, cut, (sx, sy)) in enumerate(views):
      for row, img in enumerate((before, after)):
        ax = axes[row, col]
        ax.imshow(cut(img), cmap='gray', vmin=WINDOW[0], vmax=WINDOW[1], origin='lower',
                  aspect=sy / sx, interpolation='nearest')
        if row == 1:
          lab2d = cut(lab)
          ax.contour(lab2d == 1, levels=[0.5], colors='lime', linewidths=0.6)
          ax.contour(lab2d == 2, levels=[0.5], colors='red', linewidths=0.8)
        ax.set_title(f'{name} {"with tumors" if row else "original"}', fontsize=9)
        ax.axis('off')
    vox = int(sizes[idx])
    fig.suptitle(f'tumor {rank}: {vox} voxels, ~{vox * np.prod(vol.spacing) / 1000:.2f} mL '
                 f'(RAS voxel {x}, {y}, {z})', fontsize=10)
    fig.tight_layout()
    path = out / f'tumor_{rank:02d}.png'
    with atomic.temporary_path(path) as tmp:
      fig.savefig(tmp, dpi=90)
    plt.close(fig)
    written.append(path.name)
  return written


def run(out: pathlib.Path, ct: str | None, seg: str | None, liver_labels, seed: int,
        kind: str | None, max_pngs: int) -> dict:
  """Loads, inserts tumors, writes everything; returns the summary."""
  import jax  # pylint: disable=g-import-not-at-top

  from dassemble_jax.synth import realct  # pylint: disable=g-import-not-at-top
  from dassemble_jax.synth.config import SynthConfig  # pylint: disable=g-import-not-at-top
  from dassemble_jax.synth.generate import label_map, synthesize_tumors  # pylint: disable=g-import-not-at-top

  cfg = SynthConfig()
  if (ct is None) != (seg is None):
    raise SystemExit('error: give both --ct and --seg, or neither')
  vol = realct.load_volume(ct, seg, liver_labels, cfg.min_liver_voxels)
  cfg = dataclasses.replace(cfg, cc_axis=vol.cc_axis, cranial_is_high=vol.cranial_is_high)
  if kind:
    cfg = dataclasses.replace(cfg, kind_choices=(kind,))
  new_ct, tumor, info = synthesize_tumors(jax.random.key(seed), vol.ct.astype(np.float32),
                                          vol.liver, vol.spacing, cfg)
  new_ct, tumor, info = jax.device_get((new_ct, tumor, info))
  if not info['valid']:
    raise realct.LiverMaskError(f'{vol.source}: no tumor could be placed in the liver mask')
  out.mkdir(parents=True, exist_ok=True)
  label = label_map(vol.liver, tumor)
  realct.save_nifti(realct.as_input_dtype(new_ct, vol.ct), vol.affine,
                    out / 'ct_with_tumors.nii.gz', vol.header)
  realct.save_nifti(label, vol.affine, out / 'label.nii.gz', vol.header)
  pngs = _render_pngs(vol, new_ct, label, out, max_pngs)
  act = info['active']
  centres = info['centres'][act]
  summary = {
      'source': vol.source, 'seed': seed, 'spacing_mm': list(vol.spacing),
      'kind': cfg.kind_choices[int(info['kind_choice'])],
      'n_tumors': int(info['n_tumors']), 'tumor_voxels': int(tumor.sum()),
      'liver_voxels': int(vol.liver.sum()), 'hu_decrement': float(info['hu_decrement']),
      'texture_sigma_mm': float(info['texture_sigma_mm']),
      'edge_sigma_mm': float(info['edge_sigma_mm']),
      'centres_voxel': centres.tolist(),
      'centres_mm': [list(map(float, vol.affine[:3, :3] @ c + vol.affine[:3, 3])) for c in centres],
      'semi_axes_mm': np.round(info['semi_axes_mm'][act], 2).tolist(),
      'kinds': [cfg.kinds[k].name for k in info['slot_kind'][act]],
      'pngs': pngs}
  atomic.write_json(out / 'summary.json', summary, indent=1)
  return summary


def main(argv=None) -> int:
  from dassemble_jax.synth import realct  # pylint: disable=g-import-not-at-top
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  p.add_argument('--out', required=True, type=pathlib.Path, help='output folder')
  realct.add_volume_arguments(p)
  p.add_argument('--seed', type=int, default=0)
  p.add_argument('--kind', choices=['tiny', 'small', 'medium', 'large', 'mix'],
                 help='only this tumor kind (default: drawn uniformly)')
  p.add_argument('--max-pngs', type=int, default=12)
  cli.add_debug_argument(p)
  args = p.parse_args(argv)
  realct.check_volume_arguments(p, args)
  return cli.run_main(lambda _: _run_and_report(args), user_errors=_user_errors(), output=args.out,
                      exit_code=2, debug=args.debug)


def _user_errors() -> tuple[type[BaseException], ...]:
  """Bad input (a NIfTI that does not read, a liver mask too small); OSError (missing input, an
  unwritable --out, a full disk) is one line too (cli.run_main)."""
  from nibabel.filebasedimages import ImageFileError  # pylint: disable=g-import-not-at-top

  from dassemble_jax.data.errors import DataFormatError  # pylint: disable=g-import-not-at-top
  from dassemble_jax.synth import realct  # pylint: disable=g-import-not-at-top
  return (realct.LiverMaskError, DataFormatError, ImageFileError)


def _run_and_report(args) -> int:
  cli.check_output_folder(args.out)
  summary = run(args.out, args.ct, args.seg, args.liver_label, args.seed, args.kind,
                args.max_pngs)
  print(f"{summary['n_tumors']} {summary['kind']} tumor(s), {summary['tumor_voxels']} voxels, "
        f"decrement {summary['hu_decrement']:.0f} HU -> {args.out} "
        f"({len(summary['pngs'])} PNGs, ct_with_tumors.nii.gz, label.nii.gz)")
  return 0


if __name__ == '__main__':
  sys.exit(main())
