"""Jobs: what `python -m dassemble_jax.main` (or `python -m dassemble_jax.jobs.<name>`) runs.

Each job reads a config, uses the libraries (classification/, segmentation/, ct/, synth/, data/,
models/) and writes a workdir. Jobs import libraries, never the reverse (one job calls another
only to reuse a whole step: robustness builds its evaluation set with synth_sweep).

  classify         one label-assembled classifier: train, select on validation, test AUC
  tables           the paper's tables as settings x seeds (vmapped multi-runs)
  all_tables       every MNIST table, several processes at once
  summarize        per-class AUC over finished classification runs
  universal        the Universal Model on an assembly vs one model per source (the default job)
  add_class        teach a trained Universal Model a new class (pretrained / fine-tuned / scratch)
  liver_synthetic  synthetic-tumor training vs real-tumor training
  robustness       a trained model on sweeps of one synthetic-tumor property
  synth_overlay    synthetic tumors inserted into a real CT, as NIfTI + overlay PNGs
  synth_sweep      a robustness evaluation set, one property at a time
  complete         complete an assembly with pseudo labels; the phantom study of it
"""
