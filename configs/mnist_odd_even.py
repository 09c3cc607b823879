"""MNIST, strictly non-overlapping sources: D0 = odd digits, D1 = even digits.

Each source holds only images of its own digits and annotates only its own classes; an image of
D0 is a negative for the other odd digits and *unknown* for the even ones. Every setting is
tested on the same 10,000 MNIST test images (all digits, every class known), so the AUC of a
class measures how well it is told apart from every other digit.

  python -m dassemble_jax.main --config=configs/mnist_odd_even.py:D0+D1 --workdir=/tmp/oe
  python -m dassemble_jax.main --config=configs/mnist_odd_even.py:D0,tiny --workdir=/tmp/oe_t

Settings: D0 (odd digits only; outputs 1,3,5,7,9), D1 (even only), D0+D1 (assembled, 10 outputs).
"""

from dassemble_jax.classification import experiments


def get_config(arg: str | None = None):
  # The settings live in the package (dassemble_jax/classification/experiments.py), so the tables
  # job and the notebooks build the same configs without this folder.
  return experiments.mnist_odd_even(arg)
