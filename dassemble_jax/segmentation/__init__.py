"""The Universal Model library: what the segmentation jobs (dassemble_jax/jobs/) are built from.

  train_step      a config's model, optimiser, jitted init and train step (compiled once)
  train_loop      training with checkpoints, validation and resume; then the held-out evaluation
  trained_run     what a run folder holds, restoring it, its apply function and trained classes
  inference_spec  a config's sliding-window and threshold settings, resolved once
  inference       scan -> model grid -> sliding window -> thresholds -> scan grid, NIfTI out
  sliding_window  Gaussian-weighted sliding-window prediction on the device
  postprocess     the anchor's post-processing, label maps from class masks
  scan_statistics per-class volume, HU, bounding box and lesions of a predicted scan
  preview         axial/coronal/sagittal overlay PNG of a predicted scan (radiological view)
  fused_heads     a Pallas kernel of the dynamic heads + loss (head_impl='fused')
  seg_losses      masked BCE + Dice over the annotated (sample, class) pairs
  seg_metrics     DSC, NSD, detection; aggregation by source
  evaluate        held-out cases, their evaluation, the validator used during training
  reports         tables, eval.json, comparisons, overlay PNGs
  assembly_data   the embedded phantom's sources, converted once into a workdir
  ensemble        several trained runs as one model (mean probabilities, each model's masks)
  completion      pseudo labels for the classes a source lacks: confidence, merge, review order
  completion_study  the phantom study of completion: pseudo-label DSC, rank correlation, rounds
  phantom_truth   a phantom case's full labels on its stored grid (the hidden truth)
  anchor_import   the anchor's released PyTorch checkpoints -> a run folder (every tensor mapped)
"""
