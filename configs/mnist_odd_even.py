"""MNIST, strictly non-overlapping sources: D0 = odd digits, D1 = even digits.

Each source holds only images of its own digits and annotates only its own classes; an image of
D0 is a negative for the other odd digits and *unknown* for the even ones. Every setting is
tested on the same 10,000 MNIST test images (all digits, every class known), so the AUC of a
class measures how well it is told apart from every other digit.

  python -m dassemble_jax.main --config=configs/mnist_odd_even.py:D0+D1 --workdir=/tmp/oe
  python -m dassemble_jax.main --config=configs/mnist_odd_even.py:D0,tiny --workdir=/tmp/oe_t

Settings: D0 (odd digits only; outputs 1,3,5,7,9), D1 (even only), D0+D1 (assembled, 10 outputs).
"""

from dassemble_jax.classification import config_base

ODD, EVEN = (1, 3, 5, 7, 9), (0, 2, 4, 6, 8)
# Per-source subset: 500 training + 250 validation images. Small on purpose: with all 30k
# images per source every setting saturates near 100% AUC and the effect under study vanishes.
NUM_TRAIN, NUM_VAL = 500, 250


def get_config(arg: str | None = None):
  setting, tiny = config_base.parse_arg(arg, ("D0", "D1", "D0+D1"), "D0+D1")
  c = config_base.classification_config()
  d0 = config_base.source("D0", ODD, NUM_TRAIN, NUM_VAL)
  d1 = config_base.source("D1", EVEN, NUM_TRAIN, NUM_VAL)
  c.data.sources = {"D0": (d0,), "D1": (d1,), "D0+D1": (d0, d1)}[setting]
  c.data.label_space = tuple(str(x) for s in c.data.sources for x in s["classes"])
  c.data.test_labels = tuple(range(10))
  return config_base.make_tiny(c) if tiny else c
