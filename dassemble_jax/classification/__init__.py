"""Label assembly for classification: the library under the MNIST / CIFAR jobs and tables.

  labels        label spaces; sources that annotate some classes; targets + known-class masks
  assembly      draw each source's examples from a raw dataset (train / validation / test)
  prepare       the convert step: raw data -> assembled ArrayRecord shards + manifest (once)
  losses        masked partial-label BCE (only the pairs a source annotates count)
  metrics       per-class ROC AUC on the host (scikit-learn), unknown labels skipped
  augment       on-device augmentation inside the jitted step
  semisup       pseudo labels and weak/strong consistency on the unknown entries
  trainer       the one train step and epoch loop (single run, and vmapped by multirun)
  multirun      many runs of one recipe as one vmapped program (the experiment tables)
  experiments   the training recipe and every experiment family's settings (configs/ wraps them)
  example2      Example II: gain of an added class vs class similarity
  table_report  a table as markdown, JSON and a bar chart
  paper_numbers the seed paper's AUCs, printed beside ours

The jobs that use it live in dassemble_jax/jobs/ (classify, tables, all_tables, summarize).
"""
