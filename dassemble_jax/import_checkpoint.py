"""Import the anchor's released Universal Model checkpoints (PyTorch .pth) as a run folder.

  python -m dassemble_jax.import_checkpoint --checkpoint=clip_driven_universal_unet.pth \
      --class_table=txt_encoding.pth --out=runs/universal_unet
  python -m dassemble_jax.predict --workdir=runs/universal_unet --input=CT.nii.gz --output=OUT

The .pth is read without PyTorch and without running code from it (data/torch_pth.py: only the
globals that rebuild tensors are admitted). Every tensor is mapped onto the Flax model or the
import stops naming the keys that do not fit (segmentation/anchor_import.py). `--out` receives a
run folder (config.json with the anchor's inference conventions, class_embeddings.npy,
trained_classes.json, checkpoints/, anchor_import.json) that prediction, evaluation and
`--config.init_from=OUT` fine-tuning accept. A refused or failed import writes nothing into
`--out` and prints one line `error: <file>: <problem>` (exit status 2).

`--class_table`: the anchor's txt_encoding.pth (or a (32, D) .npy); without it the table stored
in the checkpoint (its `organ_embedding` buffer) is used.
"""

from __future__ import annotations

import sys

from absl import app, flags, logging

from dassemble_jax import cli
from dassemble_jax.segmentation import anchor_import


def _define_flags() -> dict:
  """Flags exist only when this module is the program (predict.py defines a --checkpoint too,
  and a process may import both modules)."""
  return {
      "checkpoint": flags.DEFINE_string("checkpoint", None, "The anchor's .pth checkpoint."),
      "class_table": flags.DEFINE_string(
          "class_table", None, "txt_encoding.pth (the anchor's CLIP table) or a .npy table."),
      "out": flags.DEFINE_string("out", None,
                                 "New run folder to write (must not exist, or be empty)."),
      "debug": cli.define_debug_flag(),
  }


_FLAGS: dict = {}


def main(argv) -> int:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO
  flag = {k: v.value for k, v in _FLAGS.items()}
  # AnchorImportError, DataFormatError, a bad class table (ValueError); a missing input, an
  # unwritable --out or a full disk (OSError): one line, exit status 2.
  return cli.run_main(lambda _: _import(flag), user_errors=(ValueError,), output=flag["out"],
                      exit_code=2, debug=flag["debug"])


def _import(flag: dict) -> int:
  cli.check_output_folder(flag["out"], "--out")
  summary = anchor_import.import_checkpoint(flag["checkpoint"], flag["out"], flag["class_table"])
  print(f"imported {summary['backbone']} (width {summary['width']}, "
        f"{summary['parameters'] / 1e6:.2f} M parameters, {summary['tensors']} tensors) "
        f"-> {flag['out']}; class table: {summary['class_table']}")
  return 0


if __name__ == "__main__":
  _FLAGS.update(_define_flags())
  app.run(lambda argv: sys.exit(main(argv)), flags_parser=cli.absl_flags_parser(
      lambda argv: cli.parse_flags(argv, config=None, required=["checkpoint", "out"]),
      exit_code=2))
