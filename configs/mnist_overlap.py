"""MNIST, overlapping sources: D0 annotates {1,2,3,4,5}, D1 annotates {3,4,5,6,7}.

D0 holds images of 1-5 and D1 of 3-7 (disjoint draws); classes 3, 4, 5 are annotated by both.
Tested on the MNIST test images of digits 1-7, every class known.

  python -m dassemble_jax.main --config=configs/mnist_overlap.py:partial --workdir=/tmp/ov

Settings: D0, D1, partial (D0+D1 assembled with partial labels), full (the same images with
every one of the 7 classes annotated in both sources: the upper bound).
"""

from dassemble_jax.classification import config_base

D0_DIGITS, D1_DIGITS = (1, 2, 3, 4, 5), (3, 4, 5, 6, 7)
ALL = tuple(range(1, 8))
# Small subsets, as the seed's low AUCs suggest: 300 training + 200 validation images per source.
NUM_TRAIN, NUM_VAL = 300, 200


def get_config(arg: str | None = None):
  setting, tiny = config_base.parse_arg(arg, ("D0", "D1", "partial", "full"), "partial")
  c = config_base.classification_config()
  full = setting == "full"
  d0 = config_base.source("D0", ALL if full else D0_DIGITS, NUM_TRAIN, NUM_VAL, members=D0_DIGITS)
  d1 = config_base.source("D1", ALL if full else D1_DIGITS, NUM_TRAIN, NUM_VAL, members=D1_DIGITS)
  c.data.sources = {"D0": (d0,), "D1": (d1,)}.get(setting, (d0, d1))
  c.data.label_space = tuple(str(d) for d in ALL if any(
      str(d) in s["classes"] for s in c.data.sources))
  c.data.test_labels = ALL
  return config_base.make_tiny(c) if tiny else c
