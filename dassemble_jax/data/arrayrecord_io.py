"""ArrayRecord shards plus a JSON manifest: the on-disk form of every converted dataset.

Layout of a dataset directory:
```
out_dir/
  manifest.json                         format, splits (shards, counts, sha256), fields, user keys
  train-00000-of-00004.array_record     records written round-robin over a split's shards
  ...
```
Records are `dassemble_jax.data.records` bytes (a flat dict of NumPy arrays). Record `i` of a split
(in the order `DatasetWriter.add` saw them) lives in shard `i % n` at position `i // n`, so the
write order is recoverable from the shards alone (`read_records` and `pipeline.RecordSource`
both index in write order).

The writer streams: each record is encoded and written as soon as it is added, so per-case CT
volumes of different shapes never have to sit in memory together. Everything goes to a hidden
temporary sibling directory that is renamed onto `out_dir` only once every shard is closed and
the manifest is written; an exception inside the `with` block removes it.

Command line (inspect or check a dataset):
  python -m dassemble_jax.data.arrayrecord_io /path/to/dataset         # verify + summary
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import pathlib
import re
import shutil
import sys
import uuid
from collections.abc import Iterator, Mapping
from typing import Any, Self

import numpy as np
from array_record.python import array_record_module

from dassemble_jax import cli
from dassemble_jax.data import records
from dassemble_jax.data.errors import DataFormatError

FORMAT = "dassemble_jax.arrayrecord/1"
MANIFEST_NAME = "manifest.json"
# group_size:1 makes every record its own compressed chunk: random access (Grain's global
# shuffle) then decompresses one record, not a group of 65536.
WRITER_OPTIONS = "group_size:1"
# Sequential reads: no background readahead per shard (a split may have many shards open).
_SEQUENTIAL_READER_OPTIONS = "readahead_buffer_size:0,max_parallelism:0"
_RESERVED_KEYS = ("format", "splits", "fields")
_SPLIT_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
_HASH_CHUNK = 1 << 20


class CorruptShardError(DataFormatError):
  """A shard is missing, truncated, or its bytes do not match the manifest."""


class ManifestError(DataFormatError):
  """manifest.json is missing, not JSON, or not a dassemble_jax.arrayrecord manifest."""


# ----------------------------------------------------------------------------------------------
# Writing.


def _shard_name(split: str, index: int, count: int) -> str:
  return f"{split}-{index:05d}-of-{count:05d}.array_record"


def _sha256(path: pathlib.Path) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    while chunk := f.read(_HASH_CHUNK):
      digest.update(chunk)
  return digest.hexdigest()


class _FieldSpecs:
  """Field names, dtypes and shapes seen so far; a dimension that varies becomes None."""

  def __init__(self, where: str):
    self._where = where
    self.specs: dict[str, dict[str, Any]] = {}

  def update(self, record: Mapping[str, np.ndarray], index: int) -> None:
    if not self.specs:
      for name, arr in record.items():
        self.specs[name] = {"dtype": arr.dtype.str, "shape": list(arr.shape)}
      return
    if set(record) != set(self.specs):
      raise ValueError(
          f"{self._where}: record {index} has fields {sorted(record)}, but earlier records have "
          f"{sorted(self.specs)}; every record of a split must have the same fields")
    for name, arr in record.items():
      self.merge(name, {"dtype": arr.dtype.str, "shape": list(arr.shape)}, f"record {index}")

  def merge(self, name: str, spec: Mapping[str, Any], what: str) -> None:
    if name not in self.specs:
      self.specs[name] = {"dtype": spec["dtype"], "shape": list(spec["shape"])}
      return
    seen = self.specs[name]
    if spec["dtype"] != seen["dtype"]:
      raise ValueError(f"{self._where}: field {name!r} of {what} has dtype {spec['dtype']}, "
                       f"earlier records have {seen['dtype']}")
    if len(spec["shape"]) != len(seen["shape"]):
      raise ValueError(f"{self._where}: field {name!r} of {what} has shape {spec['shape']}, "
                       f"earlier records have rank {len(seen['shape'])} ({seen['shape']})")
    seen["shape"] = [a if a == b else None for a, b in zip(seen["shape"], spec["shape"])]


def _os_error(e: RuntimeError, path: pathlib.Path) -> OSError:
  """array_record's C++ writer reports a failed write (a full disk, a lost mount) as a
  RuntimeError; as an OSError naming the shard it is a user's problem, not a bug."""
  text = str(e)
  if "No space left on device" in text:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
  return OSError(errno.EIO, f"cannot write ArrayRecord shard ({text})", str(path))


class _SplitWriter:
  """The open shards of one split; records go round-robin so record i sits in shard i % n."""

  def __init__(self, directory: pathlib.Path, split: str, num_shards: int,
               shown: pathlib.Path):
    self.names = [_shard_name(split, i, num_shards) for i in range(num_shards)]
    self.paths = [shown / name for name in self.names]  # in messages: where the shard would be
    self.writers = []
    for name, path in zip(self.names, self.paths):
      try:
        self.writers.append(array_record_module.ArrayRecordWriter(str(directory / name),
                                                                  WRITER_OPTIONS))
      except RuntimeError as e:
        raise _os_error(e, path) from e
    self.count = 0
    self.fields = _FieldSpecs(f"split {split!r}")

  def add(self, data: bytes) -> None:
    i = self.count % len(self.writers)
    try:
      self.writers[i].write(data)
    except RuntimeError as e:
      raise _os_error(e, self.paths[i]) from e
    self.count += 1

  def close(self) -> None:
    for writer, path in zip(self.writers, self.paths):
      if writer.is_open():
        try:
          writer.close()
        except RuntimeError as e:
          raise _os_error(e, path) from e


class DatasetWriter:
  """Streams records into ArrayRecord shards and writes the manifest atomically.

  ```
  with DatasetWriter(out_dir, shards_per_split={"train": 4}) as writer:
    for image, label in examples:
      writer.add("train", {"image": image, "label": np.int32(label)})
    writer.close({"label_space": [...]})
  ```
  `shards_per_split` is one count for every split or a dict (splits missing from it get 1).
  Leaving the `with` block without `close(...)` or with an exception leaves nothing at out_dir.
  """

  def __init__(self, out_dir: str | os.PathLike, *,
               shards_per_split: int | Mapping[str, int] = 1, overwrite: bool = False):
    self.out_dir = pathlib.Path(out_dir).absolute()
    self._overwrite = overwrite
    self._shards_per_split = shards_per_split
    counts = (shards_per_split.values() if isinstance(shards_per_split, Mapping)
              else [shards_per_split])
    for n in counts:
      if not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"shards_per_split must be positive integers, got {shards_per_split!r}")
    self._check_target()
    self.out_dir.parent.mkdir(parents=True, exist_ok=True)
    # A sibling, so the final rename stays on one filesystem (atomic); hidden so that a writer
    # killed by a signal leaves nothing that looks like a dataset. A whole folder appears at
    # once here, a different operation from `dassemble_jax.atomic` (one file at a time).
    self._tmp_dir = self.out_dir.parent / f".{self.out_dir.name}.tmp-{uuid.uuid4().hex[:12]}"
    self._tmp_dir.mkdir()
    self._splits: dict[str, _SplitWriter] = {}
    self._state = "open"

  def _check_target(self) -> None:
    if self.out_dir.exists() and not self._overwrite:
      raise FileExistsError(
          f"{self.out_dir} already exists; pass overwrite=True to replace it, or choose another "
          "output directory")

  def __enter__(self) -> Self:
    return self

  def __exit__(self, exc_type, exc, tb) -> None:
    if self._state != "open":
      return
    self.abort()
    if exc_type is None:
      raise RuntimeError(
          f"DatasetWriter for {self.out_dir} left its `with` block without close(manifest); "
          "nothing was written")

  def _num_shards(self, split: str) -> int:
    if isinstance(self._shards_per_split, Mapping):
      return int(self._shards_per_split.get(split, 1))
    return int(self._shards_per_split)

  def add(self, split: str, record: Mapping[str, np.ndarray]) -> None:
    """Encodes `record` and appends it to `split` (streamed to disk immediately)."""
    if self._state != "open":
      raise RuntimeError(f"DatasetWriter for {self.out_dir} is already {self._state}")
    if not _SPLIT_NAME.fullmatch(split):
      raise ValueError(f"split name {split!r} must match {_SPLIT_NAME.pattern}")
    if not record:
      raise ValueError(f"split {split!r}: a record needs at least one field")
    arrays = {name: np.asarray(value) for name, value in record.items()}
    if split not in self._splits:
      self._splits[split] = _SplitWriter(self._tmp_dir, split, self._num_shards(split),
                                          self.out_dir)
    writer = self._splits[split]
    writer.fields.update(arrays, writer.count)
    writer.add(records.encode(arrays))

  def close(self, manifest: Mapping[str, Any] | None = None) -> pathlib.Path:
    """Finishes the shards, writes manifest.json and moves the dataset to out_dir."""
    if self._state != "open":
      raise RuntimeError(f"DatasetWriter for {self.out_dir} is already {self._state}")
    try:
      return self._finish(dict(manifest or {}))
    except BaseException:
      self.abort()
      raise

  def _finish(self, extra: dict[str, Any]) -> pathlib.Path:
    clash = [k for k in _RESERVED_KEYS if k in extra]
    if clash:
      raise ValueError(f"manifest keys {clash} are reserved for the writer")
    splits, fields = {}, _FieldSpecs("dataset")
    for split, writer in sorted(self._splits.items()):
      writer.close()
      counts = [len(range(i, writer.count, len(writer.names))) for i in range(len(writer.names))]
      shards = []
      for name, count in zip(writer.names, counts):
        path = self._tmp_dir / name
        shards.append({"file": name, "num_records": count,
                       "num_bytes": path.stat().st_size, "sha256": _sha256(path)})
      splits[split] = {"num_records": writer.count, "shards": shards,
                       "fields": writer.fields.specs}
      for name, spec in writer.fields.specs.items():
        fields.merge(name, spec, f"split {split!r}")
    content = {"format": FORMAT, "splits": splits, "fields": fields.specs, **extra}
    try:
      text = json.dumps(content, indent=2, sort_keys=False)
    except TypeError as e:
      raise ValueError(f"manifest for {self.out_dir} is not JSON-serialisable: {e}") from e
    (self._tmp_dir / MANIFEST_NAME).write_text(text + "\n")
    self._move_into_place()
    self._state = "closed"
    return self.out_dir

  def _move_into_place(self) -> None:
    self._check_target()  # It may have appeared while we were writing.
    old = None
    if self.out_dir.exists():
      old = self.out_dir.parent / f".{self.out_dir.name}.old-{uuid.uuid4().hex[:12]}"
      os.rename(self.out_dir, old)
    os.rename(self._tmp_dir, self.out_dir)
    if old is not None:
      shutil.rmtree(old, ignore_errors=True)

  def abort(self) -> None:
    """Closes the shards and deletes everything written so far."""
    for writer in self._splits.values():
      with contextlib.suppress(Exception):  # already failing: clean up regardless
        writer.close()
    shutil.rmtree(self._tmp_dir, ignore_errors=True)
    self._state = "aborted"


# ----------------------------------------------------------------------------------------------
# Reading.


def read_manifest(out_dir: str | os.PathLike) -> dict[str, Any]:
  """Reads and checks out_dir/manifest.json."""
  path = pathlib.Path(out_dir) / MANIFEST_NAME
  try:
    text = path.read_text()
  except FileNotFoundError:
    raise ManifestError(f"{path}: no manifest; is {out_dir} a dataset written by "
                        "DatasetWriter?") from None
  try:
    manifest = json.loads(text)
  except json.JSONDecodeError as e:
    raise ManifestError(f"{path}: invalid JSON ({e})") from e
  if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
    found = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
    raise ManifestError(f"{path}: format is {found!r}, expected {FORMAT!r}")
  if not isinstance(manifest.get("splits"), dict) or not isinstance(manifest.get("fields"), dict):
    raise ManifestError(f"{path}: 'splits' and 'fields' must be objects")
  return manifest


def split_info(manifest: Mapping[str, Any], split: str, out_dir: Any = "") -> dict[str, Any]:
  """The manifest entry of one split, with a clear error naming the available splits."""
  try:
    return manifest["splits"][split]
  except KeyError:
    raise KeyError(f"{out_dir}: no split {split!r}; available: "
                   f"{sorted(manifest['splits'])}") from None


def shard_paths(out_dir: str | os.PathLike, split: str) -> list[str]:
  """Absolute paths of a split's shards, in shard order."""
  info = split_info(read_manifest(out_dir), split, out_dir)
  root = pathlib.Path(out_dir).absolute()
  return [str(root / shard["file"]) for shard in info["shards"]]


def verify_shards(out_dir: str | os.PathLike, split: str | None = None) -> None:
  """Recomputes every shard's size and sha256 (one split, or all) against the manifest."""
  manifest = read_manifest(out_dir)
  splits = [split] if split is not None else sorted(manifest["splits"])
  root = pathlib.Path(out_dir)
  for name in splits:
    for shard in split_info(manifest, name, out_dir)["shards"]:
      path = root / shard["file"]
      if not path.is_file():
        raise CorruptShardError(f"{path}: shard listed in the manifest is missing")
      size = path.stat().st_size
      if size != shard["num_bytes"]:
        raise CorruptShardError(
            f"{path}: size {size} bytes, manifest says {shard['num_bytes']} (truncated?)")
      if _sha256(path) != shard["sha256"]:
        raise CorruptShardError(f"{path}: sha256 does not match the manifest (corrupted)")


def open_shard(path: str | os.PathLike, expected_records: int,
               options: str = _SEQUENTIAL_READER_OPTIONS):
  """Opens one shard, checking its record count; any failure names the file."""
  try:
    reader = array_record_module.ArrayRecordReader(str(path), options)
  except (RuntimeError, ValueError, OSError) as e:
    raise CorruptShardError(f"{path}: cannot open shard: {e}") from e
  if reader.num_records() != expected_records:
    found = reader.num_records()
    close_quietly(reader)
    raise CorruptShardError(f"{path}: {found} records, manifest says {expected_records} "
                            "(truncated or corrupted)")
  return reader


def decode_record(data: bytes, path: Any, position: int) -> dict[str, np.ndarray]:
  """records.decode, re-raising format errors as CorruptShardError naming the shard."""
  try:
    return records.decode(data)
  except (records.RecordFormatError, ValueError, KeyError, TypeError) as e:
    raise CorruptShardError(f"{path}: record {position} cannot be decoded: {e}") from e


def read_records(out_dir: str | os.PathLike, split: str, *,
                 verify: bool = True) -> Iterator[dict[str, np.ndarray]]:
  """Yields a split's records in the order they were written.

  With `verify` (default) each shard's sha256 is checked first, which also catches corruption
  that the ArrayRecord reader cannot see (bytes in block padding, a truncated final chunk).
  """
  if verify:
    verify_shards(out_dir, split)
  info = split_info(read_manifest(out_dir), split, out_dir)
  paths = [pathlib.Path(out_dir) / shard["file"] for shard in info["shards"]]
  readers = []
  try:
    for path, shard in zip(paths, info["shards"]):
      readers.append(open_shard(path, shard["num_records"]))
    for i in range(info["num_records"]):
      shard, position = i % len(readers), i // len(readers)
      try:
        data = readers[shard].read()
      except (RuntimeError, IndexError, ValueError) as e:
        raise CorruptShardError(f"{paths[shard]}: cannot read record {position}: {e}") from e
      yield decode_record(data, paths[shard], position)
  finally:
    for reader in readers:
      close_quietly(reader)


def close_quietly(reader) -> None:
  """Closes a reader; a reader that hit corruption raises the same error again on close."""
  try:
    reader.close()
  except RuntimeError:
    pass


def load_split_arrays(out_dir: str | os.PathLike, split: str, *,
                      fields: list[str] | None = None,
                      verify: bool = True) -> dict[str, np.ndarray]:
  """Stacks a split's fixed-shape fields into arrays of shape (num_records, *field_shape).

  Meant for small datasets (MNIST, CIFAR) kept resident on the device. `fields=None` takes every
  fixed-shape field; naming a field whose shape varies between records is an error.
  """
  info = split_info(read_manifest(out_dir), split, out_dir)
  specs = info["fields"]
  if fields is None:
    fields = [name for name, spec in specs.items() if None not in spec["shape"]]
  for name in fields:
    if name not in specs:
      raise KeyError(f"{out_dir}: split {split!r} has no field {name!r}; has {sorted(specs)}")
    if None in specs[name]["shape"]:
      raise ValueError(f"{out_dir}: field {name!r} of split {split!r} varies in shape "
                       f"({specs[name]['shape']}); it cannot be stacked")
  n = info["num_records"]
  out = {name: np.empty((n, *specs[name]["shape"]), np.dtype(specs[name]["dtype"]))
         for name in fields}
  for i, record in enumerate(read_records(out_dir, split, verify=verify)):
    for name in fields:
      out[name][i] = record[name]
  return out


def _main(argv: list[str]) -> int:
  args = [a for a in argv[1:] if a != "--debug"]
  if len(args) != 1:
    print(__doc__.strip().splitlines()[-1])
    return 2
  # A missing or broken manifest, a shard whose size or checksum differs: one line naming it.
  return cli.run_main(lambda _: _verify_and_summarise(args[0]), user_errors=(DataFormatError,),
                      debug=cli.debug_requested(argv))


def _verify_and_summarise(out_dir: str) -> int:
  manifest = read_manifest(out_dir)
  verify_shards(out_dir)
  for split, info in manifest["splits"].items():
    print(f"{split}: {info['num_records']} records in {len(info['shards'])} shards")
  for name, spec in manifest["fields"].items():
    print(f"  {name}: {spec['dtype']} {spec['shape']}")
  print("all shards verified")
  return 0


if __name__ == "__main__":
  sys.exit(_main(sys.argv))
