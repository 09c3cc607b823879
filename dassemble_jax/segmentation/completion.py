"""Completing a partially labelled assembly: confidence, merging with human labels, review order.

The pure (NumPy) half of the completion job (`jobs/complete.py`); the models' probabilities come
from `ensemble.py`. For one case and one class its source does not annotate:

* `class_confidence`: how much to trust the pseudo label, from the (ensemble-mean) probability
  map, the final (post-processed) mask and, with several models, their own masks:
    mean_prob            mean probability inside the predicted region; for an empty region of a
                         lesion class, 1 - the highest probability (how clearly it is absent)
    uncertain_fraction   voxels with probability inside the uncertain band (lo, hi), over the
                         voxels above lo (everything that is not confidently background)
    disagreement         1 - the mean pairwise DSC of the models' own masks (0 for one model)
    confidence           mean_prob x (1 - uncertain_fraction) x (1 - disagreement)
  An organ (a non-lesion class) predicted empty gets confidence 0: every organ the model can
  segment is expected in an abdominal CT, so a missing one needs a reader, not a label saying
  "absent". A lesion predicted empty is a legitimate "no tumor" label when the model is sure.
* `merge`: human labels always win. The source's annotated classes keep their human voxels; an
  accepted pseudo class (confidence >= threshold) becomes a label, minus the voxels a human
  label gives to another class (lesions may still lie inside their host organ); a class below
  the threshold stays unknown (its bit cleared, its `annotated` entry 0), never background.
* `review_order`: case x class rows ranked by need of review (lowest confidence first).
The completed label maps' class names for viewers are `ct.label_tables`'.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from dassemble_jax.ct import bitmask, taxonomy

HUMAN, PSEUDO, UNKNOWN = "human", "pseudo", "unknown"
CONFIDENCE_FIELDS = ("confidence", "mean_prob", "uncertain_fraction", "disagreement")

# ------------------------------------------------------------------------------------------------
# Confidence of one class in one case.


def class_confidence(prob: np.ndarray, mask: np.ndarray,
                     member_masks: Sequence[np.ndarray] = (), *, is_lesion: bool = False,
                     band: tuple[float, float] = (0.25, 0.75)) -> dict[str, float]:
  """Confidence of one pseudo-labelled class (see the module docstring).

  Args:
    prob: (X, Y, Z) float, the (ensemble-mean) probability of the class.
    mask: (X, Y, Z) bool, the final pseudo label of the class (thresholded, post-processed).
    member_masks: each model's own thresholded mask (X, Y, Z) bool; fewer than two: no
      disagreement term.
    is_lesion: the class is a lesion (an empty prediction may be right).
    band: (lo, hi): probabilities strictly inside are uncertain.
  """
  prob = np.asarray(prob, np.float64)
  mask = np.asarray(mask, bool)
  lo, hi = band
  if not 0.0 <= lo < hi <= 1.0:
    raise ValueError(f"uncertain band must satisfy 0 <= lo < hi <= 1, got {band}")
  voxels = int(mask.sum())
  above = prob > lo
  uncertain = int(np.sum(above & (prob < hi)))
  uncertain_fraction = uncertain / int(above.sum()) if above.any() else 0.0
  if len(member_masks) >= 2:
    pairs = [_dice(a, b) for a, b in itertools.combinations(member_masks, 2)]
    disagreement = 1.0 - float(np.mean(pairs))
  else:
    disagreement = 0.0
  if voxels:
    mean_prob = float(prob[mask].mean())
  else:
    mean_prob = 1.0 - float(prob.max()) if (is_lesion and prob.size) else 0.0
  confidence = mean_prob * (1.0 - uncertain_fraction) * (1.0 - disagreement)
  return {"confidence": float(confidence), "mean_prob": mean_prob,
          "uncertain_fraction": float(uncertain_fraction), "disagreement": float(disagreement),
          "voxels": voxels}


def _dice(a: np.ndarray, b: np.ndarray) -> float:
  a, b = np.asarray(a, bool), np.asarray(b, bool)
  total = int(a.sum()) + int(b.sum())
  return 1.0 if total == 0 else 2.0 * int(np.sum(a & b)) / total


# ------------------------------------------------------------------------------------------------
# Human labels + pseudo labels.


def _may_overlap(k: int) -> set[int]:
  """Universal ids whose voxels class id k may share: a lesion its host, an organ its lesions."""
  out = set()
  for lesion, host in taxonomy.TUMOR_HOST.items():
    hosts = set(taxonomy.PAIRS[host]) if isinstance(host, str) else {host}
    if k == lesion:
      out |= hosts
    elif k in hosts:
      out.add(lesion)
  return out


def merge(human_bits: np.ndarray, human_annotated: np.ndarray, pseudo_bits: np.ndarray,
          accepted: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Human labels + accepted pseudo labels -> (bits, annotated, pseudo).

  Args:
    human_bits: (X, Y, Z) uint32 bitmask of the source's labels (bits of unannotated classes
      are ignored).
    human_annotated: (32,) bool, the classes the source annotates in this case.
    pseudo_bits: (X, Y, Z) uint32 bitmask of the predicted classes.
    accepted: (32,) bool, the pseudo classes whose confidence passed the threshold.

  Returns:
    bits (X, Y, Z) uint32; annotated (32,) uint8 (human | accepted); pseudo (32,) uint8 (1 where
    the class is a pseudo label in this case). A class in neither stays unknown: bit 0 everywhere,
    annotated 0.
  """
  human_annotated = np.asarray(human_annotated, bool)
  accepted = np.asarray(accepted, bool) & ~human_annotated
  human_word = bitmask.pack(human_annotated).item()
  out = np.asarray(human_bits, np.uint32) & np.uint32(human_word)
  for i in np.flatnonzero(accepted):
    k = int(i) + 1
    allowed = human_word & ~bitmask.pack(taxonomy.annotated_vector(_may_overlap(k)).astype(bool)
                                         ).item()
    # Voxels a human label gives to another class (not its host or lesion) are not class k's.
    keep = ((pseudo_bits & np.uint32(taxonomy.bit(k))) != 0) & ((out & np.uint32(allowed)) == 0)
    out[keep] |= np.uint32(taxonomy.bit(k))
  annotated = (human_annotated | accepted).astype(np.uint8)
  return out, annotated, accepted.astype(np.uint8)


# ------------------------------------------------------------------------------------------------
# Review list.


def review_order(rows: Sequence[Mapping[str, Any]]) -> list[dict]:
  """Case x class rows ranked by need of review: lowest confidence first, then the most
  disagreement, then the largest uncertain fraction; 'rank' (1 = review first) added."""
  key = lambda r: (float(r["confidence"]), -float(r["disagreement"]),
                   -float(r["uncertain_fraction"]), str(r["case"]), str(r["class"]))
  return [{"rank": i + 1, **r} for i, r in enumerate(sorted(rows, key=key))]
