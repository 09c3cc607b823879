"""MNIST, overlapping sources: D0 annotates {1,2,3,4,5}, D1 annotates {3,4,5,6,7}.

D0 holds images of 1-5 and D1 of 3-7 (disjoint draws); classes 3, 4, 5 are annotated by both.
Tested on the MNIST test images of digits 1-7, every class known.

  python -m dassemble_jax.main --config=configs/mnist_overlap.py:partial --workdir=/tmp/ov
  python -m dassemble_jax.main --config=configs/mnist_overlap.py:semi --workdir=/tmp/ov_semi
  python -m dassemble_jax.main --config=configs/mnist_overlap.py:semi,tiny --workdir=/tmp/ov_st

Settings: D0, D1, partial (D0+D1 assembled with partial labels), semi (partial plus sharpened
pseudo labels and weak/strong consistency on the unknown entries: the table's "+ semi-supervised"
column; `config.semisup` holds its settings), full (the same images with every one of the 7
classes annotated in both sources: the upper bound).
"""

from dassemble_jax.classification import experiments


def get_config(arg: str | None = None):
  # The settings live in the package (dassemble_jax/classification/experiments.py), so the tables
  # job and the notebooks build the same configs without this folder.
  return experiments.mnist_overlap(arg)
