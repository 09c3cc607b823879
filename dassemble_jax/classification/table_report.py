"""A result table (per-class test AUC, mean +- std over seeds) as markdown, JSON and a PNG chart.

Every file is written through `atomic` (a temporary name, then a rename), so an interrupted run
leaves nothing half-written.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence

import numpy as np

from dassemble_jax import atomic


def class_order(summary: Mapping[str, Mapping[str, dict]], preferred: Sequence[str] = ()) -> list:
  seen = [c for c in preferred if any(c in col for col in summary.values())]
  for col in summary.values():
    seen += [c for c in col if c not in seen]
  return seen


def markdown(summary, columns: Sequence[str], classes: Sequence[str],
             seed_table: Mapping[str, Mapping[str, float]] | None = None) -> str:
  """| class | col (ours, mean +- std %) ... | seed: col ... | with a mean-over-classes row."""
  seed_cols = list(seed_table or {})
  head = [f"{c} (ours)" for c in columns] + [f"{c} (seed)" for c in seed_cols]
  lines = ["| class | " + " | ".join(head) + " |", "|---" * (len(head) + 1) + "|"]
  for cls in classes + ["mean"]:
    cells = []
    for col in columns:
      if cls == "mean":
        vals = np.array([np.nanmean([summary[col][c]["values"][i] for c in summary[col]])
                         for i in range(min(v["n"] for v in summary[col].values()))])
        sd = vals.std(ddof=1) if vals.size > 1 else 0.0
        cells.append(f"{100 * vals.mean():.2f} ± {100 * sd:.2f}")
        continue
      e = summary[col].get(cls)
      cells.append("-" if e is None else f"{100 * e['mean']:.2f} ± {100 * e['std']:.2f}")
    for col in seed_cols:
      v = seed_table[col].get(cls) if cls != "mean" else None
      cells.append("-" if v is None else f"{v:.1f}")
    lines.append(f"| {cls} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def bar_chart(path: str, summary, columns: Sequence[str], classes: Sequence[str],
              title: str) -> None:
  # The object API (no pyplot): no global backend switch, so notebooks keep their inline plots.
  from matplotlib.figure import Figure  # pylint: disable=import-outside-toplevel
  fig = Figure(figsize=(1.0 + 0.9 * len(classes), 3.6))
  ax = fig.subplots()
  width = 0.8 / max(1, len(columns))
  x = np.arange(len(classes))
  for i, col in enumerate(columns):
    means = [100 * summary[col][c]["mean"] if c in summary[col] else np.nan for c in classes]
    stds = [100 * summary[col][c]["std"] if c in summary[col] else 0 for c in classes]
    ax.bar(x + (i - (len(columns) - 1) / 2) * width, means, width, yerr=stds, label=col,
           capsize=2)
  finite = [100 * e["mean"] for col in columns for e in summary[col].values()]
  lo = max(0.0, min(finite) - 3) if finite else 50
  ax.set_ylim(lo, 100.5)
  ax.set_xticks(x, classes)
  ax.set_ylabel("test AUC (%)")
  ax.set_title(title)
  ax.legend(fontsize=7, ncol=min(5, len(columns)))
  fig.tight_layout()
  with atomic.temporary_path(path) as tmp:
    fig.savefig(tmp, dpi=110, format="png")


def write_table(workdir: str, name: str, summary, columns: Sequence[str], *,
                classes: Sequence[str] = (), seed_table=None, extra: dict | None = None,
                title: str | None = None) -> dict[str, str]:
  """Writes workdir/{name}.md, .json, .png; returns their paths."""
  os.makedirs(workdir, exist_ok=True)
  classes = class_order({c: summary[c] for c in columns}, classes)
  md = markdown(summary, columns, classes, seed_table)
  paths = {ext: os.path.join(workdir, f"{name}.{ext}") for ext in ("md", "json", "png")}
  # Bytes: the text has '±', whatever the locale's default encoding.
  atomic.write_bytes(paths["md"], f"# {title or name}\n\nPer-class test AUC (%), mean ± std over "
                     f"seeds.\n\n{md}\n".encode())
  atomic.write_bytes(paths["json"], json.dumps({"name": name, "columns": list(columns),
                                                "classes": classes, "summary": summary,
                                                "seed_table": seed_table, **(extra or {})},
                                               indent=1, default=float).encode())
  bar_chart(paths["png"], summary, columns, classes, title or name)
  return paths
