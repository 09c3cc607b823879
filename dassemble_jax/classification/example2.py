"""Example II: add the labels of one other class at a time; does the gain follow similarity?

The class of interest c is labelled on every image of one MNIST subset (c vs not-c, as
MNIST-zero). Setting "+j" labels class j too on the same images (two outputs, c and j). The gain
of setting +j is AUC_c(+j) - AUC_c(c only), per seed; it is correlated (Pearson r, p via SciPy)
with the similarity of classes c and j: the cosine similarity of their class-mean training
images after subtracting the mean image (how much the two digits overlap in pixel space).
"""

from __future__ import annotations

import numpy as np
import scipy.stats

from dassemble_jax.classification import experiments, multirun

DIGITS = tuple(range(10))
NUM_TRAIN, NUM_VAL = 500, 250  # per setting; 10 settings x 5 seeds must fit a 2-core CPU


def settings(interest: str, *, tiny: bool = False):
  """[(name, config)]: 'only c', then '+j' for every other digit j."""
  out = []
  for j in [None] + [str(d) for d in DIGITS if str(d) != interest]:
    c = experiments.mnist_zero("zero")
    classes = (interest,) if j is None else (interest, j)
    c.data.sources = (experiments.source("S", classes, NUM_TRAIN, NUM_VAL, members=DIGITS),)
    c.data.label_space = classes
    out.append((f"only {interest}" if j is None else f"+{j}",
                experiments.make_tiny(c) if tiny else c))
  return out


def similarity(config, interest: str) -> dict[str, float]:
  """Cosine similarity of centred class-mean training images, class of interest vs each other."""
  splits = multirun.load_splits(config)
  x = splits["train"]["image"].reshape(len(splits["train"]["label"]), -1).astype(np.float64)
  y = splits["train"]["label"]
  centred = x - x.mean(0)
  means = {d: centred[y == d].mean(0) for d in np.unique(y)}
  ci = means[int(interest)]
  return {str(d): float(m @ ci / (np.linalg.norm(m) * np.linalg.norm(ci)))
          for d, m in means.items() if d != int(interest)}


def analyse(results, cols, interest: str) -> dict:
  """Per-added-class gain (mean over seeds) and its Pearson correlation with the similarity."""
  base = {r["seed"]: r["test_auc"][interest] for r in results
          if r["setting"] == f"only {interest}"}
  sim_per_seed = {}
  gains: dict = {}
  for r in results:
    if r["setting"].startswith("+"):
      gains.setdefault(r["setting"][1:], []).append(r["test_auc"][interest] - base[r["seed"]])
  for name, c in cols:
    if name == f"only {interest}":
      for seed in sorted(base):
        cc = c.copy_and_resolve_references()
        cc.data.seed = seed
        sim_per_seed[seed] = similarity(cc, interest)
  classes = sorted(gains)
  sim = [float(np.mean([s[j] for s in sim_per_seed.values()])) for j in classes]
  gain = [float(np.mean(gains[j])) for j in classes]
  out = {"interest": interest, "classes": classes, "similarity": sim,
         "gain_mean": gain, "gain_std": [float(np.std(gains[j], ddof=1)) if len(gains[j]) > 1
                                         else 0.0 for j in classes],
         "measure": "cosine similarity of centred class-mean training images"}
  if len(classes) >= 3 and np.std(gain) > 0:
    r, p = scipy.stats.pearsonr(sim, gain)
    out["correlation"] = {"pearson_r": float(r), "p_value": float(p), "n": len(classes)}
  else:
    out["correlation"] = {"pearson_r": float("nan"), "p_value": float("nan"),
                          "n": len(classes)}
  return out
