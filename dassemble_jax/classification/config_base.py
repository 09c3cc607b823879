"""Shared defaults of the classification configs (configs/mnist_*.py, configs/cifar_*.py).

Configs import this module (rather than each other) so that every experiment family starts
from the same, documented training recipe and only states what differs.
"""

from __future__ import annotations

import ml_collections


def classification_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0                      # model init, step rngs and epoch order
  # --- data: what is assembled (changing any of these re-converts into a fresh workdir) ---
  c.data = ml_collections.ConfigDict()
  c.data.dataset = "mnist"        # 'mnist' | 'cifar10'
  c.data.source = "auto"          # mnist: 'auto'|'idx'|'hub'|'tfds'; cifar10: 'auto'|'pickle'|'tfds'
  c.data.path = ml_collections.config_dict.placeholder(str)  # IDX / pickle folder, if any
  c.data.label_space = tuple("0123456789")  # assembled classes, in output order
  c.data.sources = ()             # list of dicts: name, classes, members, num_train, num_validation
  c.data.exclusive = False        # True: a known positive implies negatives for all other classes
  c.data.test_labels = tuple(range(10))     # raw labels of the test images (all classes known)
  c.data.seed = 0                 # which examples each source draws
  c.data.num_shards = 2           # ArrayRecord shards per split
  # --- input ---
  c.input_mode = "resident"       # 'resident': data on device, epochs in lax.scan; 'grain': stream
  # Resident epochs: 'scan' (one compiled call per epoch), 'loop' (jitted step per batch), or
  # 'auto': loop on CPU, where XLA runs while-loop bodies ~10x slower, scan on GPU/TPU.
  c.epoch_mode = "auto"
  c.grain_workers = 0             # Grain worker processes (input_mode='grain')
  c.augment = "translate"         # on-device: 'none' | 'translate' | 'flip_translate'
  # --- model ---
  c.model = ml_collections.ConfigDict()
  c.model.arch = "resnet"         # 'resnet' | 'airbench' (airbench94's net; 32x32x3 only)
  c.model.widths = (8, 16, 32)    # ResNet stages / airbench conv groups (small subsets: narrow)
  c.model.blocks_per_stage = 1
  c.model.norm = "batch"          # 'batch' | 'group' (stateless; used by the tiny variants)
  c.compute_dtype = "float32"     # 'bfloat16' on accelerators
  # --- optimisation ---
  # Global; must divide by the device count. Small: subsets of a few hundred images per source
  # need many steps more than large batches (500 images -> 31 steps per epoch).
  c.batch_size = 16
  c.eval_batch_size = 512
  c.num_epochs = 12
  c.learning_rate = 2e-3
  c.warmup_fraction = 0.05        # of all steps; then cosine decay to 1% of the peak
  c.weight_decay = 5e-4
  c.grad_clip_norm = 1.0
  return c


def source(name: str, classes, num_train: int, num_validation: int, members=None) -> dict:
  """One source entry: `members` are the raw labels of its images (default: its classes)."""
  return {"name": name, "classes": tuple(str(c) for c in classes),
          "members": tuple(members) if members is not None else None,
          "num_train": num_train, "num_validation": num_validation}


def parse_arg(arg: str | None, settings, default: str) -> tuple[str, bool]:
  """'D0+D1,tiny' -> ('D0+D1', True); 'tiny' -> (default, True)."""
  parts = [p for p in (arg or "").split(",") if p]
  tiny = "tiny" in parts
  rest = [p for p in parts if p != "tiny"]
  setting = rest[0] if rest else default
  if setting not in settings or len(rest) > 1:
    raise ValueError(f"config argument {arg!r}: expected one of {list(settings)}, "
                     "optionally followed by ',tiny'")
  return setting, tiny


def make_tiny(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The same code path in seconds on a CPU: few images, a narrow net, two epochs."""
  c.data.sources = tuple(dict(s, num_train=min(s["num_train"], 48),
                              num_validation=min(s["num_validation"], 24))
                         for s in c.data.sources)
  c.model.widths = (8, 16)
  # Two short epochs leave BatchNorm's running averages far from the batch statistics.
  c.model.norm = "group"
  c.batch_size = 16
  c.eval_batch_size = 64
  c.num_epochs = 2
  return c
