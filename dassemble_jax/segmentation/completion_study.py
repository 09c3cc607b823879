"""The phantom completion study's tables: pseudo labels vs the hidden truth, confidence as a
ranking of the bad ones, and round 2 vs round 1 paired by seed (jobs/complete.py runs it).

Input: one dict per seed, {'seed', 'rows', 'heldout'}: 'rows' are the review list's case x class
rows with 'true_dsc' (the pseudo label's DSC against the phantom's full truth), 'heldout' is
{'round1'|'round2': {'dsc': {class: held-out DSC}}}. Statistics: Spearman's rho of confidence
with true DSC per seed (SciPy); per class the round-2 minus round-1 difference, its mean and
sample std over seeds and a two-sided paired t-test; a Wilcoxon signed-rank test over all
(class, seed) pairs. With three seeds a paired t-test has two degrees of freedom: read the
direction and the spread, not the p value alone.
"""

from __future__ import annotations

import numpy as np
from scipy import stats

from dassemble_jax.classification import paired_stats
from dassemble_jax.segmentation import completion, trained_run

CLASS_NAMES = trained_run.CLASS_NAMES


def _fmt(values) -> str:
  v = np.asarray([x for x in values if x is not None and np.isfinite(x)], float)
  if not v.size:
    return "-"
  return f"{v.mean():.3f} ± {v.std(ddof=1):.3f}" if v.size > 1 else f"{v.mean():.3f}"


def study_tables(seeds: list[dict], threshold: float) -> dict:
  """Across seeds: pseudo-label DSC per class and source vs the hidden truth, the rank
  correlation of confidence with true DSC, and round 2 vs round 1 on held-out full truth."""
  lines, out = [], {"seeds": [s["seed"] for s in seeds]}
  # 1. Pseudo-label quality per (source, class): mean over cases, then mean ± std over seeds.
  sources = sorted({r["source"] for s in seeds for r in s["rows"]})
  classes = [n for n in CLASS_NAMES if any(r["class"] == n for s in seeds for r in s["rows"])]
  pseudo = {}
  for src in sources:
    for name in classes:
      per_seed, acc_seed, n_acc = [], [], 0
      for s in seeds:
        rs = [r for r in s["rows"] if r["source"] == src and r["class"] == name]
        if rs:
          per_seed.append(float(np.mean([r["true_dsc"] for r in rs])))
          acc = [r["true_dsc"] for r in rs if r["status"] == completion.PSEUDO]
          n_acc += len(acc)
          acc_seed.append(float(np.mean(acc)) if acc else None)
      if per_seed:
        pseudo.setdefault(src, {})[name] = {"all": per_seed, "accepted": acc_seed,
                                            "accepted_cases": n_acc,
                                            "cases": sum(1 for s in seeds for r in s["rows"]
                                                         if r["source"] == src
                                                         and r["class"] == name)}
  out["pseudo_dsc"] = pseudo
  lines.append(f"Pseudo-label DSC vs the hidden truth (mean over cases; mean ± std over "
               f"{len(seeds)} seed(s)); 'accepted': cases with confidence >= {threshold}")
  lines.append(f"{'class':22s}" + "".join(f"{s.removeprefix('phantom_'):>22s}"
                                          for s in sources))
  for name in classes:
    cells = []
    for src in sources:
      e = pseudo.get(src, {}).get(name)
      cells.append("-" if e is None else f"{_fmt(e['all'])} ({e['accepted_cases']}/{e['cases']})")
    lines.append(f"{name:22s}" + "".join(f"{c:>22s}" for c in cells))
  # 2. Does confidence rank the bad ones? Spearman per seed over every (case, class) row.
  rhos = []
  for s in seeds:
    conf = [r["confidence"] for r in s["rows"]]
    dsc = [r["true_dsc"] for r in s["rows"]]
    rho = float(stats.spearmanr(conf, dsc).statistic) if len(set(conf)) > 1 else float("nan")
    acc = [r["true_dsc"] for r in s["rows"] if r["status"] == completion.PSEUDO]
    rej = [r["true_dsc"] for r in s["rows"] if r["status"] != completion.PSEUDO]
    rhos.append({"seed": s["seed"], "spearman": rho, "n": len(conf),
                 "accepted": len(acc), "accepted_mean_true_dsc":
                     float(np.mean(acc)) if acc else None,
                 "unknown_mean_true_dsc": float(np.mean(rej)) if rej else None})
  out["confidence_rank"] = rhos
  lines.append("")
  lines.append("Confidence vs true DSC over every pseudo-labelled (case, class): Spearman rho per "
               "seed: " + ", ".join(f"{r['seed']}: {r['spearman']:.3f} (n {r['n']})" for r in rhos)
               + f"; mean {_fmt([r['spearman'] for r in rhos])}")
  lines.append("Mean true DSC of accepted vs unknown (below threshold) rows: " + "; ".join(
      f"seed {r['seed']}: {r['accepted']} accepted {_f3(r['accepted_mean_true_dsc'])}, "
      f"{r['n'] - r['accepted']} unknown {_f3(r['unknown_mean_true_dsc'])}" for r in rhos))
  # 3. Round 2 vs round 1 on held-out full truth, paired by seed.
  both = [n for n in CLASS_NAMES
          if all(_finite(s["heldout"][m]["dsc"].get(n)) for s in seeds
                 for m in ("round1", "round2"))]
  rounds = {}
  lines.append("")
  lines.append(f"Held-out DSC (full truth, every case) round 1 -> round 2, paired by seed "
               f"({len(seeds)} seed(s); diff = round 2 - round 1, mean ± std; paired t-test p)")
  lines.append(f"{'class':22s}{'round 1':>16s}{'round 2':>16s}{'diff':>18s}{'p':>8s}"
               f"{'better':>8s}")
  for name in both:
    a = [float(s["heldout"]["round1"]["dsc"][name]) for s in seeds]
    b = [float(s["heldout"]["round2"]["dsc"][name]) for s in seeds]
    diff = np.subtract(b, a)
    p = _paired_p(a, b)
    rounds[name] = {"round1": a, "round2": b, "diff_mean": float(diff.mean()),
                    "diff_std": float(diff.std(ddof=1)) if len(diff) > 1 else None, "p": p,
                    "seeds_better": int(np.sum(diff > 0)), "seeds_worse": int(np.sum(diff < 0))}
    lines.append(f"{name:22s}{_fmt(a):>16s}{_fmt(b):>16s}{_fmt(diff):>18s}{_f3(p):>8s}"
                 f"{f'{int(np.sum(diff > 0))}/{len(diff)}':>8s}")
  if both:
    ma = [float(np.mean([s["heldout"]["round1"]["dsc"][n] for n in both])) for s in seeds]
    mb = [float(np.mean([s["heldout"]["round2"]["dsc"][n] for n in both])) for s in seeds]
    diff = np.subtract(mb, ma)
    p = _paired_p(ma, mb)
    rounds["mean"] = {"round1": ma, "round2": mb, "diff_mean": float(diff.mean()),
                      "diff_std": float(diff.std(ddof=1)) if len(diff) > 1 else None, "p": p}
    lines.append(f"{'mean of ' + str(len(both)) + ' classes':22s}{_fmt(ma):>16s}{_fmt(mb):>16s}"
                 f"{_fmt(diff):>18s}{_f3(p):>8s}{f'{int(np.sum(diff > 0))}/{len(diff)}':>8s}")
    pairs_a = [float(s["heldout"]["round1"]["dsc"][n]) for s in seeds for n in both]
    pairs_b = [float(s["heldout"]["round2"]["dsc"][n]) for s in seeds for n in both]
    if len(pairs_a) > 1 and np.any(np.subtract(pairs_b, pairs_a) != 0):
      w = stats.wilcoxon(pairs_b, pairs_a)
      rounds["wilcoxon_class_seed_pairs"] = {"n": len(pairs_a), "p": float(w.pvalue)}
      lines.append(f"Wilcoxon signed-rank over all {len(pairs_a)} (class, seed) pairs: "
                   f"p {float(w.pvalue):.3g}")
  out["rounds"] = rounds
  out["text"] = "\n".join(lines) + "\n"
  return out


def _finite(v) -> bool:
  return v is not None and np.isfinite(float(v))


def _f3(v) -> str:
  return "-" if v is None or not np.isfinite(v) else f"{v:.3f}"


def _paired_p(a, b) -> float | None:
  """Two-sided paired t-test p (None with fewer than 2 pairs or identical pairs)."""
  d = np.subtract(b, a)
  if len(d) < 2 or np.allclose(d, d[0]):
    return None
  return paired_stats.paired(b, a)["t_p"]  # the project's one paired test
