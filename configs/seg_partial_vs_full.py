"""Partial vs full labels on the same images (the analog of "Cityscapes-five vs Cityscapes").

  python -m dassemble_jax.main --config=configs/seg_partial_vs_full.py --workdir=/tmp/partial_full
  python -m dassemble_jax.main --config=configs/seg_partial_vs_full.py:small --workdir=/tmp/pf
  python -m dassemble_jax.main --config=configs/seg_partial_vs_full.py:tiny --workdir=/tmp/pf_tiny

Per seed, two Universal Models on the same phantom training cases: 'partial' sees labels of the
classes of interest only (`partial_full.classes`), 'full' sees every class the phantom paints;
both are scored on held-out cases with full truth, and the classes of interest are compared
paired by seed (dassemble_jax/jobs/partial_full.py). The model, crops and optimiser are the
universal config's (configs/universal.py: 5 mm, 24^3 crops, U-Net base width 4, MiniLM codes);
each model gets `num_steps` = 300 (the universal job's single-source budget is 100; at that
budget a model labelled with the BTCV-like source's 13 classes learns the liver only, see
results/universal_default/, and so would both models here).
':small': the universal config's ':small' sizes (6 mm, 16^3 crops, base width 2; 60 steps per
model): a first, cheaper study (results/seg_partial_vs_full/small/). The default's stored study:
results/seg_partial_vs_full/README.md.
':tiny': the same code path in seconds (tests/jobs/test_partial_full.py).
"""

import ml_collections

from configs import universal


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  parts = [p for p in (arg or "").split(",") if p]
  if set(parts) - {"phantom", "tiny", "small"} or {"tiny", "small"} <= set(parts):
    raise ValueError(f"config argument {arg!r}: expected '', 'tiny' or 'small'")
  c = universal.get_config(",".join(p for p in parts if p in ("tiny", "small")) or None)
  # Dispatch key read by dassemble_jax/main.py.
  c.job = "partial_full"
  c.train_single_sources = False
  c.write_predictions = False
  c.seed_study = ""
  # Held-out cases per seed (with full truth): more than the universal job's 2, less noise.
  c.data.phantom_test_cases = 4 if "tiny" not in parts else 1
  c.data.phantom_val_cases = 0
  c.eval_every = 0

  c.partial_full = ml_collections.ConfigDict()
  # The phantom source whose images both models train on (its conversion's crop centres and
  # case order are shared by both; its own labels are replaced by the hidden truth).
  c.partial_full.source = "phantom_btcv"
  # The classes of interest: the only labels 'partial' sees, and what the table compares.
  c.partial_full.classes = ("spleen", "kidney_right", "kidney_left", "liver", "stomach")
  # Seeds: each draws its own phantom cases, initialisation and crops, shared by both models.
  c.partial_full.seeds = (0, 1, 2, 3, 4)
  if not {"tiny", "small"} & set(parts):
    # Enough steps for several classes of interest to be learnt (see the docstring).
    c.num_steps = 300
    c.checkpoint_every = 300
  if "tiny" in parts:
    c.data.phantom_train_cases = 1
    c.partial_full.classes = ("liver", "spleen")
    c.partial_full.seeds = (0, 1)
  return c
