"""The partial-vs-full labelling study: the restricted shards and the paired table."""

import json
import pathlib

import numpy as np
import pytest

from configs import seg_partial_vs_full
from dassemble_jax.ct import bitmask, taxonomy
from dassemble_jax.data import arrayrecord_io
from dassemble_jax.jobs import partial_full
from dassemble_jax.segmentation import seed_study


def test_partial_and_full_shards_share_images_and_differ_only_in_labels(tmp_path):
  c = seg_partial_vs_full.get_config("tiny")
  dirs = partial_full.seed_data(c, 3, str(tmp_path / "data"))
  full = list(arrayrecord_io.read_records(dirs["full"], "train"))
  part = list(arrayrecord_io.read_records(dirs["partial"], "train"))
  assert len(full) == len(part) == c.data.phantom_train_cases
  wanted = [taxonomy.BY_NAME[n].id - 1 for n in c.partial_full.classes]  # 0-based channels
  for f, p in zip(full, part):
    np.testing.assert_array_equal(f["image"], p["image"])
    for key in f:
      if key not in ("label", "annotated"):
        np.testing.assert_array_equal(np.asarray(f[key]), np.asarray(p[key]), err_msg=key)
    # Unpacked independently: the kept channels equal, every other channel empty.
    fu, pu = bitmask.unpack(f["label"]), bitmask.unpack(p["label"])
    others = [k for k in range(taxonomy.NUM_CLASSES) if k not in wanted]
    np.testing.assert_array_equal(pu[..., wanted], fu[..., wanted])
    assert not pu[..., others].any()
    assert fu[..., wanted].any(axis=(0, 1, 2)).all()  # the truth paints every class of interest
    assert np.flatnonzero(p["annotated"]).tolist() == sorted(wanted)
    # 'full' annotates every painted class: more than the BTCV-like source's own 13.
    assert int(np.sum(f["annotated"])) > 13
  manifest = arrayrecord_io.read_manifest(dirs["partial"])
  assert manifest["annotated"][c.partial_full.source] == sorted(i + 1 for i in wanted)
  # The held-out cases carry the full truth too.
  test = next(arrayrecord_io.read_records(dirs["test"], "train"))
  assert int(np.sum(test["annotated"])) == int(np.sum(full[0]["annotated"]))


def test_run_tables_the_seeds_and_refuses_a_seed_made_otherwise(tmp_path, monkeypatch):
  c = seg_partial_vs_full.get_config("tiny")
  c.model.class_code = "onehot"
  calls = []

  def fake_seed(config, seed, seed_dir):
    calls.append(seed)
    out = {"seed": seed, "settings": partial_full.settings(config),
           "partial": {"liver": 0.5, "spleen": 0.1 * seed},
           "full": {"liver": 0.6, "spleen": 0.2 * seed},
           "partial_all_classes": {}, "full_all_classes": {"liver": 0.6, "aorta": 0.1}}
    (tmp_path / "w" / f"seed_{seed}").mkdir(parents=True)
    (tmp_path / "w" / f"seed_{seed}" / partial_full.RESULT_FILE).write_text(json.dumps(out))
    return out

  monkeypatch.setattr(partial_full, "run_seed", fake_seed)
  table = partial_full.run(c, str(tmp_path / "w"))
  assert calls == [0, 1]
  assert table["per_class"]["liver"]["diff"] == pytest.approx([0.1, 0.1])
  assert table["per_class"]["spleen"]["diff"] == pytest.approx([0.0, 0.1])
  stored = json.loads((tmp_path / "w" / partial_full.TABLE_FILE).read_text())
  assert stored["text"] == table["text"] and stored["full_classes"] == ["aorta", "liver"]
  # A rerun reads the stored seeds; other settings are refused, not mixed in.
  assert partial_full.run(c, str(tmp_path / "w"))["text"] == table["text"] and calls == [0, 1]
  c.num_steps = 7
  with pytest.raises(ValueError, match="other settings"):
    partial_full.run(c, str(tmp_path / "w"))
  c.partial_full.classes = ("liver", "no_such_organ")
  with pytest.raises(ValueError, match="no_such_organ"):
    partial_full.run(c, str(tmp_path / "w"))


@pytest.mark.parametrize("folder,variant", [("", ""), ("small", ":small")])
def test_stored_study_and_readme_are_recomputed_from_the_seed_results(folder, variant):
  """results/seg_partial_vs_full (the default) and its small/ (':small'): the table recomputed
  from each seed's result.json equals the stored one, the study ran its config's settings, and
  README.md (the default) and the folder's README.md (both) show its lines."""
  root = pathlib.Path(__file__).resolve().parents[2]
  res = root / "results" / "seg_partial_vs_full" / folder
  stored = json.loads((res / partial_full.TABLE_FILE).read_text())
  assert len(stored["seeds"]) >= 5
  per_seed = {s: json.loads((res / f"seed_{s}" / partial_full.RESULT_FILE).read_text())
              for s in stored["seeds"]}
  config = seg_partial_vs_full.get_config(variant.lstrip(":") or None)
  assert stored["settings"] == partial_full.settings(config)
  for r in per_seed.values():
    assert r["settings"] == stored["settings"]
  table = seed_study.partial_full_table(per_seed, stored["classes"])
  assert table["text"] == stored["text"]
  assert (res / "partial_full.txt").read_text() == stored["text"] + "\n"
  docs = [root / "results" / "seg_partial_vs_full" / "README.md"]
  docs += [root / "README.md"] if not folder else []
  for doc in docs:
    lines = doc.read_text().splitlines()
    missing = [ln for ln in table["text"].splitlines() if ln.strip() and ln not in lines]
    assert not missing, f"{doc} lacks these lines of the stored table: {missing[:3]}"
