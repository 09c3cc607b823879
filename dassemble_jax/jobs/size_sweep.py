"""When does assembly help? The odd/even table at several per-source training sizes.

  python -m dassemble_jax.jobs.size_sweep --workdir=results/size_sweep \
      --sizes=100,300,1000,3000,all --seeds=5 --base=results/odd_even
  python -m dassemble_jax.jobs.size_sweep --workdir=results/size_sweep --report_only ...

Each size N runs `jobs.tables` odd_even with N training + N // 2 validation images per source
and `tables.sweep_epochs(N)` epochs (about the same number of images seen per source at every
size) into WORKDIR/nN/, skipping a size whose runs are stored already. 'all' trains each source
on every training image of its digits and validates on every validation image of them
(ALL_EPOCHS epochs, WORKDIR/nall/). --base adds a stored
odd/even table (the main one: 500 per source) as one more size. The report (WORKDIR/size_sweep.md,
.json, .png): per size, the gain of D0+D1 over D0 on the odd digits and over D1 on the even
ones, each seed's mean over those classes, paired by seed (mean, 95% t interval, paired t-test;
`classification.paired_report`).
"""

from __future__ import annotations

import json
import os

import numpy as np
from absl import app, flags

from dassemble_jax import atomic, cli
from dassemble_jax.classification import paired_report
from dassemble_jax.jobs import tables

# Epochs at the whole set (about 25,000 training images per source): 2 epochs are about 50,000
# images seen per source, twice what 3,000 per source sees in its 8 epochs, whose validation
# curves are flat from the 6th (n3000/odd_even.md). tables.sweep_epochs keeps at least 8, which
# here would be 200,000 images, about an hour of a 2-core CPU per seed; the whole set's own
# curves (nall/odd_even_curves.png) show whether 2 are enough.
ALL_EPOCHS = 2


def _load(folder: str) -> tuple[list, dict] | None:
  try:
    with open(os.path.join(folder, "odd_even_runs.json"), encoding="utf-8") as f:
      runs = json.load(f)
    with open(os.path.join(folder, "odd_even.json"), encoding="utf-8") as f:
      meta = json.load(f)
  except FileNotFoundError:
    return None
  except (OSError, json.JSONDecodeError) as e:
    raise SystemExit(f"error: {e.filename}: cannot read the stored sweep runs ({e})") from None
  return runs, meta


def _size_of(meta: dict) -> int:
  return int(meta["subset_sizes"]["D0"][0][1])


def parse_sizes(text: str) -> list[int]:
  """'100,300,all' -> [100, 300, -1] (-1: every image of the source's digits)."""
  sizes = []
  for part in (p.strip() for p in text.split(",")):
    if not part:
      continue
    if part == "all":
      sizes.append(-1)
    elif part.isdigit() and int(part) > 0:
      sizes.append(int(part))
    else:
      raise cli.ConfigError(f"--sizes: {part!r} is not a positive number of images or 'all'")
  return sizes


def epochs_for(num_train: int) -> int:
  """tables.sweep_epochs for a stated size; ALL_EPOCHS for the whole set (-1)."""
  return ALL_EPOCHS if num_train < 0 else tables.sweep_epochs(num_train)


def folder_for(workdir: str, num_train: int) -> str:
  return os.path.join(workdir, "nall" if num_train < 0 else f"n{num_train}")


def summarise(folders: list[str]) -> list[dict]:
  """Per stored size (ascending): gains of D0+D1 over each source, paired by seed."""
  rows = []
  for folder in folders:
    loaded = _load(folder)
    if loaded is None:
      continue
    runs, meta = loaded
    # "all": the table ran every image of each source's digits (--num_train=-1).
    row = {"num_train": _size_of(meta), "all": bool(meta.get("num_train_all", False)),
           "folder": folder, "epochs": meta["recipe"]["epochs"],
           "seeds": len({r["seed"] for r in runs}),
           "num_train_D1": int(meta["subset_sizes"]["D1"][0][1])}
    for c in paired_report.comparisons("odd_even", []):
      whole = paired_report.compare(runs, c["a"], c["b"], c["classes"])[-1]
      row[f"gain_over_{c['b']}"] = {k: whole[k] for k in
                                    ("n", "mean", "ci_low", "ci_high", "t_p", "wilcoxon_p",
                                     "wins")}
    for setting in ("D0", "D1", "D0+D1"):
      row[f"mean_auc_{setting}"] = float(100 * np.mean([r["mean_test_auc"] for r in runs
                                                        if r["setting"] == setting]))
    rows.append(row)
  return sorted(rows, key=lambda r: r["num_train"])


def markdown(rows: list[dict]) -> str:
  lines = [("| training images per source | epochs | seeds | mean test AUC over its own classes "
            "(%): D0 / D1 / D0+D1 | gain over D0, odd digits (points, 95% CI, p) | gain over D1, "
            "even digits |"),
           "|---|---|---|---|---|---|"]
  for r in rows:
    cells = []
    for b in ("D0", "D1"):
      g = r[f"gain_over_{b}"]
      cells.append(f"{g['mean']:+.2f} [{g['ci_low']:+.2f}, {g['ci_high']:+.2f}], "
                   f"p = {paired_report.fmt_p(g['t_p'])}")
    size = (f"all: {r['num_train']:,} (D0) / {r['num_train_D1']:,} (D1)" if r.get("all")
            else str(r["num_train"]))
    lines.append(f"| {size} | {r['epochs']} | {r['seeds']} | "
                 f"{r['mean_auc_D0']:.2f} / {r['mean_auc_D1']:.2f} / {r['mean_auc_D0+D1']:.2f}"
                 f" | {cells[0]} | {cells[1]} |")
  return "\n".join(lines)


def plot(path: str, rows: list[dict]) -> None:
  from matplotlib.figure import Figure  # pylint: disable=import-outside-toplevel
  fig = Figure(figsize=(6.0, 3.8))
  ax = fig.subplots()
  x = np.array([r["num_train"] for r in rows], np.float64)
  for i, (b, label) in enumerate((("D0", "over D0 (odd digits)"),
                                  ("D1", "over D1 (even digits)"))):
    g = [r[f"gain_over_{b}"] for r in rows]
    mean = np.array([v["mean"] for v in g])
    err = np.array([[v["mean"] - v["ci_low"] for v in g], [v["ci_high"] - v["mean"] for v in g]])
    ax.errorbar(x * (1 + 0.03 * (2 * i - 1)), mean, yerr=err, marker="o", capsize=3,
                label=f"D0+D1 {label}")
  ax.axhline(0, color="k", lw=0.6)
  ax.set_xscale("log")
  ax.set_xticks(x, [f"all\n({int(v):,})" if r.get("all") else str(int(v))
                    for v, r in zip(x, rows)])
  ax.set_xlabel("training images per source")
  ax.set_ylabel("gain in mean test AUC (points)")
  ax.set_title("MNIST odd/even: gain of assembly, mean and 95% CI over seeds")
  ax.legend(fontsize=8)
  fig.tight_layout()
  with atomic.temporary_path(path) as tmp:
    fig.savefig(tmp, dpi=110, format="png")


def report_markdown(rows: list[dict]) -> str:
  """The whole size_sweep.md."""
  return ("# MNIST odd/even: gain of the assembled model vs per-source training size\n\n"
          "Gain = D0+D1 minus the single source, each seed's mean over that source's classes, "
          "paired by seed (95% t interval, two-sided paired t-test).\n\n" + markdown(rows)
          + "\n")


def write_report(workdir: str, folders: list[str]) -> dict:
  rows = summarise(folders)
  if not rows:
    raise SystemExit(f"error: {workdir}: no stored odd/even runs in {folders}")
  os.makedirs(workdir, exist_ok=True)
  md = report_markdown(rows)
  atomic.write_bytes(os.path.join(workdir, "size_sweep.md"), md.encode())
  atomic.write_json(os.path.join(workdir, "size_sweep.json"), {"rows": rows}, indent=1)
  plot(os.path.join(workdir, "size_sweep.png"), rows)
  return {"rows": rows, "markdown": md}


def main(argv):
  del argv
  f = flags.FLAGS
  sizes = parse_sizes(f.sizes)
  folders = [folder_for(f.workdir, n) for n in sizes]
  if not f.report_only:
    for n, folder in zip(sizes, folders):
      if _load(folder) is None:
        tables.run_table("odd_even", folder, seeds=f.seeds, num_train=n, epochs=epochs_for(n))
  out = write_report(f.workdir, folders + ([f.base] if f.base else []))
  print(out["markdown"])


def _define_flags() -> None:
  flags.DEFINE_string("workdir", None, "output folder (one subfolder per size)")
  flags.DEFINE_string("sizes", "100,300,1000",
                      "training images per source, comma separated; 'all': every image of the "
                      "source's digits")
  flags.DEFINE_integer("seeds", 5, "seeds per setting and size")
  flags.DEFINE_string("base", None, "a stored odd/even table folder to add as one more size")
  flags.DEFINE_bool("report_only", False, "only write the report from the stored runs")
  flags.mark_flags_as_required(["workdir"])


if __name__ == "__main__":
  _define_flags()
  app.run(lambda argv: cli.run_main(main, argv))
