"""Tests for dassemble_jax.data.arrayrecord_io: round trips, manifest, corruption, atomicity."""

import errno
import hashlib
import json
import os

import numpy as np
import pytest

from dassemble_jax.data import arrayrecord_io as ario


def _images(n=37, seed=0):
  rng = np.random.default_rng(seed)
  return [{"image": rng.integers(0, 256, (5, 5, 1), dtype=np.uint8),
           "label": np.int32(i % 10)} for i in range(n)]


def _volumes(seed=1):
  # (depth, height, width) varies per case, like CT volumes; spacing is fixed-shape.
  rng = np.random.default_rng(seed)
  # Odd sizes on purpose: a float32 field of 45 values followed by uint8 bytes.
  shapes = [(3, 3, 5), (2, 3, 6), (4, 3, 5), (1, 3, 7), (3, 3, 5)]
  return [{"ct": rng.normal(size=s).astype(np.float32),
           "mask": rng.integers(0, 3, s, dtype=np.uint8),
           "spacing": np.array([1.5, 0.8, 0.8], np.float64)} for s in shapes]


def _write(path, splits, shards=1, manifest=None, **kwargs):
  with ario.DatasetWriter(path, shards_per_split=shards, **kwargs) as w:
    for split, recs in splits.items():
      for r in recs:
        w.add(split, r)
    return w.close(manifest or {})


def _assert_same(a, b):
  assert len(a) == len(b)
  for ra, rb in zip(a, b):
    assert ra.keys() == rb.keys()
    for k in ra:
      assert ra[k].dtype == rb[k].dtype and ra[k].shape == rb[k].shape
      np.testing.assert_array_equal(ra[k], rb[k])


def test_round_trip_images_in_write_order(tmp_path):
  recs, test = _images(37), _images(11, seed=5)
  out = _write(tmp_path / "ds", {"train": recs, "test": test}, shards={"train": 4})
  assert out == (tmp_path / "ds").absolute()
  _assert_same(list(ario.read_records(out, "train")), recs)
  _assert_same(list(ario.read_records(out, "test")), test)
  # Round-robin: record i is in shard i % 4 at position i // 4.
  paths = ario.shard_paths(out, "train")
  assert [os.path.basename(p) for p in paths] == [
      f"train-0000{i}-of-00004.array_record" for i in range(4)]
  reader = ario.open_shard(paths[1], 9)
  assert ario.decode_record(reader.read([2])[0], paths[1], 2)["label"] == recs[9]["label"]
  reader.close()


def test_round_trip_varying_3d_shapes(tmp_path):
  vols = _volumes()
  out = _write(tmp_path / "ct", {"train": vols}, shards=2)
  _assert_same(list(ario.read_records(out, "train")), vols)
  m = ario.read_manifest(out)
  assert m["fields"]["ct"] == {"dtype": "<f4", "shape": [None, 3, None]}
  assert m["fields"]["mask"] == {"dtype": "|u1", "shape": [None, 3, None]}
  assert m["fields"]["spacing"] == {"dtype": "<f8", "shape": [3]}
  stacked = ario.load_split_arrays(out, "train")
  assert list(stacked) == ["spacing"]  # varying fields are left out by default
  assert stacked["spacing"].shape == (5, 3)
  with pytest.raises(ValueError, match="'ct'.*varies in shape"):
    ario.load_split_arrays(out, "train", fields=["ct"])


def test_manifest_counts_checksums_fields(tmp_path):
  recs = _images(37)
  out = _write(tmp_path / "ds", {"train": recs}, shards={"train": 3},
               manifest={"label_space": ["a", "b"], "source": "unit"})
  m = json.loads((out / "manifest.json").read_text())
  assert m == ario.read_manifest(out)
  assert m["format"] == "dassemble_jax.arrayrecord/1"
  assert m["label_space"] == ["a", "b"] and m["source"] == "unit"
  split = m["splits"]["train"]
  assert split["num_records"] == 37
  assert [s["num_records"] for s in split["shards"]] == [13, 12, 12]
  for shard in split["shards"]:
    data = (out / shard["file"]).read_bytes()
    assert shard["num_bytes"] == len(data)
    assert shard["sha256"] == hashlib.sha256(data).hexdigest()
  assert m["fields"] == {"image": {"dtype": "|u1", "shape": [5, 5, 1]},
                         "label": {"dtype": "<i4", "shape": []}}
  assert split["fields"] == m["fields"]
  ario.verify_shards(out)
  arrays = ario.load_split_arrays(out, "train")
  np.testing.assert_array_equal(arrays["image"], np.stack([r["image"] for r in recs]))
  np.testing.assert_array_equal(arrays["label"], np.arange(37) % 10)
  assert arrays["label"].dtype == np.int32
  # No stray temporary directories next to the dataset.
  assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]


@pytest.mark.parametrize("damage", ["overwrite", "truncate", "delete"])
def test_corrupt_shard_names_the_file(tmp_path, damage):
  out = _write(tmp_path / "ds", {"train": _images(37)}, shards=2)
  bad = out / "train-00001-of-00002.array_record"
  data = bad.read_bytes()
  if damage == "overwrite":  # Same size, a few bytes inside the first records flipped.
    bad.write_bytes(data[:100] + bytes(b ^ 0xFF for b in data[100:140]) + data[140:])
  elif damage == "truncate":
    bad.write_bytes(data[: len(data) // 3])
  else:
    bad.unlink()
  with pytest.raises(ario.CorruptShardError, match="train-00001-of-00002.array_record"):
    ario.verify_shards(out)
  with pytest.raises(ario.CorruptShardError, match="train-00001-of-00002.array_record"):
    list(ario.read_records(out, "train"))
  assert issubclass(ario.CorruptShardError, ValueError)


def test_corrupt_shard_detected_without_checksum(tmp_path):
  # The reader itself (verify=False) must still name the file: riegeli chunk hashes and the
  # record count from the manifest catch overwritten and truncated shards.
  out = _write(tmp_path / "ds", {"train": _images(37)}, shards=2)
  bad = out / "train-00000-of-00002.array_record"
  data = bad.read_bytes()
  bad.write_bytes(data[:100] + b"\x00" * 60 + data[160:])
  with pytest.raises(ario.CorruptShardError, match="train-00000-of-00002"):
    list(ario.read_records(out, "train", verify=False))
  bad.write_bytes(data[: len(data) // 3])
  with pytest.raises(ario.CorruptShardError, match="train-00000-of-00002.*records"):
    list(ario.read_records(out, "train", verify=False))


def test_undecodable_record_names_the_file(tmp_path):
  # A valid ArrayRecord file whose payload is not a dassemble_jax record.
  out = _write(tmp_path / "ds", {"train": _images(3)})
  from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top
  path = out / "train-00000-of-00001.array_record"
  w = array_record_module.ArrayRecordWriter(str(path), ario.WRITER_OPTIONS)
  for payload in [b"DAR1junkjunk", b"x", b"y"]:
    w.write(payload)
  w.close()
  with pytest.raises(ario.CorruptShardError, match=r"train-00000-of-00001.*record 0"):
    list(ario.read_records(out, "train", verify=False))


def test_exception_inside_with_leaves_nothing(tmp_path):
  target = tmp_path / "ds"
  with (pytest.raises(RuntimeError, match="conversion failed"),
        ario.DatasetWriter(target, shards_per_split=2) as w):
    for r in _images(10):
      w.add("train", r)
    raise RuntimeError("conversion failed")
  assert list(tmp_path.iterdir()) == []


def test_forgetting_close_leaves_nothing(tmp_path):
  with (pytest.raises(RuntimeError, match="without close"),
        ario.DatasetWriter(tmp_path / "ds") as w):
    w.add("train", _images(1)[0])
  assert list(tmp_path.iterdir()) == []


def test_bad_manifest_or_record_cleans_up(tmp_path):
  with pytest.raises(ValueError, match="reserved"):
    _write(tmp_path / "a", {"train": _images(2)}, manifest={"splits": 1})
  with pytest.raises(ValueError, match="not JSON-serialisable"):
    _write(tmp_path / "b", {"train": _images(2)}, manifest={"x": object()})
  with pytest.raises(ValueError, match="'image'.*dtype"):
    _write(tmp_path / "c", {"train": [_images(1)[0],
                                      {"image": np.zeros((5, 5, 1), np.float32),
                                       "label": np.int32(0)}]})
  with pytest.raises(ValueError, match="same fields"):
    _write(tmp_path / "d", {"train": [_images(1)[0], {"image": np.zeros((5, 5, 1), np.uint8)}]})
  with pytest.raises(ValueError, match="rank"):
    _write(tmp_path / "e", {"train": [{"x": np.zeros((2, 2))}, {"x": np.zeros(2)}]})
  with pytest.raises(ValueError, match="split name"):
    _write(tmp_path / "f", {"tr/ain": _images(1)})
  assert list(tmp_path.iterdir()) == []


def test_existing_out_dir(tmp_path):
  out = _write(tmp_path / "ds", {"train": _images(4)})
  with pytest.raises(FileExistsError, match="overwrite=True"):
    ario.DatasetWriter(out)
  out = _write(out, {"train": _images(2)}, overwrite=True)
  assert ario.read_manifest(out)["splits"]["train"]["num_records"] == 2
  assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]


def test_read_manifest_errors(tmp_path):
  with pytest.raises(ario.ManifestError, match="manifest.json"):
    ario.read_manifest(tmp_path)
  (tmp_path / "manifest.json").write_text("{not json")
  with pytest.raises(ario.ManifestError, match="manifest.json.*invalid JSON"):
    ario.read_manifest(tmp_path)
  (tmp_path / "manifest.json").write_text('{"format": "other"}')
  with pytest.raises(ValueError, match="expected 'dassemble_jax.arrayrecord/1'"):
    ario.read_manifest(tmp_path)


def test_unknown_split(tmp_path):
  out = _write(tmp_path / "ds", {"train": _images(2)})
  with pytest.raises(KeyError, match="no split 'val'.*train"):
    ario.shard_paths(out, "val")


def test_more_shards_than_records(tmp_path):
  recs = _images(3)
  out = _write(tmp_path / "ds", {"train": recs}, shards=5)
  m = ario.read_manifest(out)
  assert [s["num_records"] for s in m["splits"]["train"]["shards"]] == [1, 1, 1, 0, 0]
  _assert_same(list(ario.read_records(out, "train")), recs)


def test_full_disk_is_an_oserror_naming_the_shard(tmp_path, monkeypatch):
  # array_record's C++ writer reports a failed write as a RuntimeError (seen on a full tmpfs:
  # "write() failed: No space left on device; writing <path>; at byte 86016; ...").
  real = ario.array_record_module.ArrayRecordWriter

  class FullDisk:
    def __init__(self, path, options):
      self._w = real(path, options)

    def write(self, data):
      raise RuntimeError(f"write() failed: No space left on device; writing {tmp_path}; at "
                         "byte 86016; Failed to close chunk_writer")

    def is_open(self):
      return self._w.is_open()

    def close(self):
      self._w.close()
  monkeypatch.setattr(ario.array_record_module, "ArrayRecordWriter", FullDisk)
  out = tmp_path / "ds"
  with pytest.raises(OSError) as info, ario.DatasetWriter(out) as writer:
    writer.add("train", {"x": np.zeros(3, np.float32)})
  assert info.value.errno == errno.ENOSPC
  assert info.value.filename == str(out / "train-00000-of-00001.array_record")
  assert not out.exists() and os.listdir(tmp_path) == []  # nothing half-written
