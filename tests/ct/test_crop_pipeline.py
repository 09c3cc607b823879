"""The 3D Grain pipeline: crop-centre ratios, windows and padding, mixing, sharding, resume."""

import collections

import numpy as np
import pytest

from dassemble_jax.ct import crop_pipeline, phantom, taxonomy


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
  root = tmp_path_factory.mktemp("ph")
  out = phantom.write_phantom_sources(root, 3, seed=0, shape=(32, 28, 20),
                                      native_spacing=(6.0, 6.0, 8.0), spacing=6.0)
  return [out[n] for n in ("phantom_lits", "phantom_spleen")]


def _record(has_tumor, with_tumor=True):
  label = np.zeros((20, 20, 20), np.uint32)
  label[5:10, 5:10, 5:10] = taxonomy.bit(6)
  label[7, 7, 7] |= taxonomy.bit(27)
  tumor = np.array([[7, 7, 7]], np.int16) if with_tumor else np.zeros((0, 3), np.int16)
  organ = np.argwhere(label == taxonomy.bit(6)).astype(np.int16)
  return {"label": label, "has_tumor": has_tumor, "centres_fg": np.argwhere(label).astype(
      np.int16), "centres_organ": organ, "centres_tumor": tumor}


def _kinds(record, n=3000):
  rng = np.random.default_rng(0)
  cfg = crop_pipeline.CropConfig(crop_size=(8, 8, 8))
  out = []
  for _ in range(n):
    centre, kind = crop_pipeline.choose_centre(record, cfg, rng)
    bits = record["label"][tuple(centre)]
    # The kind says where the centre is.
    if kind == crop_pipeline.TUMOR:
      assert bits & taxonomy.bit(27)
    assert (kind == crop_pipeline.BACKGROUND) == (bits == 0)
    out.append(kind)
  return collections.Counter(out)


def test_centre_ratios():
  n = 3000
  tumor = _kinds(_record(True), n)   # bg:organ:tumor = 1:1:5
  for kind, share in ((crop_pipeline.BACKGROUND, 1 / 7), (crop_pipeline.FOREGROUND, 1 / 7),
                      (crop_pipeline.TUMOR, 5 / 7)):
    assert abs(tumor[kind] / n - share) < 4 * np.sqrt(share * (1 - share) / n)
  plain = _kinds(_record(False), n)  # fg:bg = 2:1
  assert abs(plain[crop_pipeline.FOREGROUND] / n - 2 / 3) < 4 * np.sqrt(2 / 9 / n)
  # A tumor source's case without tumor falls back to organ centres.
  fallback = _kinds(_record(True, with_tumor=False), 1000)
  assert fallback[crop_pipeline.TUMOR] == 0 and fallback[crop_pipeline.FOREGROUND] > 700


def test_window_padding_and_placement():
  vol = np.arange(5 * 12 * 30, dtype=np.float32).reshape(5, 12, 30) + 1
  window = (8, 8, 8)
  starts = crop_pipeline.window_starts(np.array([2, 0, 29]), vol.shape, window)
  np.testing.assert_array_equal(starts, [-1, 0, 22])  # padded / clamped low / clamped high
  out = crop_pipeline.extract_window(vol, starts, window)
  assert out.shape == window
  np.testing.assert_array_equal(out[0], 0)
  np.testing.assert_array_equal(out[6:], 0)
  np.testing.assert_array_equal(out[1:6], vol[:, 0:8, 22:30])


def test_batches_mixing_and_determinism(shards):
  crop = crop_pipeline.CropConfig(crop_size=(16, 16, 16), jitter=2)
  ds = crop_pipeline.make_ct_dataset(shards, batch_size=4, seed=5, crop=crop, weights=[3, 1],
                                shard_index=0, shard_count=1)
  it = iter(ds)
  batches = [next(it) for _ in range(6)]
  b = batches[0]
  assert b["image"].shape == (4, 20, 20, 20) and b["image"].dtype == np.float16
  assert b["label"].shape == (4, 20, 20, 20) and b["label"].dtype == np.uint32
  assert b["annotated"].shape == (4, 32)
  sources = np.concatenate([x["source"] for x in batches])
  assert (sources == 0).sum() == 18 and (sources == 1).sum() == 6  # weights 3:1
  for x in batches:
    for s, ann in zip(x["source"], x["annotated"]):
      assert list(np.flatnonzero(ann) + 1) == ([6, 27] if s == 0 else [1])
    assert np.all(x["zoom_ok"] == (x["source"] == 1))  # only the MSD-layout source zooms
  again = iter(crop_pipeline.make_ct_dataset(shards, batch_size=4, seed=5, crop=crop,
                                        weights=[3, 1], shard_index=0, shard_count=1))
  for x in batches:
    y = next(again)
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])


def test_checkpoint_resume(shards):
  crop = crop_pipeline.CropConfig(crop_size=(8, 8, 8))
  make = lambda: iter(crop_pipeline.make_ct_dataset(shards, batch_size=2, seed=1, crop=crop,
                                               shard_index=0, shard_count=1))
  it = make()
  next(it)
  state = it.get_state()
  expected = [next(it) for _ in range(3)]
  resumed = make()
  resumed.set_state(state)
  for x in expected:
    np.testing.assert_array_equal(x["image"], next(resumed)["image"])


def test_process_shards_are_disjoint(shards):
  crop = crop_pipeline.CropConfig(crop_size=(8, 8, 8))
  seen = []
  for index in range(2):
    it = iter(crop_pipeline.make_ct_dataset(shards[:1], batch_size=2, seed=0, crop=crop,
                                       shard_index=index, shard_count=2))
    seen.append({int(c) for _ in range(4) for c in next(it)["case_index"]})
  assert seen[0] == {0, 2} and seen[1] == {1}


def test_several_crops_per_record(shards):
  crop = crop_pipeline.CropConfig(crop_size=(8, 8, 8), crops_per_record=2)
  b = next(iter(crop_pipeline.make_ct_dataset(shards, batch_size=4, seed=0, crop=crop,
                                         shard_index=0, shard_count=1)))
  assert b["image"].shape == (4, 8, 8, 8) and b["source"].shape == (4,)
  assert b["case_index"][0] == b["case_index"][1] and b["source"][0] == b["source"][1]
  with pytest.raises(ValueError, match="multiple of crops_per_record"):
    crop_pipeline.make_ct_dataset(shards, batch_size=3, seed=0, crop=crop, shard_index=0,
                             shard_count=1)


@pytest.mark.slow
def test_worker_processes_give_the_same_batches(shards):
  crop = crop_pipeline.CropConfig(crop_size=(8, 8, 8))
  kw = {"batch_size": 2, "seed": 3, "crop": crop, "shard_index": 0, "shard_count": 1}
  a = iter(crop_pipeline.make_ct_dataset(shards, **kw))
  b = iter(crop_pipeline.make_ct_dataset(shards, num_workers=2, **kw))
  for _ in range(4):
    np.testing.assert_array_equal(next(a)["label"], next(b)["label"])
