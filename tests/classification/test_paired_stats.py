"""paired_stats against hand-computed values and scipy.stats on hand-made numbers."""

import math

import numpy as np
import pytest
import scipy.stats

from dassemble_jax.classification import paired_stats

# Hand-made paired samples (seed k at position k), no tied |differences|.
A = [0.91, 0.88, 0.95, 0.90, 0.87, 0.93, 0.89, 0.96, 0.92, 0.85]
B = [0.89, 0.89, 0.91, 0.86, 0.88, 0.88, 0.84, 0.95, 0.86, 0.855]


def test_hand_computed_five_seeds():
  # d = 1..5: mean 3, sd sqrt(2.5), t = 3 / (sqrt(2.5) / sqrt(5)) = 3 sqrt(2) on 4 dof.
  s = paired_stats.paired([2, 4, 6, 8, 10], [1, 2, 3, 4, 5])
  assert s["n"] == 5 and s["mean"] == 3.0 and s["wins"] == 5 and s["losses"] == 0
  assert s["sd"] == pytest.approx(math.sqrt(2.5))
  assert s["t"] == pytest.approx(3 * math.sqrt(2))
  half = 2.7764451051977987 * math.sqrt(2.5) / math.sqrt(5)  # t_{0.975, 4}
  assert s["ci_low"] == pytest.approx(3 - half) and s["ci_high"] == pytest.approx(3 + half)
  # All five positive: two of the 2^5 sign patterns are as extreme -> 2 / 32.
  assert s["wilcoxon_p"] == pytest.approx(0.0625)


@pytest.mark.parametrize("n", [5, 7, 10])
def test_against_scipy(n):
  a, b = np.array(A[:n]), np.array(B[:n])
  s = paired_stats.paired(a, b)
  t = scipy.stats.ttest_rel(a, b)
  assert s["t"] == pytest.approx(t.statistic, rel=1e-10)
  assert s["t_p"] == pytest.approx(t.pvalue, rel=1e-10)
  ci = t.confidence_interval(0.95)
  assert (s["ci_low"], s["ci_high"]) == pytest.approx((ci.low, ci.high), rel=1e-10)
  w = scipy.stats.wilcoxon(a, b, method="exact")
  assert s["wilcoxon_p"] == pytest.approx(w.pvalue, rel=1e-10)


def test_wilcoxon_normal_approximation_against_scipy():
  rng = np.random.default_rng(3)
  d = np.round(rng.normal(0.3, 1.0, 30), 6)  # n > EXACT_MAX: the normal approximation
  assert len(np.unique(np.abs(d))) == 30
  w = scipy.stats.wilcoxon(d, method="approx", correction=True)
  assert paired_stats.wilcoxon_p(d) == pytest.approx(w.pvalue, rel=1e-10)


def test_wilcoxon_drops_zeros_and_ties_use_average_ranks():
  # Zeros dropped -> d = (1, 1, -2, 3): |d| ranks 1.5, 1.5, 3, 4 (the two 1s share 1.5);
  # W+ = 7 of a total 10, so p = the share of the 16 sign patterns with |W+ - 5| >= 2.
  sums = []
  ranks = [1.5, 1.5, 3, 4]
  for mask in range(16):
    sums.append(sum(r for i, r in enumerate(ranks) if mask >> i & 1))
  expected = np.mean([abs(x - 5) >= 2 for x in sums])
  assert paired_stats.wilcoxon_p([1, 0, 1, -2, 0, 3]) == pytest.approx(expected)
  assert paired_stats.wilcoxon_p([0, 0, 0]) == 1.0


def test_constant_differences_and_validation():
  s = paired_stats.paired([2, 2, 2], [1, 1, 1])
  assert s["t_p"] == 0.0 and s["ci_low"] == s["ci_high"] == 1.0
  assert paired_stats.paired([1, 1], [1, 1])["t_p"] == 1.0
  with pytest.raises(ValueError, match="one length"):
    paired_stats.paired([1, 2], [1])
  with pytest.raises(ValueError, match="finite"):
    paired_stats.paired([1, float("nan")], [1, 2])


def test_decide_and_holm():
  assert paired_stats.decide({"t_p": 0.01, "mean": 0.2}) == "reproduces"
  assert paired_stats.decide({"t_p": 0.01, "mean": -0.2}) == "opposite"
  assert paired_stats.decide({"t_p": 0.01, "mean": -0.2}, expected_sign=-1) == "reproduces"
  assert paired_stats.decide({"t_p": 0.05, "mean": 0.2}) == "no difference"
  assert paired_stats.decide({"t_p": float("nan"), "mean": 0.2}) == "no difference"
  # Holm at 0.05 over 4: sorted 0.001 < 0.0125, 0.01 < 0.0167, 0.03 >= 0.025 -> stop.
  assert paired_stats.holm([0.03, 0.001, 0.2, 0.01]) == [False, True, False, True]
