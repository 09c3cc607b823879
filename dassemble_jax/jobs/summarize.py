"""Summarise finished runs: per-class test AUC, mean +- std over seeds, one column per setting.

  python -m dassemble_jax.jobs.summarize D0=runs/oe_D0_s0,runs/oe_D0_s1 D0+D1=runs/oe_D01_s0,...

Each argument is SETTING=WORKDIR[,WORKDIR...]; every workdir holds a results.json written by
`jobs.classify.train_and_evaluate`. Prints a markdown table (classes in the order of the first
setting with the most classes); '-' where a setting has no output for the class.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np


def collect(settings: dict[str, list[str]]) -> tuple[list[str], dict[str, dict[str, list[float]]]]:
  per_setting, classes = {}, []
  for name, dirs in settings.items():
    aucs: dict[str, list[float]] = {}
    for d in dirs:
      path = os.path.join(d, "results.json")
      try:
        with open(path) as f:
          res = json.load(f)
      except (OSError, json.JSONDecodeError) as e:
        raise SystemExit(f"{path}: cannot read results ({e}); did the run finish?") from None
      for c, v in res["test_auc"].items():
        aucs.setdefault(c, []).append(v)
    per_setting[name] = aucs
    if len(aucs) > len(classes):
      classes = list(aucs)
  return classes, per_setting


def table(classes, per_setting) -> str:
  names = list(per_setting)
  lines = ["| class | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
  for c in classes:
    cells = []
    for n in names:
      v = per_setting[n].get(c)
      cells.append("-" if not v else f"{100 * np.mean(v):.1f} ± {100 * np.std(v):.1f}")
    lines.append(f"| {c} | " + " | ".join(cells) + " |")
  seeds = {n: max(len(v) for v in per_setting[n].values()) for n in names}
  lines.append("| runs | " + " | ".join(str(seeds[n]) for n in names) + " |")
  return "\n".join(lines)


def main(argv: list[str]) -> int:
  if len(argv) < 2:
    print(__doc__)
    return 2
  settings = {}
  for arg in argv[1:]:
    name, _, dirs = arg.partition("=")
    if not dirs:
      raise SystemExit(f"argument {arg!r}: expected SETTING=WORKDIR[,WORKDIR...]")
    settings[name] = dirs.split(",")
  print(table(*collect(settings)))
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv))
