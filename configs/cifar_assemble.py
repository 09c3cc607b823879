"""CIFAR-10 assembled from animals (D0) and vehicles (D1), and a fast fully labelled recipe.

D0 annotates the six animal classes and holds only animal images; D1 the four vehicles and only
vehicle images. An image of D0 is a negative for the other animals and *unknown* for the vehicles.
Tested on all 10,000 CIFAR-10 test images, every class known.

  python -m dassemble_jax.main --config=configs/cifar_assemble.py:D0+D1 --workdir=/tmp/c \
      --config.data.path=/data/cifar-10-batches-py
  python -m dassemble_jax.jobs.tables --table=cifar --workdir=/tmp/ct \
      --data_path=/data/cifar-10-batches-py
  python -m dassemble_jax.main --config=configs/cifar_assemble.py:full,tiny --workdir=/tmp/t

Settings: D0, D1, D0+D1 (the assembly table) and `full` (all 45,000 training images, all ten
classes labelled): the fast recipe in the spirit of airbench. Everything that makes airbench fast
is in the code path here too: the dataset resident on the device, augmentation (flip +
translate) inside the compiled step, a whole epoch per compiled call in `lax.scan`, bfloat16
compute, a large batch, few epochs, and airbench94's network (`models/airbench.py`: frozen
patch-whitening conv, three conv groups 64/256/256); the loss and optimiser stay the project's.
CIFAR-10 cannot be fetched on the development machines: pass the pickle folder (or prepare TFDS).
"""

from dassemble_jax.classification import experiments


def get_config(arg: str | None = None):
  # The settings live in the package (dassemble_jax/classification/experiments.py), so the tables
  # job and the notebooks build the same configs without this folder.
  return experiments.cifar_assemble(arg)
