"""Segment CT scans with a trained Universal Model: NIfTI in, label-map NIfTI out.

  python -m dassemble_jax.predict --workdir=DIR/runs/assembly --input=CT.nii.gz --output=OUT
  python -m dassemble_jax.predict --workdir=DIR/runs/assembly --input=FOLDER --output=OUT \
      --per_class

`--workdir` is a model's training folder (segmentation/trained_run.py says what it holds). Each
input scan gives `OUT/<case>.nii.gz` (uint8 universal ids 1..32, lesions over their organs, the
input's own grid and affine) and, with `--per_class`, `OUT/<case>/<class>.nii.gz` (0/1).
Classes the model was never trained on are not predicted. A file that is not a readable 3D
NIfTI stops with an error naming it (exit status 2).
"""

from __future__ import annotations

import sys

from absl import app, flags, logging

from dassemble_jax import progress
from dassemble_jax.ct.nifti_io import CaseError
from dassemble_jax.segmentation import inference, trained_run


def _define_flags() -> dict:
  """Flags exist only when this module is the program: `dassemble_jax.main` defines its own
  --workdir, and a process may import both modules."""
  return {
      "workdir": flags.DEFINE_string("workdir", None, "Training folder of the model."),
      "input": flags.DEFINE_string("input", None, "A NIfTI file or a folder of them."),
      "output": flags.DEFINE_string("output", None, "Folder for the predicted label maps."),
      "per_class": flags.DEFINE_bool("per_class", False, "Also write one 0/1 file per class."),
      "sw_batch_size": flags.DEFINE_integer("sw_batch_size", None, "Windows per model call "
                                            "(default: the config's eval.sw_batch_size)."),
      "checkpoint": flags.DEFINE_enum("checkpoint", "best", ["best", "latest"],
                                      "best: the validation-selected state (the latest when the "
                                      "run validated nothing); latest: the last saved state."),
  }


_FLAGS: dict = {}


def main(argv) -> int:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)  # Orbax logs every restore at INFO
  flag = {k: v.value for k, v in _FLAGS.items()}
  overrides = {} if flag["sw_batch_size"] is None else {"sw_batch_size": flag["sw_batch_size"]}
  try:
    model = trained_run.load_model(flag["workdir"], flag["checkpoint"], **overrides)
  except trained_run.ModelDirError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(f"model {flag['workdir']} ({flag['checkpoint']} checkpoint: step {model.step}, "
        f"{model.config.model.backbone})", flush=True)
  try:
    inputs = inference.find_inputs(flag["input"])
    results = model.predict_paths(flag["input"], flag["output"], per_class=flag["per_class"])
    # One line per scan: '[i/N] <scan> i/N (%) | s/scan | ETA ..., <stage> <seconds>'; the
    # first scan's time includes the compilation, so the ETA settles after it.
    bar = progress.Progress(len(inputs), unit="scan", inverse_rate=True)
    for i, (path, result) in enumerate(zip(inputs, results), start=1):
      bar.report(i, prefix=f"[{i}/{len(inputs)}] {path}",
                 **{k: f"{v:.2f} s" for k, v in result.timings.items()})
    bar.close()
  except CaseError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  _FLAGS.update(_define_flags())
  flags.mark_flags_as_required(["workdir", "input", "output"])
  app.run(lambda argv: sys.exit(main(argv)))
