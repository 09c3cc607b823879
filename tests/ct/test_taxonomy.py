"""The universal taxonomy and the per-dataset mapping tables."""

import dataclasses

import pytest

from dassemble_jax.ct import datasets, taxonomy

# The reference's order (shared/reference/universal_model.md), written out independently.
_REFERENCE = """spleen, right kidney, left kidney, gallbladder, esophagus, liver, stomach, aorta,
postcava, portal vein and splenic vein, pancreas, right adrenal gland, left adrenal gland,
duodenum, hepatic vessel, right lung, left lung, colon, intestine, rectum, bladder, prostate,
left head of femur, right head of femur, celiac trunk, kidney tumor, liver tumor,
pancreas tumor, hepatic vessel tumor, lung tumor, colon tumor, kidney cyst"""


def test_taxonomy_order_and_fields():
  expected = [s.strip() for s in _REFERENCE.replace("\n", " ").split(",")]
  assert taxonomy.NUM_CLASSES == len(taxonomy.CLASSES) == 32
  assert [c.id for c in taxonomy.CLASSES] == list(range(1, 33))
  assert [c.prompt_name for c in taxonomy.CLASSES] == expected
  assert len({c.name for c in taxonomy.CLASSES}) == 32
  assert taxonomy.CLASSES[5].prompt == "A computerized tomography of a liver."
  assert [c.id for c in taxonomy.CLASSES if c.is_tumor] == list(range(26, 33))


def test_bits_of_class_ids():
  # (Packing and unpacking whole masks: tests/ct/test_bitmask.py.)
  assert taxonomy.bit(1) == 1 and taxonomy.bit(32) == 2 ** 31
  with pytest.raises(ValueError):
    taxonomy.bit(33)


def test_every_reference_dataset_is_listed_and_valid():
  for name in ("btcv", "tcia_pancreas_ct", "chaos", "lits", "kits", "word", "abdomenct_1k",
               "amos", "ct_org", "msd_task03_liver", "msd_task06_lung", "msd_task07_pancreas",
               "msd_task08_hepatic_vessel", "msd_task09_spleen", "msd_task10_colon",
               "totalsegmentator"):
    spec = datasets.get(name)
    datasets.validate(spec)
    for local in spec.labels:
      for t in spec.targets(local):
        ids = taxonomy.PAIRS[t] if isinstance(t, str) else (t,)
        assert all(1 <= i <= 32 for i in ids), (name, local, t)
    assert spec.output_ids() == set(spec.annotated) | set(spec.optional)


def test_selected_mappings_match_the_reference():
  assert {k: v for k, v in datasets.get("btcv").labels.items() if k} == {i: i for i in range(1, 15)}
  assert datasets.get("lits").labels == {0: 0, 1: 6, 2: 27}
  assert datasets.get("kits").labels[1] == "kidney" and taxonomy.PAIRS["kidney"] == (2, 3)
  word = datasets.get("word")
  assert [word.labels[i] for i in range(1, 17)] == [6, 1, 3, 2, 7, 4, 5, 11, 14, 18, 19,
                                                    "adrenal_gland", 20, 21, 23, 24]
  amos = datasets.get("amos")
  assert [amos.labels[i] for i in range(1, 16)] == [1, 2, 3, 4, 5, 6, 7, 8, 9, 11, 12, 13, 14,
                                                    21, 22]
  assert datasets.get("ct_org").labels[5] == 0  # bone dropped
  ts = datasets.get("totalsegmentator")
  assert ts.labels["lung_middle_lobe_right"] == 16 and ts.labels["small_bowel"] == 19
  assert ts.labels["kidney_cyst_left"] == (32, 3)
  assert taxonomy.TUMOR_HOST[27] == 6 and taxonomy.TUMOR_HOST[26] == "kidney"


def test_amos_case_filter_keeps_ct_only():
  import re
  pattern = datasets.get("amos").layout_args["case_regex"]
  keep = [i for i in range(1, 601) if re.search(pattern, f"amos_{i:04d}")]
  assert keep == list(range(1, 501))


@pytest.mark.parametrize("change, message", [
    ({"labels": {0: 0, 1: 33}, "annotated": (33,)}, "not a class id"),
    ({"labels": {0: 0, 1: "spleen_pair"}, "annotated": (1,)}, "unknown pair"),
    ({"labels": {0: 0, 1: 6}, "annotated": (6, 27)}, "must agree"),
    ({"labels": {"kidney_right": 2, "kidney_left": 3, "tumor": 26}, "annotated": (2, 3, 26),
          "by_name": True}, "per side"),
])
def test_validate_rejects_inconsistent_entries(change, message):
  spec = dataclasses.replace(datasets.get("lits"), name="bad", **change)
  with pytest.raises(ValueError, match=message):
    datasets.validate(spec)
