"""MNIST-zero vs MNIST: the same images, labelled "0 vs not-0" or with all ten digits.

MNIST-zero has one output ("0"); every other digit is a negative whose identity is unknown.
MNIST has ten outputs, every digit known. Both are tested on all 10,000 test images; compare
the AUC of "0".

  python -m dassemble_jax.main --config=configs/mnist_zero.py:zero --workdir=/tmp/z
  python -m dassemble_jax.main --config=configs/mnist_zero.py:all --workdir=/tmp/a
"""

from dassemble_jax.classification import experiments


def get_config(arg: str | None = None):
  # The settings live in the package (dassemble_jax/classification/experiments.py), so the tables
  # job and the notebooks build the same configs without this folder.
  return experiments.mnist_zero(arg)
