"""The Universal Model on a CT assembly: train on the assembly and on each single source, compare.

  python -m dassemble_jax.main --config=configs/universal.py --workdir=/tmp/universal
  python -m dassemble_jax.main --config=configs/universal.py:tiny --workdir=/tmp/universal_tiny
  python -m dassemble_jax.main --config=configs/universal.py:seeds --workdir=/tmp/universal_seeds
  python -m dassemble_jax.main --config=configs/universal.py:small,seeds --workdir=/tmp/u_small
  python -m dassemble_jax.main --config=configs/universal.py:full --workdir=/data/universal \
      --config.data.shard_dirs='("/shards/btcv", "/shards/lits", "/shards/kits19")' \
      --config.data.test_dirs='("/shards_test/btcv", "/shards_test/lits", "/shards_test/kits19")'
  python -m dassemble_jax.predict --workdir=/tmp/universal/runs/assembly --input=CT.nii.gz \
      --output=/tmp/pred [--per_class]

Default ('' / 'phantom'): the embedded procedural phantom, four sources (LiTS-, KiTS-, MSD
spleen- and BTCV-like), each annotating its own classes. Sized for the dev machine: 5 mm voxels,
24^3 crops, a U-Net with base width 4 (0.36M parameters instead of 19.1M), 32 output classes,
100 steps per model, so the whole job (convert, 5 trainings, 5 evaluations, predictions, plots)
is meant to take <= 15 minutes on 2 idle CPU cores (see benchmarks/universal_step.md for what it
took on the shared, loaded machine).
':tiny': the same code path in seconds (16^3 crops, base width 2, 3 steps): used by the tests.
':small': the default's sources, case counts and class codes on the tiny volumes and model, 60
steps per single-source model (a first, cheaper seed study: results/universal_default/small/).
':full': the anchor's sizes (1.5 mm, 96^3 crops, U-Net 64..512 or Swin UNETR f=48, MiniLM text
codes, AdamW 1e-4, batch 2 per device) for an accelerator; point `data.shard_dirs` at converted
real datasets (`python -m dassemble_jax.ct.convert`), or keep the phantom.
Append ',swin' to use Swin UNETR (e.g. 'full,swin').
':seeds': the default job once per seed 0 to 4 (DIR/seed_<s>), then the comparison across seeds
with its paired tests (DIR/seeds.{txt,json}); results/universal_default/ holds the stored one
(seeds.json), whose verdicts the default run prints after its own table.
"""

import ml_collections

from dassemble_jax.ct import phantom
from dassemble_jax.models import universal_head


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  parts = [p for p in (arg or "").split(",") if p]
  unknown = set(parts) - {"phantom", "tiny", "small", "full", "swin", "seeds"}
  if unknown or len({"tiny", "small", "full"} & set(parts)) > 1:
    raise ValueError(f"config argument {arg!r}: expected 'phantom', 'tiny', 'small' or 'full', "
                     "optionally with ',swin' and/or ',seeds'")
  c = ml_collections.ConfigDict()
  # Dispatch key read by dassemble_jax/main.py.
  c.job = "universal"
  # Model init, step rngs, Grain shuffling and crop sampling.
  c.seed = 0

  # --- data ------------------------------------------------------------------------------------
  c.data = ml_collections.ConfigDict()
  # Phantom sources to generate and convert into `workdir/data` when `shard_dirs` is empty.
  c.data.phantom_sources = tuple(phantom.SOURCE_NAMES)
  # Training cases per phantom source, and held-out cases per source (a different seed).
  c.data.phantom_train_cases = 6
  c.data.phantom_test_cases = 2
  # Validation cases per phantom source (a third seed): they pick the best checkpoint.
  c.data.phantom_val_cases = 1
  # Phantom volume in voxels at its native spacing (mm), before resampling to `spacing`.
  c.data.phantom_shape = (96, 80, 64)
  c.data.phantom_native_spacing = (1.875, 1.875, 2.5)
  # Model voxel size in mm: conversion resamples every case to it (the anchor: 1.5).
  c.data.spacing = 5.0
  # Converted real datasets instead of the phantom: one folder per source (train split read) and
  # the matching held-out folders (their 'train' split is evaluated; may be empty).
  c.data.shard_dirs = ()
  c.data.test_dirs = ()
  # Validation folders (converted; their 'train' and 'val' splits are read) for the best
  # checkpoint; empty: the 'val' split of `shard_dirs` if they have one, else no selection.
  # Only cases of the model's own training sources are used.
  c.data.val_dirs = ()
  # Grain worker processes (0: read in the main process; enough for small crops).
  c.data.num_workers = 0
  # Crops cut from each whole-volume read (the anchor: 2).
  c.data.crops_per_record = 1
  # Host window = crop + 2 * jitter per axis; the device takes a random crop inside it.
  c.data.jitter = 2

  # --- augmentation on the device (ct/volume_augment.py) ----------------------------------------------
  c.augment = ml_collections.ConfigDict()
  c.augment.rot90_prob = 0.1
  c.augment.shift_prob = 0.2
  c.augment.shift = 0.1
  c.augment.zoom_prob = 0.3
  c.augment.zoom_range = (1.3, 1.5)

  # --- model -----------------------------------------------------------------------------------
  c.model = ml_collections.ConfigDict()
  # 'unet' (the anchor's 3D U-Net) or 'swin' (Swin UNETR).
  c.model.backbone = "unet"
  # U-Net base width b (levels 2b..16b; the anchor: 32 -> 64/128/256/512).
  c.model.base_channels = 4
  # U-Net normalisation: 'batch' (the anchor) or 'group' (independent of the tiny batch).
  c.model.norm = "group"
  # Swin UNETR feature size (the anchor: 48; must divide by 12).
  c.model.feature_size = 12
  # Class codes: 'text' (embedding table, the paper), 'onehot' or 'learned' (ablations).
  c.model.class_code = "text"
  # U-Net BatchNorm at inference: False uses the running averages (ordinary BatchNorm); True
  # normalises each window by its own statistics, as the anchor's U-Net does (imported runs set
  # it; fine-tuning one of them keeps the anchor's behaviour with --config.model.eval_batch_stats).
  c.model.eval_batch_stats = False
  # Dynamic heads, the same numbers three ways: 'blockdiag' (three dense matmuls with
  # block-diagonal weights over a (B, voxels, 32 x 8) layout; heads + loss 8.0 ms on an H100),
  # 'einsum' (per-(sample, class) einsums; 14.0 ms) or 'fused' (a Pallas kernel that never
  # stores the logits: ~2.6 GB less memory, 11.4 ms). benchmarks/universal_step.md. The
  # model's own default ('blockdiag'), so code and config cannot disagree.
  c.model.head_impl = universal_head.DEFAULT_HEAD_IMPL
  # Text table: '' computes MiniLM embeddings of the class prompts (cached in the workdir);
  # a path loads a user's (32, D) .npy table (e.g. CLIP's 512-d).
  c.model.embedding_table = ""
  # Compute dtype: 'float32' or 'bfloat16' (parameters and optimiser stay float32).
  c.compute_dtype = "float32"

  # --- optimisation ----------------------------------------------------------------------------
  # Crop edge in voxels (divisible by 8 for the U-Net, 32 for Swin UNETR).
  c.crop_size = 24
  # Global batch (must divide by the device count).
  c.batch_size = 2
  # Steps of each single-source model.
  c.num_steps = 100
  # Steps of the assembly model. 0: num_steps x the number of sources, i.e. the same total
  # compute as the single-source models together (one model for every class at the cost of the
  # specialists); set it to num_steps for an equal-steps-per-model comparison.
  c.assembly_num_steps = 0
  # AdamW peak learning rate, linear warm-up over `warmup_steps`, cosine to 1% of the peak.
  c.learning_rate = 3e-3
  c.warmup_steps = 10
  c.weight_decay = 1e-5
  c.grad_clip_norm = 1.0
  # Log metrics every n steps; checkpoint every n steps (and at the end).
  c.log_every = 20
  c.checkpoint_every = 50
  # Validate (mean DSC over the validation cases' annotated, trained classes) every n steps and
  # at the end; the best-scoring state is saved as the best checkpoint, which evaluation and
  # predictions use. 0: no validation (the latest state is evaluated).
  c.eval_every = 50

  # Fine-tuning: a trained run's folder (DIR/runs/<model>) whose best checkpoint gives this
  # model's starting parameters; the optimiser, step and schedule start afresh. The model fields
  # (and the class-code width) must match. '' trains from scratch. configs/universal_add_class.py
  # uses it to teach a trained model a class that none of its sources annotated.
  c.init_from = ""

  # --- synthetic liver tumors in the train step (dassemble_jax/synth/training.py) ------------
  c.synth = ml_collections.ConfigDict()
  # Off here: configs/liver_synthetic.py turns it on.
  c.synth.enabled = False
  # Per-sample probability of inserting tumors into an eligible window (the anchor: 0.9).
  c.synth.prob = 0.9
  # Eligible sources by name; empty: every source that annotates the liver but not liver tumors.
  c.synth.sources = ()
  # Allow a run in which no source is eligible (the step still runs the generator, on nothing).
  c.synth.none_eligible_ok = False
  # Tumor kinds drawn per sample (reference table: tiny, small, medium, large, mix).
  c.synth.kind_choices = ("tiny", "small", "medium", "large", "mix")
  # HU decrement range of the tumors (the anchor: 65-145 HU, scaled by the texture).
  c.synth.hu_decrement = (65.0, 145.0)

  # --- evaluation and outputs ------------------------------------------------------------------
  c.eval = ml_collections.ConfigDict()
  # Sliding window: overlap between neighbours and windows per model call.
  c.eval.overlap = 0.5
  c.eval.sw_batch_size = 4
  # Probability threshold for every class.
  c.eval.threshold = 0.5
  # NSD tolerance in mm (one for all classes).
  c.eval.nsd_tolerance_mm = 4.0
  # Run the anchor's post-processing (largest component, lung split, lesions in their hosts).
  c.eval.postprocess = True
  # Held-out cases drawn in the overlay PNG.
  c.eval.num_overlays = 4
  # Train one model per single source too (the comparison table); False: the assembly only.
  c.train_single_sources = True
  # Write NIfTI predictions of the assembly model for the held-out raw files.
  c.write_predictions = True
  # Seed study: non-empty runs the whole job once per seed (DIR/seed_<s>) and writes the
  # comparison across seeds, paired by seed (DIR/seeds.{txt,json}); empty: one run.
  c.seeds = ()
  # A stored seed study (seeds.json, relative to the working directory): after its own table a
  # run prints which comparisons held across that study's seeds, if the study's settings match
  # this run's (jobs/universal.py `study_settings`); '' or a missing file: nothing printed.
  c.seed_study = "results/universal_default/seeds.json"

  if "tiny" in parts:
    c.data.phantom_train_cases = 2
    c.data.phantom_test_cases = 1
    c.data.phantom_shape = (40, 36, 32)
    c.data.phantom_native_spacing = (4.5, 4.5, 5.0)
    c.data.spacing = 6.0
    c.data.jitter = 1
    c.model.base_channels = 2
    c.model.class_code = "onehot"
    c.crop_size = 16
    c.num_steps = 3
    c.warmup_steps = 1
    c.log_every = 1
    c.checkpoint_every = 2
    c.eval_every = 2
    c.eval.num_overlays = 2
  if "small" in parts:
    # The default's sources, case counts, class codes and schedule on the tiny variant's
    # volumes and model (a 40 x 36 x 32 phantom resampled to 6 mm, 16^3 crops, base width 2),
    # 60 steps per single-source model: a seed study that a loaded 2-core CPU finishes.
    c.data.phantom_shape = (40, 36, 32)
    c.data.phantom_native_spacing = (4.5, 4.5, 5.0)
    c.data.spacing = 6.0
    c.data.jitter = 1
    c.model.base_channels = 2
    c.crop_size = 16
    c.num_steps = 60
    c.log_every = 20
    c.checkpoint_every = 60
    c.eval_every = 20
  if "full" in parts:
    c.data.phantom_train_cases = 24
    c.data.phantom_test_cases = 4
    c.data.spacing = 1.5
    c.data.jitter = 8
    c.data.crops_per_record = 2
    c.data.num_workers = 8
    c.model.base_channels = 32
    c.model.norm = "batch"
    c.model.feature_size = 48
    c.compute_dtype = "bfloat16"
    c.crop_size = 96
    c.num_steps = 40000
    c.learning_rate = 1e-4
    c.warmup_steps = 1000
    c.log_every = 100
    c.checkpoint_every = 2000
    c.eval_every = 2000
    c.eval.nsd_tolerance_mm = 1.5
  if "seeds" in parts:
    c.seeds = (0, 1, 2, 3, 4)
  if "swin" in parts:
    c.model.backbone = "swin"
    c.crop_size = max(32, c.crop_size // 32 * 32)
  return c
