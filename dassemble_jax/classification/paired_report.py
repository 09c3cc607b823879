"""Paired comparisons of a table's settings, seed by seed, and its validation curves.

A table's runs (`{table}_runs.json`: one dict per run with 'setting', 'seed', 'test_auc',
'history') pair up by seed: seed k of every setting drew the same images per source and started
from the same initialisation key. `COMPARISONS` lists, per table, which setting is compared with
which, on which classes, and the direction the seed paper reports; `compare` computes per class
the paired statistics of `paired_stats` (in AUC points) and, over those classes, of each seed's
mean difference. "Reproduces" is decided by the two-sided paired t-test at LEVEL.

`markdown` renders the rows; `verdict` the one-line summary per comparison that results/README.md
quotes; tests/jobs/test_tables_readme.py recomputes both from the stored runs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from dassemble_jax import atomic
from dassemble_jax.classification import paired_stats

LEVEL = 0.05  # two-sided, per class; Holm's family-wise count is reported beside it

ODD, EVEN = ["1", "3", "5", "7", "9"], ["0", "2", "4", "6", "8"]


def comparisons(table: str, settings: Sequence[str]) -> list[dict]:
  """[{'a', 'b', 'classes', 'expected'}]: a vs b on classes; expected +1 where the seed paper has
  a >= b (assembly helps)."""
  if table == "odd_even":
    return [{"a": "D0+D1", "b": "D0", "classes": ODD, "expected": 1},
            {"a": "D0+D1", "b": "D1", "classes": EVEN, "expected": 1}]
  if table == "overlap":
    return [{"a": "D0+D1 partial", "b": "D0", "classes": ["1", "2", "3", "4", "5"], "expected": 1},
            {"a": "D0+D1 partial", "b": "D1", "classes": ["3", "4", "5", "6", "7"], "expected": 1},
            {"a": "+ semi-supervised", "b": "D0+D1 partial", "classes": list("1234567"), "expected": 1},
            {"a": "fully labelled", "b": "D0+D1 partial", "classes": list("1234567"), "expected": 1}]
  if table == "semi_ablation":
    # Each ablated setting against the partial one; the quarter-weight consistency term also
    # against the full-weight one (does the damage scale with the weight?). Settings a stored
    # table did not run are left out.
    out = [{"a": name, "b": "D0+D1 partial", "classes": list("1234567"), "expected": 1}
           for name in ("pseudo-label term only", "consistency term only",
                        "consistency term at 1/4 weight") if name in settings]
    if {"consistency term at 1/4 weight", "consistency term only"} <= set(settings):
      out.append({"a": "consistency term at 1/4 weight", "b": "consistency term only",
                  "classes": list("1234567"), "expected": 1})
    return out
  if table == "zero":
    return [{"a": "MNIST", "b": "MNIST-zero", "classes": ["0"], "expected": 1}]
  if table == "example2":
    base = next(s for s in settings if s.startswith("only "))
    interest = base.split()[-1]
    return [{"a": s, "b": base, "classes": [interest], "expected": 1} for s in settings
            if s.startswith("+")]
  raise ValueError(f"no comparisons defined for table {table!r}")


def by_seed(runs: Sequence[Mapping], setting: str, cls: str) -> dict[int, float]:
  return {int(r["seed"]): float(r["test_auc"][cls]) for r in runs
          if r["setting"] == setting and cls in r["test_auc"]}


def compare(runs: Sequence[Mapping], a: str, b: str, classes: Sequence[str],
            expected: int = 1) -> list[dict]:
  """Rows (one per class, then 'mean' over the classes), differences a - b in AUC points."""
  rows, per_class = [], []
  for cls in classes:
    sa, sb = by_seed(runs, a, cls), by_seed(runs, b, cls)
    seeds = sorted(set(sa) & set(sb))
    if not seeds:
      raise ValueError(f"settings {a!r} and {b!r} share no seed with class {cls!r}")
    da = np.array([100 * sa[k] for k in seeds])
    db = np.array([100 * sb[k] for k in seeds])
    per_class.append((seeds, da - db))
    rows.append(dict(class_=cls, seeds=seeds, **_stats(da, db, expected)))
  holm = paired_stats.holm([r["t_p"] for r in rows], LEVEL)
  for r, h in zip(rows, holm):
    r["holm"] = h
  if len(classes) > 1:
    # Each seed's mean difference over the classes: one paired test for the comparison as a whole.
    common = sorted(set.intersection(*(set(s) for s, _ in per_class)))
    mean_d = np.array([np.mean([d[s.index(k)] for s, d in per_class]) for k in common])
    rows.append(dict(class_="mean", seeds=common, holm=None,
                     **_stats(mean_d, np.zeros_like(mean_d), expected)))
  return rows


def _stats(a, b, expected):
  s = paired_stats.paired(a, b)
  s["decision"] = paired_stats.decide(s, level=LEVEL, expected_sign=expected)
  return s


def table_comparisons(table: str, runs: Sequence[Mapping]) -> list[dict]:
  settings = list(dict.fromkeys(r["setting"] for r in runs))
  out = []
  for c in comparisons(table, settings):
    out.append(dict(c, rows=compare(runs, c["a"], c["b"], c["classes"], c["expected"])))
  return out


def fmt_p(p: float) -> str:
  return "nan" if not np.isfinite(p) else (f"{p:.1e}" if p < 1e-3 else f"{p:.3f}")


def markdown(comps: Sequence[Mapping]) -> str:
  """One table: comparison, class, n, mean difference, 95% CI, p (t), p (Wilcoxon), wins."""
  lines = [("| comparison | class | seeds | mean diff (points) | 95% CI | p (paired t) | "
           "p (Wilcoxon) | a > b | verdict |"), "|---|---|---|---|---|---|---|---|---|"]
  for c in comps:
    for r in c["rows"]:
      lines.append(
          f"| {c['a']} vs {c['b']} | {r['class_']} | {r['n']} | {r['mean']:+.2f} | "
          f"[{r['ci_low']:+.2f}, {r['ci_high']:+.2f}] | {fmt_p(r['t_p'])} | "
          f"{fmt_p(r['wilcoxon_p'])} | {r['wins']}/{r['n']} | {r['decision']} |")
  return "\n".join(lines)


def _class_rows(c: Mapping) -> list[dict]:
  return [r for r in c["rows"] if r["class_"] != "mean"]


def _split(rows, expected: int):
  """(classes higher at LEVEL, classes lower at LEVEL) of a's rows against b."""
  higher = "reproduces" if expected > 0 else "opposite"
  lower = "opposite" if expected > 0 else "reproduces"
  return ([r["class_"] for r in rows if r["decision"] == higher],
          [r["class_"] for r in rows if r["decision"] == lower])


def _listed(xs) -> str:
  return f" ({', '.join(xs)})" if xs else ""


def verdict(c: Mapping) -> str:
  """'a vs b (n seeds): higher at p < 0.05 on k of m classes (...), lower on ...' for one
  comparison, with Holm's count and the paired test of the mean over its classes."""
  rows = _class_rows(c)
  up, down = _split(rows, c["expected"])
  whole = c["rows"][-1]
  holm = sum(bool(r["holm"]) for r in rows)
  return (f"{c['a']} vs {c['b']} ({whole['n']} seeds): higher at p < {LEVEL} on {len(up)} of "
          f"{len(rows)} classes{_listed(up)}, lower on {len(down)}{_listed(down)}, no "
          f"difference on {len(rows) - len(up) - len(down)}; {holm} of the {len(rows)} stay "
          f"significant under Holm's correction; "
          f"{'mean over the classes' if len(rows) > 1 else 'difference'} "
          f"{whole['mean']:+.2f} points [{whole['ci_low']:+.2f}, {whole['ci_high']:+.2f}], "
          f"p = {fmt_p(whole['t_p'])}.")


def family_verdict(comps: Sequence[Mapping]) -> str:
  """One line for a family of one-class comparisons (Example II: each added class vs none),
  Holm's correction over the family."""
  rows = [dict(r, class_=c["a"]) for c in comps for r in _class_rows(c)]
  up, down = _split(rows, 1)
  holm = paired_stats.holm([r["t_p"] for r in rows], LEVEL)
  cls = _class_rows(comps[0])[0]["class_"]
  return (f"AUC({cls}) with one more class labelled vs {comps[0]['b']} ({rows[0]['n']} seeds): "
          f"higher at p < {LEVEL} for {len(up)} of {len(rows)} added classes{_listed(up)}, "
          f"lower for {len(down)}{_listed(down)}, no difference for "
          f"{len(rows) - len(up) - len(down)}; {sum(holm)} of the {len(rows)} stay significant "
          "under Holm's correction over the family.")


# ------------------------------------------------------------------------------------------------
# Validation curves.

def curve_summary(runs: Sequence[Mapping]) -> dict[str, dict]:
  """Per setting: mean over seeds of the validation AUC per epoch, and its rise over the last
  third of the epochs (points): how flat the curves are at the end."""
  out: dict = {}
  for setting in dict.fromkeys(r["setting"] for r in runs):
    curves = np.array([[h["val_mean_auc"] for h in r["history"]] for r in runs
                       if r["setting"] == setting], np.float64)
    e = curves.shape[1]
    two_thirds = max(0, int(np.ceil(2 * e / 3)) - 1)
    rise = 100 * (curves[:, -1] - curves[:, two_thirds])
    out[setting] = {"epochs": e, "mean_val_auc": curves.mean(0).tolist(),
                    "last_third_epoch": two_thirds + 1,
                    "rise_last_third_mean": float(rise.mean()),
                    "rise_last_third_max": float(rise.max()),
                    "best_epoch_mean": float(np.mean([r["best_epoch"] for r in runs
                                                      if r["setting"] == setting]))}
  return out


def curves_markdown(summary: Mapping[str, Mapping]) -> str:
  lines = [("| setting | epochs | val AUC at the end (%) | rise over the last third (points, "
           "mean / max over seeds) | mean best epoch |"), "|---|---|---|---|---|"]
  for s, v in summary.items():
    lines.append(f"| {s} | {v['epochs']} | {100 * v['mean_val_auc'][-1]:.2f} | "
                 f"{v['rise_last_third_mean']:+.2f} / {v['rise_last_third_max']:+.2f} | "
                 f"{v['best_epoch_mean']:.1f} |")
  return "\n".join(lines)


def plot_curves(path: str, runs: Sequence[Mapping], title: str) -> None:
  """Validation mean AUC per epoch: every seed thin, the mean thick, one colour per setting."""
  from matplotlib.figure import Figure  # pylint: disable=import-outside-toplevel
  settings = list(dict.fromkeys(r["setting"] for r in runs))
  fig = Figure(figsize=(7.0, 4.0))
  ax = fig.subplots()
  cmap = [f"C{i % 10}" for i in range(len(settings))]
  for colour, s in zip(cmap, settings):
    curves = np.array([[h["val_mean_auc"] for h in r["history"]] for r in runs
                       if r["setting"] == s], np.float64)
    x = np.arange(1, curves.shape[1] + 1)
    for c in curves:
      ax.plot(x, 100 * c, color=colour, lw=0.5, alpha=0.35)
    ax.plot(x, 100 * curves.mean(0), color=colour, lw=2, label=s)
  ax.set_xlabel("epoch")
  ax.set_ylabel("validation mean AUC (%)")
  ax.set_title(title)
  lo = min(100 * np.mean([r["history"][len(r["history"]) // 3]["val_mean_auc"] for r in runs
                          if r["setting"] == s]) for s in settings)
  ax.set_ylim(max(50.0, lo - 5), 100.2)
  ax.legend(fontsize=7, ncol=2)
  fig.tight_layout()
  with atomic.temporary_path(path) as tmp:
    fig.savefig(tmp, dpi=110, format="png")
