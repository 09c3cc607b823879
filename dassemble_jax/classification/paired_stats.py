"""Paired statistics of two settings measured on the same seeds (same images, same init).

For differences d_k = a_k - b_k over n seeds:
  mean, sd      mean and sample standard deviation (ddof=1) of d
  ci_low/high   the (1 - alpha) t interval of the mean: mean -+ t_{1-alpha/2, n-1} sd / sqrt(n)
  t_p           the two-sided paired t-test (H0: mean 0): t = mean / (sd / sqrt(n)), n - 1 dof
  wilcoxon_p    the two-sided Wilcoxon signed-rank test: zero differences dropped (Wilcoxon's
                own rule), average ranks for tied |d|, the exact null distribution by enumerating
                every sign pattern (n <= EXACT_MAX after dropping zeros), else the normal
                approximation with the tie-corrected variance and a 0.5 continuity correction

Written from the formulas (only the t distribution's quantile and tail come from SciPy);
tests/classification/test_paired_stats.py checks them against scipy.stats.ttest_rel and
scipy.stats.wilcoxon. With n = 5 the smallest two-sided Wilcoxon p is 2 / 2^5 = 0.0625, so at
5 seeds only the t-test can reach p < 0.05: `decide` uses the t-test.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import scipy.stats

EXACT_MAX = 20  # 2^20 sign patterns: well under a second


def _ranks(x: np.ndarray) -> np.ndarray:
  """Ranks 1..n of x, ties given their average rank."""
  order = np.argsort(x, kind="stable")
  ranks = np.empty(len(x), np.float64)
  xs = x[order]
  i = 0
  while i < len(x):
    j = i
    while j + 1 < len(x) and xs[j + 1] == xs[i]:
      j += 1
    ranks[order[i:j + 1]] = (i + j) / 2 + 1
    i = j + 1
  return ranks


def wilcoxon_p(d: Sequence[float]) -> float:
  """Two-sided Wilcoxon signed-rank p-value of the differences d (see the module docstring)."""
  d = np.asarray(d, np.float64)
  d = d[d != 0]
  n = len(d)
  if n == 0:
    return 1.0
  r = _ranks(np.abs(d))
  w_plus = float(r[d > 0].sum())
  total = float(r.sum())
  # The statistic's distribution is symmetric about total / 2: count patterns as far out.
  dev = abs(w_plus - total / 2)
  if n <= EXACT_MAX:
    # Every sign pattern is equally likely under H0; sums of ranks over all subsets.
    sums = np.zeros(1)
    for rank in r:
      sums = np.concatenate([sums, sums + rank])
    return float(min(1.0, np.mean(np.abs(sums - total / 2) >= dev - 1e-9)))
  # Normal approximation: var = n(n+1)(2n+1)/24 minus the tie correction sum(t^3 - t)/48.
  _, counts = np.unique(r, return_counts=True)
  var = n * (n + 1) * (2 * n + 1) / 24 - float(np.sum(counts ** 3 - counts)) / 48
  if var <= 0:
    return 1.0
  z = max(dev - 0.5, 0.0) / math.sqrt(var)
  return float(min(1.0, 2 * scipy.stats.norm.sf(z)))


def paired(a: Sequence[float], b: Sequence[float], *, alpha: float = 0.05) -> dict:
  """Statistics of a - b paired by position (seed): n, mean, sd, ci_low, ci_high, t, t_p,
  wilcoxon_p, wins (d > 0), losses (d < 0)."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  if a.shape != b.shape or a.ndim != 1:
    raise ValueError(f"paired samples must be two 1-D arrays of one length, got {a.shape} and "
                     f"{b.shape}")
  if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
    raise ValueError("paired samples must be finite")
  d = a - b
  n = len(d)
  mean = float(d.mean()) if n else float("nan")
  out = {"n": n, "mean": mean, "sd": float("nan"), "ci_low": float("nan"),
         "ci_high": float("nan"), "t": float("nan"), "t_p": float("nan"),
         "wilcoxon_p": wilcoxon_p(d) if n else float("nan"),
         "wins": int(np.sum(d > 0)), "losses": int(np.sum(d < 0))}
  if n < 2:
    return out
  sd = float(d.std(ddof=1))
  se = sd / math.sqrt(n)
  half = float(scipy.stats.t.ppf(1 - alpha / 2, n - 1)) * se
  out.update(sd=sd, ci_low=mean - half, ci_high=mean + half)
  if se == 0:
    # Every seed gives the same difference: certain when it is not zero.
    out.update(t=math.copysign(math.inf, mean) if mean else 0.0, t_p=0.0 if mean else 1.0)
  else:
    t = mean / se
    out.update(t=t, t_p=float(min(1.0, 2 * scipy.stats.t.sf(abs(t), n - 1))))
  return out


def decide(stats: dict, *, level: float = 0.05, expected_sign: int = 1) -> str:
  """'reproduces' (paired t p < level, mean of the expected sign), 'opposite' (p < level, the
  other sign) or 'no difference' (p >= level)."""
  if not stats["t_p"] < level:
    return "no difference"
  return "reproduces" if math.copysign(1, stats["mean"]) == expected_sign else "opposite"


def holm(pvalues: Sequence[float], level: float = 0.05) -> list[bool]:
  """Holm's step-down rejections of a family of tests at family-wise level `level`."""
  p = np.asarray(pvalues, np.float64)
  reject = [False] * len(p)
  for i, k in enumerate(np.argsort(p, kind="stable")):
    if not p[k] < level / (len(p) - i):
      break
    reject[int(k)] = True
  return reject
