"""Paired-by-seed statistics of the segmentation studies, against hand-computed values."""

import math

import numpy as np
import pytest

from dassemble_jax.segmentation import seed_study


def test_paired_difference_matches_the_hand_computed_t_test_and_interval():
  a = [0.50, 0.40, 0.70, 0.55]
  b = [0.60, 0.45, 0.72, 0.70]
  r = seed_study.paired_difference(b, a)
  # By hand: d = (0.10, 0.05, 0.02, 0.15); mean 0.08; sample std; t = mean / (s / sqrt(n)).
  d = np.array([0.10, 0.05, 0.02, 0.15])
  s = math.sqrt(sum((x - 0.08) ** 2 for x in d) / 3)
  t = 0.08 / (s / 2.0)
  assert r["diff_mean"] == pytest.approx(0.08)
  assert r["diff_std"] == pytest.approx(s)
  # t(3) quantile 0.975 = 3.182446305 (tables); the interval is mean ± q s / sqrt(n).
  q = 3.182446305284263
  assert r["ci95"] == pytest.approx([0.08 - q * s / 2, 0.08 + q * s / 2])
  # Two-sided p = 2 * P(T_3 > t); T_3's survival function in closed form (odd df = 3):
  # P(T > t) = 1/2 - (1/pi) * (atan(u) + u / (1 + u^2)), u = t / sqrt(3).
  u = t / math.sqrt(3)
  p = 2 * (0.5 - (math.atan(u) + u / (1 + u * u)) / math.pi)
  assert r["t_p"] == pytest.approx(p, rel=1e-9)
  # Wilcoxon exact, n = 4, every difference positive: 2 / 2^4.
  assert r["wilcoxon_p"] == pytest.approx(0.125)
  assert (r["b_higher"], r["b_lower"]) == (4, 0)
  assert r["verdict"] == ("better" if p < 0.05 else "undecided")


def test_verdict_follows_the_test_not_the_sign_of_the_mean():
  # Mean difference positive but one seed reverses it: not decided.
  r = seed_study.paired_difference([0.9, 0.2, 0.8], [0.5, 0.5, 0.5])
  assert r["diff_mean"] > 0 and r["verdict"] == "undecided"
  # Consistent and large: decided either way.
  assert seed_study.paired_difference([0.80, 0.81, 0.82], [0.50, 0.50, 0.51])["verdict"] == \
      "better"
  assert seed_study.paired_difference([0.50, 0.50, 0.51], [0.80, 0.81, 0.82])["verdict"] == \
      "worse"
  # With 3 seeds the exact Wilcoxon test cannot go below 0.25 two-sided.
  assert seed_study.paired_difference([0.80, 0.81, 0.82], [0.50, 0.50, 0.51])["wilcoxon_p"] == \
      pytest.approx(0.25)
  # Identical values on every seed: no test, 'equal'.
  same = seed_study.paired_difference([0.0, 0.0, 0.0], [0.0, 0.0, 0.0])
  assert same["verdict"] == "equal" and same["diff_mean"] == 0.0
  with pytest.raises(ValueError, match="one length"):
    seed_study.paired_difference([1.0, 2.0], [1.0])


def _comparison(values):
  """A universal job 'comparison' entry from {model: {class: value or None}}."""
  classes = sorted({c for m in values.values() for c in m})
  return {"dsc": {m: {c: v.get(c) for c in classes} for m, v in values.items()},
          "classes": classes}


def test_universal_table_pairs_each_source_with_the_assembly_on_its_classes():
  per_seed = {
      0: _comparison({"assembly": {"liver": 0.9, "spleen": 0.3, "aorta": 0.7},
                      "src_a": {"liver": 0.8, "spleen": None, "aorta": None},
                      "src_b": {"liver": 0.85, "spleen": 0.6, "aorta": 0.1}}),
      1: _comparison({"assembly": {"liver": 0.92, "spleen": 0.5, "aorta": 0.6},
                      "src_a": {"liver": 0.82, "spleen": None, "aorta": None},
                      "src_b": {"liver": 0.90, "spleen": 0.7, "aorta": 0.0}}),
      2: _comparison({"assembly": {"liver": 0.91, "spleen": 0.4, "aorta": 0.8},
                      "src_a": {"liver": 0.75, "spleen": None, "aorta": None},
                      "src_b": {"liver": 0.88, "spleen": 0.9, "aorta": 0.2}}),
  }
  t = seed_study.universal_table(per_seed)
  assert t["seeds"] == [0, 1, 2] and t["models"] == ["assembly", "src_a", "src_b"]
  assert list(t["comparisons"]["src_a"]) == ["liver"]
  liver_a = t["comparisons"]["src_a"]["liver"]
  assert liver_a["diff"] == pytest.approx([0.10, 0.10, 0.16])
  assert liver_a["verdict"] == "better"
  # On src_b's three classes together: per seed the mean over them, then paired.
  o = t["overall"]["src_b"]
  assert o["classes"] == ["aorta", "liver", "spleen"]
  assert o["diff"] == pytest.approx([(0.9 + 0.3 + 0.7 - 0.85 - 0.6 - 0.1) / 3,
                                     (0.92 + 0.5 + 0.6 - 0.90 - 0.7 - 0.0) / 3,
                                     (0.91 + 0.4 + 0.8 - 0.88 - 0.9 - 0.2) / 3])
  assert "0.910 ± 0.010" in t["text"]  # assembly liver: mean 0.91, sample std 0.01
  # The line of src_a's classes names the assembly's mean first (0.91 vs src_a's 0.79).
  assert "on src_a's 1 classes together: assembly 0.910 vs 0.790, +0.120" in t["text"]
  # String seed keys (as JSON gives them back) give the same table.
  again = seed_study.universal_table({str(k): v for k, v in per_seed.items()})
  assert again["text"] == t["text"]


def test_partial_full_table_compares_full_minus_partial():
  per_seed = {s: {"partial": {"liver": 0.5 + 0.01 * s, "spleen": 0.2},
                  "full": {"liver": 0.6 + 0.01 * s, "spleen": 0.1 + 0.05 * s}}
              for s in range(5)}
  t = seed_study.partial_full_table(per_seed, ("liver", "spleen"))
  assert t["per_class"]["liver"]["diff"] == pytest.approx([0.1] * 5)
  assert t["per_class"]["liver"]["verdict"] == "better"  # a constant shift on every seed
  assert t["per_class"]["spleen"]["diff_mean"] == pytest.approx(0.0)
  assert t["per_class"]["spleen"]["verdict"] == "undecided"
  assert t["mean"]["diff"] == pytest.approx([(0.1 + (0.1 + 0.05 * s - 0.2)) / 2
                                             for s in range(5)])
  assert "mean of 2" in t["text"]
