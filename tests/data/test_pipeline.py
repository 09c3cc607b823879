"""Tests for dassemble_jax.data.pipeline: source, transforms, sharding, determinism, resume."""

import json

import jax
import numpy as np
import pytest

from dassemble_jax.data import arrayrecord_io as ario
from dassemble_jax.data import pipeline as pl

N = 37  # Odd on purpose: remainders when sharding and batching.


def _record(i):
  # The label is the record's write index, so batches can be traced back to keys; the image has
  # a left/right asymmetric pattern so a flip is visible.
  image = np.zeros((5, 5, 1), np.uint8)
  image[:, 0, 0] = i
  image[:, 4, 0] = 255
  return {"image": image, "label": np.int32(i)}


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
  out = tmp_path_factory.mktemp("pipeline") / "ds"
  with ario.DatasetWriter(out, shards_per_split={"train": 3}) as w:
    for i in range(N):
      w.add("train", _record(i))
    w.close({})
  return out


def _labels(batches):
  return [b["label"].tolist() for b in batches]


def _flat_labels(batches):
  return [k for b in batches for k in b["label"].tolist()]


def _take(loader, n):
  it = iter(loader)
  return [next(it) for _ in range(n)]


# ---- RecordSource ------------------------------------------------------------------------------


def test_record_source_write_order(ds):
  src = pl.RecordSource(ds, "train", verify=True)
  assert len(src) == N
  for i in (0, 1, 2, 3, 17, 36):
    np.testing.assert_array_equal(src[i]["image"], _record(i)["image"])
    assert int(src[i]["label"]) == i
  assert [int(r["label"]) for r in src.__getitems__([36, 0, 4, 4])] == [36, 0, 4, 4]
  with pytest.raises(IndexError):
    src[N]  # pylint: disable=pointless-statement
  # Stable, path-independent repr (Grain checks it when restoring an iterator).
  assert repr(src) == repr(pl.RecordSource(ds, "train"))
  assert str(ds) not in repr(src)


def test_record_source_corrupt_shard(tmp_path):
  out = tmp_path / "ds"
  with ario.DatasetWriter(out, shards_per_split=2) as w:
    for i in range(9):
      w.add("train", _record(i))
    w.close({})
  bad = out / "train-00001-of-00002.array_record"
  data = bad.read_bytes()
  bad.write_bytes(data[:100] + b"\x00" * 50 + data[150:])
  src = pl.RecordSource(out, "train")
  src[0]  # pylint: disable=pointless-statement  # shard 0 is intact
  with pytest.raises(ario.CorruptShardError, match="train-00001-of-00002.array_record"):
    src[1]  # pylint: disable=pointless-statement
  with pytest.raises(ario.CorruptShardError, match="train-00001-of-00002.array_record"):
    pl.RecordSource(out, "train", verify=True)
  bad.write_bytes(data[: len(data) // 3])
  with pytest.raises(ario.CorruptShardError, match="train-00001-of-00002.array_record"):
    pl.RecordSource(out, "train")


# ---- Transforms --------------------------------------------------------------------------------


def test_select_fields():
  rec = {"image": np.zeros((2, 2, 1)), "label": np.int32(1), "case_id": np.int64(7)}
  assert list(pl.SelectFields(["label", "image"]).map(rec)) == ["label", "image"]
  with pytest.raises(KeyError, match="mask"):
    pl.SelectFields(["mask"]).map(rec)


def test_cast_image():
  rec = {"image": np.array([[[0], [51], [255]]], np.uint8), "label": np.int32(3)}
  out = pl.CastImage().map(rec)
  assert out["image"].dtype == np.float32
  np.testing.assert_allclose(out["image"][0, :, 0], [0.0, 0.2, 1.0], rtol=1e-6)
  assert out["label"] is rec["label"]
  with pytest.raises(ValueError, match="uint8"):
    pl.CastImage().map({"image": np.zeros((1, 1, 1), np.float32)})


def test_random_flip_horizontal():
  image = np.arange(12, dtype=np.uint8).reshape(2, 3, 2)  # (height, width, channels)
  mask = np.arange(6, dtype=np.uint8).reshape(2, 3, 1)
  rec = {"image": image, "mask": mask}
  rng = np.random.default_rng(0)
  flipped = pl.RandomFlipHorizontal(p=1.0, fields=("image", "mask")).random_map(rec, rng)
  np.testing.assert_array_equal(flipped["image"], image[:, ::-1, :])
  np.testing.assert_array_equal(flipped["mask"], mask[:, ::-1, :])
  same = pl.RandomFlipHorizontal(p=0.0).random_map(rec, rng)
  np.testing.assert_array_equal(same["image"], image)
  # p=0.5: the decision is a function of the rng alone.
  flip = pl.RandomFlipHorizontal(p=0.5)
  draws = [flip.random_map(rec, np.random.default_rng(s))["image"][0, 0, 0] for s in range(40)]
  assert 0 < sum(d == image[0, -1, 0] for d in draws) < 40
  assert draws == [flip.random_map(rec, np.random.default_rng(s))["image"][0, 0, 0]
                   for s in range(40)]
  with pytest.raises(ValueError, match="probability"):
    pl.RandomFlipHorizontal(p=1.5)


# ---- Loader ------------------------------------------------------------------------------------


def test_batches_shapes_and_one_epoch_coverage(ds):
  loader = pl.make_loader(ds, "train", global_batch_size=8, seed=3, num_epochs=1,
                          transforms=[pl.CastImage()])
  batches = list(loader)
  assert len(batches) == N // 8
  for b in batches:
    assert b["image"].shape == (8, 5, 5, 1) and b["image"].dtype == np.float32
    assert b["label"].shape == (8,) and b["label"].dtype == np.int32
    # The image still belongs to its label after shuffling and batching.
    np.testing.assert_allclose(b["image"][:, 0, 0, 0], b["label"] / 255, rtol=1e-6)
  seen = _flat_labels(batches)
  assert len(set(seen)) == len(seen) == 32  # each key at most once; 5 dropped (remainder)
  assert seen != sorted(seen)  # shuffled
  kept = pl.make_loader(ds, "train", global_batch_size=8, seed=3, num_epochs=1,
                        drop_remainder=False)
  assert sorted(_flat_labels(kept)) == list(range(N))


def test_same_seed_same_batches_different_seed_different_order(ds):
  tf = [pl.CastImage(), pl.RandomFlipHorizontal(0.5)]
  a = _take(pl.make_loader(ds, "train", global_batch_size=4, seed=7, transforms=tf), 6)
  b = _take(pl.make_loader(ds, "train", global_batch_size=4, seed=7, transforms=tf), 6)
  c = _take(pl.make_loader(ds, "train", global_batch_size=4, seed=8, transforms=tf), 6)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x["image"], y["image"])
    np.testing.assert_array_equal(x["label"], y["label"])
  assert _labels(a) != _labels(c)
  unshuffled = _take(pl.make_loader(ds, "train", global_batch_size=4, seed=7, shuffle=False), 2)
  assert _labels(unshuffled) == [[0, 1, 2, 3], [4, 5, 6, 7]]


def test_per_process_shards_are_disjoint_and_cover(ds):
  shards = [list(pl.make_loader(ds, "train", global_batch_size=6, seed=1, num_epochs=1,
                                shard_index=i, shard_count=2)) for i in range(2)]
  keys = []
  for batches in shards:
    assert len(batches) == (N // 2) // 3
    assert all(b["label"].shape == (3,) for b in batches)  # 6 // 2 per process
    keys.append(set(_flat_labels(batches)))
  assert not keys[0] & keys[1]
  # Without batch remainder dropping, the two shards cover every key but the sharding remainder.
  full = [set(_flat_labels(pl.make_loader(ds, "train", global_batch_size=2, seed=1,
                                          num_epochs=1, shard_index=i, shard_count=2,
                                          drop_remainder=False)))
          for i in range(2)]
  assert not full[0] & full[1]
  assert len(full[0]) == len(full[1]) == N // 2
  assert len(full[0] | full[1]) == N - N % 2


def test_bad_batch_sizes(ds):
  with pytest.raises(ValueError, match="multiple of the number of data shards.*3"):
    pl.make_loader(ds, "train", global_batch_size=8, seed=0, shard_index=0, shard_count=3)
  with pytest.raises(ValueError, match="both shard_index and shard_count"):
    pl.make_loader(ds, "train", global_batch_size=8, seed=0, shard_index=0)
  with pytest.raises(ValueError, match="fewer than one batch"):
    pl.make_loader(ds, "train", global_batch_size=64, seed=0)


def test_repeat_across_epochs(ds):
  batches = list(pl.make_loader(ds, "train", global_batch_size=4, seed=2, num_epochs=3))
  keys = _flat_labels(batches)
  assert len(batches) == 3 * N // 4
  counts = np.bincount(keys, minlength=N)
  assert counts.max() == 3 and counts.sum() == 4 * len(batches)
  assert keys[:N] != keys[N:2 * N]  # reshuffled each epoch
  # num_epochs=None repeats forever.
  endless = _take(pl.make_loader(ds, "train", global_batch_size=8, seed=2), 3 * N // 8 + 2)
  assert np.bincount(_flat_labels(endless), minlength=N).min() >= 2


def test_iterator_state_restore_mid_epoch(ds):
  def loader():
    return pl.make_loader(ds, "train", global_batch_size=4, seed=11,
                          transforms=[pl.CastImage(), pl.RandomFlipHorizontal(0.5)])

  it = iter(loader())
  for _ in range(3):
    next(it)
  state = json.loads(json.dumps(pl.iterator_state_to_json(it)))  # what Orbax JsonSave stores
  expected = [next(it) for _ in range(12)]  # runs past the end of the first epoch (9 batches)
  resumed = iter(loader())
  pl.restore_iterator_state(resumed, state)
  for want, got in zip(expected, [next(resumed) for _ in range(12)]):
    np.testing.assert_array_equal(want["label"], got["label"])
    np.testing.assert_array_equal(want["image"], got["image"])
  other = iter(pl.make_loader(ds, "train", global_batch_size=4, seed=12))
  with pytest.raises(ValueError, match="Sampler"):
    pl.restore_iterator_state(other, state)


def test_worker_count_zero_and_one_agree(ds):
  def batches(workers):
    loader = pl.make_loader(ds, "train", global_batch_size=8, seed=5, num_epochs=1,
                            worker_count=workers,
                            transforms=[pl.CastImage(), pl.RandomFlipHorizontal(0.5)])
    return list(loader)

  serial, parallel = batches(0), batches(1)
  assert len(serial) == len(parallel) == N // 8
  for a, b in zip(serial, parallel):
    np.testing.assert_array_equal(a["label"], b["label"])
    np.testing.assert_array_equal(a["image"], b["image"])


def test_global_batch_from_process_local(ds):
  mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Explicit,))
  sharding = jax.sharding.NamedSharding(mesh, jax.P("data"))
  batch = next(iter(pl.make_loader(ds, "train", global_batch_size=16, seed=0,
                                   transforms=[pl.CastImage()])))
  arrays = pl.global_batch_from_process_local(batch, sharding)
  assert arrays["image"].shape == (16, 5, 5, 1) and arrays["label"].shape == (16,)
  assert arrays["image"].sharding == sharding
  assert len(arrays["image"].addressable_shards) == 8
  np.testing.assert_array_equal(np.asarray(arrays["label"]), batch["label"])
  np.testing.assert_array_equal(np.asarray(arrays["image"]), batch["image"])
