"""Add a class to a trained Universal Model by fine-tuning (its text code is all it needs).

  python -m dassemble_jax.main --config=configs/universal_add_class.py --workdir=/tmp/add_class
  python -m dassemble_jax.main --config=configs/universal_add_class.py:tiny --workdir=/tmp/ac
  python -m dassemble_jax.main --config=configs/universal_add_class.py --workdir=/data/add \
      --config.init_from=/data/universal/runs/assembly \
      --config.data.shard_dirs='("/shards/kits19", "/shards/btcv", "/shards/lits")' \
      --config.data.test_dirs='("/shards_test/kits19", "/shards_test/btcv")'

Three models (dassemble_jax/jobs/add_class.py): 'pretrained' on sources that never
annotate the new class (or the run named by `init_from`), 'finetuned' from it on the sources
that do plus, with `add_class.rehearse`, the pretraining ones, and 'scratch' on the same sources
from a random start with the same steps. On the phantom, the new class is the kidney tumor: the
pretraining sources are the LiTS-, MSD-spleen- and BTCV-like ones, the new source the KiTS-like
one (kidneys + kidney tumor).

A class your model was never taught: its prompt is "A computerized tomography of a
{prompt_name}." (`ct/taxonomy.py`); convert a dataset that annotates it (`python -m
dassemble_jax.ct.convert`, its label map in `ct/datasets.py`), then run this config with
`init_from` and `data.shard_dirs` as above, adding old datasets to `shard_dirs` to rehearse the
old classes (without them the old classes leave the loss and are forgotten; the held-out table
shows what they kept). The output space is the taxonomy's 32 classes (32-bit label masks).
':tiny': the same code path in seconds (tests/jobs/test_add_class.py).
"""

import ml_collections

from configs import universal


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  parts = [p for p in (arg or "").split(",") if p]
  if set(parts) - {"phantom", "tiny"}:
    raise ValueError(f"config argument {arg!r}: expected '' or 'tiny'")
  c = universal.get_config("tiny" if "tiny" in parts else None)
  # Dispatch key read by dassemble_jax/main.py.
  c.job = "universal_add_class"
  c.add_class = ml_collections.ConfigDict()
  # Phantom sources of the pretrained model: none annotates the new class.
  c.add_class.pretrain_sources = ("phantom_lits", "phantom_spleen", "phantom_btcv")
  # Phantom sources of the fine-tuning: they annotate the new class (kidney tumor).
  c.add_class.finetune_sources = ("phantom_kits",)
  c.data.phantom_sources = c.add_class.pretrain_sources + c.add_class.finetune_sources
  # Rehearsal: fine-tune on the pretraining sources too. Without it the old classes leave the
  # loss (the new source does not annotate them) and are forgotten: on the phantom, mean DSC of
  # the old classes 0.386 -> 0.130 after 100 steps on the KiTS-like source alone.
  c.add_class.rehearse = True
  # Steps of the pretrained model (on the phantom; a given `init_from` is not retrained), and
  # of the fine-tuned and from-scratch models.
  c.add_class.pretrain_steps = 300
  c.add_class.finetune_steps = 100
  # Peak learning rate of the fine-tuning (the scratch model uses `learning_rate`): lower, as the
  # backbone and controller are trained already.
  c.add_class.finetune_learning_rate = 1e-3
  # The assembly/single-source comparison of the universal job is not run here.
  c.train_single_sources = False
  c.write_predictions = False
  if "tiny" in parts:
    # Equal steps and learning rates: the three models share one compiled train step.
    c.add_class.pretrain_steps = 2
    c.add_class.finetune_steps = 2
    c.add_class.finetune_learning_rate = c.learning_rate
  return c
