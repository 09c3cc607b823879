"""Complete a partially labelled assembly with pseudo labels (and, on the phantom, measure it).

  python -m dassemble_jax.main --config=configs/complete.py --workdir=/tmp/complete
  python -m dassemble_jax.main --config=configs/complete.py:tiny --workdir=/tmp/complete_tiny
  python -m dassemble_jax.main --config=configs/complete.py --workdir=/data/completed \
      --config.complete.run_dirs='("/data/universal/runs/assembly", "/data/swin/runs/assembly")' \
      --config.complete.shard_dirs='("/shards/btcv", "/shards/lits", "/shards/kits19")'

With `complete.run_dirs` (one trained Universal Model run, or several: an ensemble averaging
probabilities), every case of every folder of `complete.shard_dirs` (default: the first run's own
training shards) gets the classes its source does not annotate as pseudo labels where their
confidence reaches `complete.threshold` (dassemble_jax/jobs/complete.py says what is written).
With none (the default), the phantom study: per seed of `complete.seeds`, the universal job's
assembly model (round 1, the universal config's phantom and model) completes the phantom
assembly, its pseudo labels are scored against the phantom's hidden full truth, a round-2 model
trains on the completed assembly with the same steps, and both are compared on held-out cases.
The model, data and training fields are the universal config's (configs/universal.py). The
stored study (results/completion/README.md) ran with `--config.assembly_num_steps=250`.
':tiny': the same code path in seconds (tests/jobs/test_complete.py).
"""

import ml_collections

from configs import universal


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  parts = [p for p in (arg or "").split(",") if p]
  if set(parts) - {"phantom", "tiny"}:
    raise ValueError(f"config argument {arg!r}: expected '' or 'tiny'")
  c = universal.get_config("tiny" if "tiny" in parts else None)
  # Dispatch key read by dassemble_jax/main.py.
  c.job = "complete"
  # The universal job's comparison and predictions are not run here.
  c.train_single_sources = False
  c.write_predictions = False

  c.complete = ml_collections.ConfigDict()
  # Trained run folders (DIR/runs/<model>); several: an ensemble (mean probabilities). Empty:
  # the phantom study trains its own round-1 model(s).
  c.complete.run_dirs = ()
  # Converted shard folders to complete (one source each); empty: the first run's training ones.
  c.complete.shard_dirs = ()
  # Splits to complete; empty: every split of each folder.
  c.complete.splits = ()
  # Which checkpoint of each run: 'best' (validated) or 'latest'.
  c.complete.checkpoint = "best"
  # Class names to pseudo-label (every model must have been trained on each); empty: every class
  # all models were trained on. A source's own classes are never predicted: human labels win.
  c.complete.classes = ()
  # A pseudo class becomes a label in a case when its confidence (mean probability in the region
  # x (1 - uncertain fraction) x (1 - model disagreement), segmentation/completion.py) reaches
  # this; below it the class stays unknown in that case (excluded from the loss), never
  # background.
  c.complete.threshold = 0.5
  # Probabilities strictly inside (lo, hi) count as uncertain voxels.
  c.complete.uncertain_band = (0.25, 0.75)
  # Overlay PNGs of the worst-ranked (case, class) rows of the review list.
  c.complete.num_overlays = 6
  # Real data: train a second model on the completed shards and compare it with the first run
  # on `data.test_dirs` (the phantom study always does).
  c.complete.round2 = False
  # Round-2 steps on real data; 0: the first run's num_steps.
  c.complete.round2_steps = 0
  # Phantom study: seeds (each changes the phantom cases, the model init and the crops; round 1
  # and round 2 share it, so they are compared paired by seed).
  c.complete.seeds = (0, 1, 2)
  # Phantom study: round-1 models per seed (> 1: an ensemble of seeds seed, seed + 100, ...).
  c.complete.phantom_models = 1
  if "tiny" in parts:
    c.complete.seeds = (0,)
    # Two sources that complete each other (liver + liver tumor, kidneys + kidney tumor).
    c.data.phantom_sources = ("phantom_lits", "phantom_kits")
    c.complete.num_overlays = 2
    # Two steps per model (the universal tiny assembly would take 4 x 3).
    c.assembly_num_steps = 2
    # Tiny models are barely trained: a threshold just above 0 keeps the organs they miss
    # unknown and accepts the lesions they are sure are absent, so both paths run.
    c.complete.threshold = 1e-3
  return c
