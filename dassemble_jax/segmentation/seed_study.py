"""Segmentation comparisons across seeds: paired differences, their intervals and tests.

A seed fixes everything a run draws (the phantom's training, held-out and validation cases, the
model's initialisation, the crops); two models trained with the same seed saw the same images,
so their per-class DSCs are compared paired by seed. Per class and comparison,
`paired_difference(b, a)` gives b - a over seeds through classification/paired_stats.py (the
project's one implementation): mean, sample std, 95% t interval, two-sided paired t-test,
exact Wilcoxon signed-rank p (with 3 seeds its smallest two-sided value is 0.25, so it can never
decide there). The verdict is the paired t-test's at `LEVEL` (`paired_stats.decide`): 'better' /
'worse' when p < LEVEL (a difference that is the same non-zero value on every seed counts as
decided: its t is infinite), 'equal' when every difference is 0, 'undecided' otherwise. The sign
of a mean alone never decides.

`universal_table(per_seed)` turns the universal job's per-seed comparison tables (each seed's
DIR/comparison.json 'comparison' entry) into the table of mean ± std per class and model and the
verdict of assembly vs each single-source model; `partial_full_table(per_seed, classes)` does the
same for the partial-vs-full labelling study (jobs/partial_full.py).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from dassemble_jax.classification import paired_stats

LEVEL = 0.05  # two-sided level of every verdict


def paired_difference(b: Sequence[float], a: Sequence[float], level: float = LEVEL) -> dict:
  """b - a paired by position (seed), computed by classification/paired_stats.py (the project's
  one implementation): mean, std, 95% interval, paired t and Wilcoxon p, seeds higher / lower,
  and the verdict (see the module docstring). Undefined values are None."""
  r = paired_stats.paired(b, a, alpha=0.05)
  d = np.asarray(b, np.float64) - np.asarray(a, np.float64)
  none = lambda v: None if v is None or not math.isfinite(v) else float(v)
  out = {"n": r["n"], "mean_a": float(np.mean(a)), "mean_b": float(np.mean(b)),
         "diff": d.tolist(), "diff_mean": r["mean"], "diff_std": none(r["sd"]),
         "ci95": (None if none(r["ci_low"]) is None
                  else [float(r["ci_low"]), float(r["ci_high"])]),
         "t_p": none(r["t_p"]), "wilcoxon_p": none(r["wilcoxon_p"]),
         "b_higher": r["wins"], "b_lower": r["losses"]}
  if r["n"] > 1 and not np.any(d):
    out["verdict"] = "equal"
  else:
    out["verdict"] = {"reproduces": "better", "opposite": "worse",
                      "no difference": "undecided"}[paired_stats.decide(r, level=level)]
  return out


def mean_std(values: Sequence[float]) -> str:
  """'0.512 ± 0.034' over seeds (sample std); '-' when nothing is finite."""
  v = np.asarray([x for x in values if x is not None and np.isfinite(x)], np.float64)
  if not v.size:
    return "-"
  return f"{v.mean():.3f} ± {v.std(ddof=1):.3f}" if v.size > 1 else f"{v.mean():.3f}"


def _finite(v) -> bool:
  return v is not None and math.isfinite(float(v))


def _p(v) -> str:
  return "-" if v is None else f"{v:.3g}"


def _diff_cell(r: dict) -> str:
  ci = r["ci95"]
  ci_txt = "" if ci is None else f" [{ci[0]:+.3f}, {ci[1]:+.3f}]"
  return f"{r['diff_mean']:+.3f}{ci_txt}"


def universal_table(per_seed: Mapping[int, Mapping], level: float = LEVEL) -> dict:
  """{seed: comparison} (each the universal job's 'comparison': {'dsc': {model: {class: v}},
  'classes': [...]}) -> {'models', 'classes', 'mean', 'per_seed', 'comparisons', 'overall',
  'text'}: per class and model the DSC per seed, then assembly vs each single-source model per
  class and on the model's classes together (the mean over them per seed), paired by seed."""
  seeds = sorted(int(s) for s in per_seed)
  tables = [per_seed[s] if s in per_seed else per_seed[str(s)] for s in seeds]
  models = list(tables[0]["dsc"])
  if "assembly" not in models:
    raise ValueError("the comparison has no 'assembly' model")
  for s, t in zip(seeds, tables):
    if list(t["dsc"]) != models:
      raise ValueError(f"seed {s}: models {list(t['dsc'])} differ from {models}")
  classes = [c for c in tables[0]["classes"]
             if all(c in t["classes"] for t in tables)]
  values = {m: {c: [t["dsc"][m].get(c) for t in tables] for c in classes} for m in models}
  out = {"seeds": seeds, "models": models, "classes": classes, "level": level,
         "per_seed": values, "comparisons": {}, "overall": {}}
  for m in models[1:]:
    own = [c for c in classes if all(_finite(v) for v in values[m][c])]
    rows = {}
    for c in own:
      if all(_finite(v) for v in values["assembly"][c]):
        rows[c] = paired_difference(values["assembly"][c], values[m][c], level)
    out["comparisons"][m] = rows
    if own:
      a = [float(np.mean([values["assembly"][c][i] for c in own])) for i in range(len(seeds))]
      b = [float(np.mean([values[m][c][i] for c in own])) for i in range(len(seeds))]
      out["overall"][m] = {"classes": own, **paired_difference(a, b, level)}
  out["text"] = _universal_text(out)
  return out


def _universal_text(t: dict) -> str:
  seeds, models, level = t["seeds"], t["models"], t["level"]
  n = len(seeds)
  w = 22
  lines = [f"[held-out DSC per class over {n} seeds {tuple(seeds)}: mean ± std]",
           f"{'class':{w}s}" + "".join(f"{m:>17s}" for m in models)]
  for c in t["classes"]:
    lines.append(f"{c:{w}s}" + "".join(f"{mean_std(t['per_seed'][m][c]):>17s}" for m in models))
  lines.append("")
  lines.append(f"[assembly - single source, paired by seed (n = {n}): mean difference "
               f"[95% t interval], paired t-test p, Wilcoxon p, seeds assembly higher/lower; "
               f"verdict at p < {level}]")
  for m in models[1:]:
    rows = t["comparisons"][m]
    o = t["overall"].get(m)
    if o is not None:
      lines.append(f"on {m}'s {len(o['classes'])} classes together: "
                   f"assembly {o['mean_b']:.3f} vs {o['mean_a']:.3f}, "
                   f"{_diff_cell(o)}, t p {_p(o['t_p'])}, Wilcoxon p {_p(o['wilcoxon_p'])}, "
                   f"higher/lower {_higher(o)}, {o['verdict']}")
    for c, r in rows.items():
      lines.append(f"  {c:{w - 2}s}{_diff_cell(r):>28s}  t p {_p(r['t_p']):>7s}  "
                   f"W p {_p(r['wilcoxon_p']):>6s}  {_higher(r):>5s}  {r['verdict']}")
  return "\n".join(lines)


def _higher(r: dict) -> str:
  """Seeds where the first sample (the assembly) is higher / lower than the second."""
  d = np.asarray(r["diff"])
  return f"{int(np.sum(d > 0))}/{int(np.sum(d < 0))}"


def partial_full_table(per_seed: Mapping[int, Mapping[str, Mapping[str, float]]],
                       classes: Sequence[str], level: float = LEVEL) -> dict:
  """{seed: {'partial'|'full': {class: DSC}}} -> full vs partial on `classes`, paired by seed:
  per class and for their mean."""
  seeds = sorted(int(s) for s in per_seed)
  rows = [per_seed[s] if s in per_seed else per_seed[str(s)] for s in seeds]
  out = {"seeds": seeds, "classes": list(classes), "level": level, "per_class": {}}
  for c in classes:
    p = [float(r["partial"][c]) for r in rows]
    f = [float(r["full"][c]) for r in rows]
    out["per_class"][c] = {"partial": p, "full": f, **paired_difference(f, p, level)}
  mp = [float(np.mean([r["partial"][c] for c in classes])) for r in rows]
  mf = [float(np.mean([r["full"][c] for c in classes])) for r in rows]
  out["mean"] = {"partial": mp, "full": mf, **paired_difference(mf, mp, level)}
  lines = [(f"[held-out DSC on the classes of interest over {len(seeds)} seeds {tuple(seeds)}: "
           f"full - partial paired by seed; verdict at paired t p < {level}]"),
           (f"{'class':22s}{'partial':>16s}{'full':>16s}{'full - partial [95% CI]':>30s}"
           f"{'t p':>9s}{'W p':>8s}{'+/-':>6s}  verdict")]
  for c, r in list(out["per_class"].items()) + [(f"mean of {len(classes)}", out["mean"])]:
    lines.append(f"{c:22s}{mean_std(r['partial']):>16s}{mean_std(r['full']):>16s}"
                 f"{_diff_cell(r):>30s}{_p(r['t_p']):>9s}{_p(r['wilcoxon_p']):>8s}"
                 f"{_higher(r):>6s}  {r['verdict']}")
  out["text"] = "\n".join(lines)
  return out
