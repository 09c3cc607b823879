"""MNIST-zero vs MNIST: the same images, labelled "0 vs not-0" or with all ten digits.

MNIST-zero has one output ("0"); every other digit is a negative whose identity is unknown.
MNIST has ten outputs, every digit known. Both are tested on all 10,000 test images; compare
the AUC of "0".

  python -m dassemble_jax.main --config=configs/mnist_zero.py:zero --workdir=/tmp/z
  python -m dassemble_jax.main --config=configs/mnist_zero.py:all --workdir=/tmp/a
"""

from dassemble_jax.classification import config_base

DIGITS = tuple(range(10))
NUM_TRAIN, NUM_VAL = 1000, 500


def get_config(arg: str | None = None):
  setting, tiny = config_base.parse_arg(arg, ("zero", "all"), "zero")
  c = config_base.classification_config()
  classes = ("0",) if setting == "zero" else tuple(str(d) for d in DIGITS)
  c.data.sources = (config_base.source("MNIST-zero" if setting == "zero" else "MNIST", classes,
                                       NUM_TRAIN, NUM_VAL, members=DIGITS),)
  c.data.label_space = classes
  c.data.test_labels = DIGITS
  return config_base.make_tiny(c) if tiny else c
