"""Label-free liver tumors: train on healthy livers with synthetic tumors, test on real tumors.

  python -m dassemble_jax.main --config=configs/liver_synthetic.py --workdir=/tmp/ls
  python -m dassemble_jax.main --config=configs/liver_synthetic.py:tiny --workdir=/tmp/ls_tiny
  python -m dassemble_jax.main --config=configs/liver_synthetic.py --workdir=/data/ls \
      --config.data.shard_dirs='("/shards/chaos", "/shards/btcv")' \
      --config.data.real_shard_dirs='("/shards/lits",)' \
      --config.data.test_dirs='("/shards_test/msd_task03_liver",)'

Two models with the same budget (dassemble_jax/jobs/liver_synthetic.py):
  'synthetic'  trained on healthy-liver sources only, tumors inserted on the device inside the
               train step (config.synth, the anchor's generator and p = 0.9);
  'real'       the same model trained on the real-tumor source (LiTS-like).
Both are evaluated on held-out scans with real tumors: the phantom's LiTS-like source by default,
or converted LiTS / MSD Task03 shards given in `data.test_dirs` (`python -m
dassemble_jax.ct.convert --dataset lits|msd_task03_liver ...`). Reported: liver and tumor DSC,
lesion-level sensitivity and DSC by equivalent-sphere radius (0-5, 5-10, > 10 mm), scan-level
tumor sensitivity, and specificity on held-out healthy livers. A table on stdout and
workdir/liver_synthetic.json.

Default (phantom): the universal config's 5 mm voxels, 24^3 crops and small U-Net, 150 steps per
model: a few minutes on 2 CPU cores. (At 3 mm, 24^3 crops hold too little context: 120 steps
gave liver DSC ~0.4 for both models.) Lesions of the 0-5 mm bin are at most a few voxels here.
':tiny': the same code path in seconds (used by tests/jobs/test_liver_synthetic.py).
"""

import ml_collections

from configs import universal


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  parts = [p for p in (arg or "").split(",") if p]
  if set(parts) - {"phantom", "tiny"}:
    raise ValueError(f"config argument {arg!r}: expected '' or 'tiny'")
  c = universal.get_config("tiny" if "tiny" in parts else None)
  # Dispatch key read by dassemble_jax/main.py.
  c.job = "liver_synthetic"

  # --- data --------------------------------------------------------------------------------
  # Phantom sources to generate: the healthy ones train the synthetic model, the real-tumor
  # ones train the real model and give the held-out test scans.
  c.data.healthy_sources = ("phantom_healthy_liver",)
  c.data.real_sources = ("phantom_lits",)
  c.data.phantom_sources = c.data.healthy_sources + c.data.real_sources
  c.data.phantom_train_cases = 8
  # Held-out scans per source: real-tumor ones for DSC/sensitivity, healthy ones for specificity.
  c.data.phantom_test_cases = 6
  c.data.phantom_val_cases = 1
  # Converted real data instead: `shard_dirs` are the healthy sources (synthetic model),
  # `real_shard_dirs` the real-tumor training sources (real model; empty: no real model),
  # `test_dirs` held-out scans with real tumors, `healthy_test_dirs` held-out healthy livers.
  c.data.real_shard_dirs = ()
  c.data.healthy_test_dirs = ()

  # --- synthesis in the train step of the 'synthetic' model ----------------------------------
  c.synth.enabled = True
  c.synth.prob = 0.9
  c.synth.sources = ()  # every training source annotating liver and not liver tumors

  # --- model and schedule --------------------------------------------------------------------
  # Liver and liver tumor only: one-hot class codes (no text encoder to fetch).
  c.model.class_code = "onehot"
  c.num_steps = 150
  c.log_every = 20
  c.checkpoint_every = 50
  c.eval_every = 50
  # Inner edges (mm) of the equivalent-sphere radius bins for lesion-level sensitivity:
  # (5, 10) gives 0-5, 5-10 and > 10 mm.
  c.eval.radius_edges_mm = (5.0, 10.0)
  c.train_single_sources = False
  c.write_predictions = False

  if "tiny" in parts:
    c.data.phantom_train_cases = 1
    c.data.phantom_test_cases = 1
    c.data.phantom_val_cases = 1
    c.data.spacing = 6.0
    c.num_steps = 3
    c.log_every = 1
    c.eval_every = 2
    c.checkpoint_every = 2
  return c
