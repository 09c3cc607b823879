"""The shared label space: synonyms, overrides, unknown names, uncertainty policies by hand."""

import numpy as np
import pytest

from dassemble_jax.chestxray import label_space as ls
from dassemble_jax.data.errors import DataFormatError

nan = np.nan


def _table(dataset, names, values):
  n = len(values)
  return ls.LabelTable(dataset, f"{dataset}.csv", np.array([f"{i}.png" for i in range(n)],
                                                           dtype=object),
                       np.arange(1, n + 1), np.array(["p"] * n, dtype=object), tuple(names),
                       np.array(values, np.float32), np.array(["frontal"] * n, dtype=object))


def test_synonyms_map_each_dataset_onto_shared_classes():
  assert ls.synonyms("chexpert")["Pleural Effusion"] == "Effusion"
  assert ls.synonyms("nih")["Effusion"] == "Effusion"
  assert ls.synonyms("nih")["Pleural_Thickening"] == "Pleural Thickening"
  # Lung Lesion is its own class: not Nodule, not Mass.
  assert ls.synonyms("chexpert")["Lung Lesion"] == "Lung Lesion"
  for table in ls.SYNONYMS.values():
    assert set(table.values()) <= set(ls.SHARED_CLASSES)


def test_unknown_names_are_errors():
  with pytest.raises(DataFormatError, match=r"x.csv: unknown chexpert class name\(s\) \['Foo'\]"):
    ls.check_names("chexpert", ["Edema", "Foo"], "x.csv")
  with pytest.raises(ValueError, match="unknown chest X-ray dataset"):
    ls.synonyms("mimic")
  t = _table("nih", ["Effusion"], [[1.0]])
  with pytest.raises(ValueError, match="does not annotate 'Edema'"):
    ls.shared_values(t, ["Edema"])


def test_overrides_merge_lesions_only_when_asked():
  over = ls.parse_overrides(["nih:Nodule=Lung Lesion", "nih:Mass=Lung Lesion"])
  t = _table("nih", ["Nodule", "Mass"], [[1, 0], [0, 1], [0, 0], [1, 1]])
  np.testing.assert_array_equal(ls.shared_values(t, ["Lung Lesion"], over)[:, 0], [1, 1, 0, 1])
  with pytest.raises(ValueError, match="does not annotate 'Lung Lesion'"):
    ls.shared_values(t, ["Lung Lesion"])  # not merged by default
  for bad in ["nih:Nodule", "mimic:X=Edema", "nih:Foo=Edema", "nih:Nodule=Tumour"]:
    with pytest.raises(ValueError):
      ls.parse_overrides([bad])


def test_merged_values_combine_positive_then_uncertain_then_negative():
  over = {"chexpert": {"Lung Lesion": "Nodule", "Lung Opacity": "Nodule"}}
  t = _table("chexpert", ["Lung Lesion", "Lung Opacity"],
             [[1, -1], [-1, 0], [0, nan], [nan, nan], [-1, -1]])
  got = ls.shared_values(t, ["Nodule"], over)[:, 0]
  np.testing.assert_array_equal(got, [1, -1, 0, nan, -1])


def test_policies_by_hand():
  v = np.array([[1, 0, -1, nan]], np.float32)
  cases = {  # (policy, blank) -> (targets, known)
      ("ignore", "negative"): ([1, 0, 0, 0], [1, 1, 0, 1]),
      ("zeros", "negative"): ([1, 0, 0, 0], [1, 1, 1, 1]),
      ("ones", "negative"): ([1, 0, 1, 0], [1, 1, 1, 1]),
      ("ignore", "unknown"): ([1, 0, 0, 0], [1, 1, 0, 0]),
      ("ones", "unknown"): ([1, 0, 1, 0], [1, 1, 1, 0]),
  }
  for (policy, blank), (t, k) in cases.items():
    targets, known = ls.to_targets(v, policy=policy, blank=blank)
    np.testing.assert_array_equal(targets[0], t, err_msg=f"{policy}/{blank}")
    np.testing.assert_array_equal(known[0], k, err_msg=f"{policy}/{blank}")
  with pytest.raises(ValueError, match="uncertainty policy"):
    ls.to_targets(v, policy="maybe")
