"""Segment CT scans with a trained Universal Model: NIfTI or DICOM in, label-map NIfTI out.

  python -m dassemble_jax.predict --workdir=DIR/runs/assembly --input=CT.nii.gz --output=OUT
  python -m dassemble_jax.predict --workdir=DIR/runs/assembly --input=FOLDER --output=OUT \
      --per_class --classes=liver,spleen --statistics --preview

`--workdir` is a model's training folder (segmentation/trained_run.py says what it holds). Each
input scan gives `OUT/<case>.nii.gz` (uint8 universal ids 1..32, lesions over their organs, the
input's own grid and affine) and `OUT/<case>.json` (its classes, the input, any warning); the
folder gets the viewers' class tables once (`labels.ctbl` for 3D Slicer, `labels_itksnap.txt`,
`classes.json`). Options add `OUT/<case>/<class>.nii.gz` (0/1, `--per_class`),
`OUT/<case>.statistics.json` / `.csv` (`--statistics`) and `OUT/<case>.png` (`--preview`).
`--classes` computes only the named classes' heads (plus a lesion's host organ, which its
post-processing reads). Classes the model was never trained on are not predicted.

`--input` may also be a DICOM series (a folder of one file per slice, or a zip of one) or hold
several (`ct/scan_input.py` says how each is found and named; every series of a folder is its
own case). `--dicom_seg` adds `OUT/<case>.seg.dcm` for each DICOM input: a DICOM-SEG of the
label map that references the input series (`ct/dicom_seg.py`), for PACS viewers.

Errors are one line, `error: <file>: <problem>`: before any scan (the model folder, the inputs,
two inputs with one output name, an output folder that cannot be written) the command stops
with exit status 1; a scan that cannot be read or written is reported and the run goes on with
the next ones, lists the failures at the end and exits with status 2. `--debug` shows the
traceback instead (and stops at the first failing scan).
"""

from __future__ import annotations

import sys

from absl import app, flags, logging

from dassemble_jax import progress
from dassemble_jax.ct.nifti_io import CaseError
from dassemble_jax.segmentation import inference, trained_run

# What a user can get wrong (one line each); anything else is a bug and keeps its traceback.
USER_ERRORS = (CaseError, inference.OutputError, trained_run.ModelDirError,
               trained_run.ClassSelectionError)


def _define_flags() -> dict:
  """Flags exist only when this module is the program: `dassemble_jax.main` defines its own
  --workdir, and a process may import both modules."""
  return {
      "workdir": flags.DEFINE_string("workdir", None, "Training folder of the model."),
      "input": flags.DEFINE_string("input", None, "A NIfTI file, a DICOM series (folder or "
                                   "zip), or a folder of these."),
      "output": flags.DEFINE_string("output", None, "Folder for the predicted label maps."),
      "per_class": flags.DEFINE_bool("per_class", False, "Also write one 0/1 file per class."),
      "classes": flags.DEFINE_list("classes", None, "Only these classes (names as in "
                                   "classes.json, e.g. liver,spleen); only their heads run."),
      "statistics": flags.DEFINE_bool("statistics", False, "Per class volume (mL), HU mean/std, "
                                      "voxels, bounding box, lesions: <case>.statistics.json "
                                      "and .csv."),
      "preview": flags.DEFINE_bool("preview", False, "One PNG per scan: axial, coronal and "
                                   "sagittal overlays (radiological convention)."),
      "sw_batch_size": flags.DEFINE_integer("sw_batch_size", None, "Windows per model call "
                                            "(default: the config's eval.sw_batch_size)."),
      "checkpoint": flags.DEFINE_enum("checkpoint", "best", ["best", "latest"],
                                      "best: the validation-selected state (the latest when the "
                                      "run validated nothing); latest: the last saved state."),
      "debug": flags.DEFINE_bool("debug", False, "Tracebacks instead of one-line errors."),
      "dicom_seg": flags.DEFINE_bool("dicom_seg", False, "For a DICOM input, also write "
                                     "<case>.seg.dcm, a DICOM-SEG referencing its series."),
  }


_FLAGS: dict = {}


def main(argv) -> int:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)  # Orbax logs every restore at INFO
  flag = {k: v.value for k, v in _FLAGS.items()}
  try:
    return run(flag)
  except USER_ERRORS as e:
    if flag.get("debug"):
      raise
    print(f"error: {e}", file=sys.stderr)
    return 1


def run(flag: dict) -> int:
  """The command with its flag values; raises USER_ERRORS for what stops it before any scan."""
  overrides = {} if flag["sw_batch_size"] is None else {"sw_batch_size": flag["sw_batch_size"]}
  inputs = inference.find_inputs(flag["input"])
  # Refused before the model loads: two inputs with one output name, an unwritable output.
  inference.output_names(inputs, flag["output"])
  inference.check_output_folder(flag["output"])
  model = trained_run.load_model(flag["workdir"], flag["checkpoint"], **overrides)
  print(f"model {flag['workdir']} ({flag['checkpoint']} checkpoint: step {model.step}, "
        f"{model.config.model.backbone})", flush=True)
  results = model.predict_paths(flag["input"], flag["output"], per_class=flag["per_class"],
                                classes=flag["classes"], statistics=flag["statistics"],
                                preview=flag["preview"], keep_going=not flag["debug"],
                                dicom_seg=flag.get("dicom_seg", False))
  # One line per scan: '[i/N] <scan> i/N (%) | s/scan | ETA ..., <stage> <seconds>'; the
  # first scan's time includes the compilation, so the ETA settles after it.
  bar = progress.Progress(len(inputs), unit="scan", inverse_rate=True)
  failed = []
  for i, result in enumerate(results, start=1):
    for warning in result.warnings:
      print(f"warning: {warning}", file=sys.stderr, flush=True)
    if result.error is not None:
      failed.append(result.error)
      print(f"error: {result.error}", file=sys.stderr, flush=True)
    bar.report(i, prefix=f"[{i}/{len(inputs)}] {result.input}"
               + (" FAILED" if result.error else ""),
               **{k: f"{v:.2f} s" for k, v in result.timings.items()})
  bar.close()
  if failed:
    print(f"{len(failed)} of {len(inputs)} scans failed:", file=sys.stderr)
    for line in failed:
      print(f"  {line}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  _FLAGS.update(_define_flags())
  flags.mark_flags_as_required(["workdir", "input", "output"])
  app.run(lambda argv: sys.exit(main(argv)))
