"""Grain input pipelines over the ArrayRecord datasets written by `arrayrecord_io`.

  RecordSource (random access, decoded dicts) -> IndexSampler (per-process shard, global shuffle
  with a seed, repeat) -> named transforms -> Batch(global_batch // process_count) -> DataLoader.

Each process reads only its own shard of the record keys and builds a per-process batch;
`global_batch_from_process_local` then assembles the global `jax.Array`. The iterator state is
plain JSON (`iterator_state_to_json`), so the trainer saves it next to the model with Orbax
(`ocp.args.JsonSave`) and a restart continues with exactly the next batch.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any, SupportsIndex

import grain
import jax
import numpy as np

from dassemble_jax.data import arrayrecord_io as ario


class RecordSource(grain.sources.RandomAccessDataSource):
  """A split of a dataset as a Grain random-access source of decoded record dicts.

  Key `i` is the i-th record added to the split by `DatasetWriter` (shards are round-robin:
  shard `i % n`, position `i // n`), so keys are stable across shard counts. Each shard's record
  count is checked against the manifest on construction; `verify=True` also recomputes the
  sha256 of every shard (a full read: do it once after copying a dataset, not in every process).
  """

  def __init__(self, out_dir: str | os.PathLike, split: str, *, verify: bool = False):
    self._out_dir = pathlib.Path(out_dir).absolute()
    self._split = split
    if verify:
      ario.verify_shards(self._out_dir, split)
    info = ario.split_info(ario.read_manifest(self._out_dir), split, self._out_dir)
    self._paths = ario.shard_paths(self._out_dir, split)
    self._counts = [shard["num_records"] for shard in info["shards"]]
    self._digest = hashlib.sha256(
        "".join(shard["sha256"] for shard in info["shards"]).encode()).hexdigest()[:16]
    self._num_records = info["num_records"]
    if self._num_records == 0:
      raise ValueError(f"{self._out_dir}: split {split!r} has no records")
    for path, count in zip(self._paths, self._counts):
      ario.close_quietly(ario.open_shard(path, count))
    # `path[start:end]` read instructions: the inner source then need not reopen every shard
    # to count its records. Empty shards are left out (they hold no keys).
    self._inner = grain.sources.ArrayRecordDataSource(
        [f"{p}[0:{c}]" for p, c in zip(self._paths, self._counts) if c])
    # First inner key of each shard (empty shards add no keys).
    self._inner_offsets = [0, *itertools.accumulate(self._counts)][:-1]

  def __len__(self) -> int:
    return self._num_records

  def __repr__(self) -> str:
    # Grain stores repr(source) in the iterator state and checks it on restore. Name the data by
    # content (the shards' sha256), not by path, so a run resumes after the dataset moved.
    return (f"RecordSource(split={self._split!r}, num_records={self._num_records}, "
            f"shards_sha256={self._digest})")

  def _locate(self, key: SupportsIndex) -> tuple[int, int, int]:
    """(shard, position in shard, key of the inner source) of write-order key `key`."""
    key = key.__index__()
    if not 0 <= key < self._num_records:
      raise IndexError(f"{self!r}: key {key} outside [0, {self._num_records})")
    shard, position = key % len(self._paths), key // len(self._paths)
    return shard, position, self._inner_offsets[shard] + position

  def __getitem__(self, key: SupportsIndex) -> dict[str, np.ndarray]:
    shard, position, inner_key = self._locate(key)
    try:
      data = self._inner[inner_key]
    except (RuntimeError, ValueError, IndexError) as e:
      raise ario.CorruptShardError(
          f"{self._paths[shard]}: cannot read record {position}: {e}") from e
    return ario.decode_record(data, self._paths[shard], position)

  def __getitems__(self, keys: Sequence[SupportsIndex]) -> list[dict[str, np.ndarray]]:
    located = [self._locate(k) for k in keys]
    try:
      blobs = self._inner.__getitems__([inner for _, _, inner in located])
    except (RuntimeError, ValueError, IndexError):
      return [self[k] for k in keys]  # Slow path, only to name the failing shard.
    return [ario.decode_record(b, self._paths[s], p) for b, (s, p, _) in zip(blobs, located)]


# ----------------------------------------------------------------------------------------------
# Transforms: small, named, each unit-tested. They run on the host, per record, before batching.


class SelectFields(grain.transforms.Map):
  """Keeps only the named fields (drops e.g. case ids the train step does not take)."""

  def __init__(self, names: Sequence[str]):
    self.names = tuple(names)

  def map(self, element: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    missing = [n for n in self.names if n not in element]
    if missing:
      raise KeyError(f"SelectFields: fields {missing} not in record with {sorted(element)}")
    return {n: element[n] for n in self.names}

  def __repr__(self) -> str:
    return f"SelectFields({list(self.names)})"


class CastImage(grain.transforms.Map):
  """uint8 image (0..255) -> float (0..1); other fields pass through unchanged."""

  def __init__(self, dtype: Any = np.float32, field: str = "image"):
    self.dtype = np.dtype(dtype)
    self.field = field

  def map(self, element: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    image = element[self.field]
    if image.dtype != np.uint8:
      raise ValueError(f"CastImage: field {self.field!r} is {image.dtype}, expected uint8")
    out = dict(element)
    out[self.field] = image.astype(self.dtype) * self.dtype.type(1 / 255)
    return out

  def __repr__(self) -> str:
    return f"CastImage({self.dtype.name}, field={self.field!r})"


class RandomFlipHorizontal(grain.transforms.RandomMap):
  """Flips the width axis (axis -2 of HWC / DHWC arrays) of the named fields with probability p.

  The same draw flips every named field, so an image and its mask stay aligned. The rng is
  Grain's per-record generator (seeded by the loader seed and the record's position in the
  sampler order), so the flips do not depend on worker count or on restarts.
  """

  def __init__(self, p: float = 0.5, fields: Sequence[str] = ("image",)):
    if not 0.0 <= p <= 1.0:
      raise ValueError(f"RandomFlipHorizontal: p={p} is not a probability")
    self.p = p
    self.fields = tuple(fields)

  def random_map(self, element: Mapping[str, np.ndarray],
                 rng: np.random.Generator) -> dict[str, np.ndarray]:
    if rng.random() >= self.p:
      return dict(element)
    out = dict(element)
    for name in self.fields:
      if element[name].ndim < 2:
        raise ValueError(f"RandomFlipHorizontal: field {name!r} has shape "
                         f"{element[name].shape}; needs (..., width, channels)")
      out[name] = np.ascontiguousarray(element[name][..., ::-1, :])
    return out

  def __repr__(self) -> str:
    return f"RandomFlipHorizontal(p={self.p}, fields={list(self.fields)})"


# ----------------------------------------------------------------------------------------------
# Loader.


def make_loader(out_dir: str | os.PathLike, split: str, *, global_batch_size: int, seed: int,
                shuffle: bool = True, num_epochs: int | None = None,
                transforms: Sequence[Any] = (), worker_count: int = 0,
                shard_index: int | None = None, shard_count: int | None = None,
                drop_remainder: bool = True, verify: bool = False,
                worker_buffer_size: int = 1, read_threads: int = 4,
                read_buffer_size: int = 16) -> grain.DataLoader:
  """A Grain DataLoader yielding per-process batches (dicts of arrays, leading dim B/processes).

  Sharding: by default this JAX process's share (`ShardByJaxProcess`); pass both `shard_index`
  and `shard_count` to pick a shard explicitly (tests, or a loader per simulated host). Shards
  are disjoint and equal-sized (the last `len % shard_count` keys are dropped). Shuffling is a
  global shuffle of the keys, reshuffled every epoch, determined by `seed`;
  `num_epochs=None` repeats forever.

  Reading: `read_threads` threads per process (per worker) keep up to `read_buffer_size`
  decoded records in flight. Grain's defaults (16 threads, 500 records) suit small records on
  remote disks; with 2-4 cores they were 2x slower here (benchmarks/loader_throughput.py), and
  500 buffered CT volumes would not fit in memory: lower the buffer for large records.
  """
  if (shard_index is None) != (shard_count is None):
    raise ValueError("pass both shard_index and shard_count, or neither (shard by JAX process)")
  if shard_count is None:
    shard_options = grain.sharding.ShardByJaxProcess(drop_remainder=True)
  else:
    shard_options = grain.sharding.ShardOptions(shard_index=shard_index, shard_count=shard_count,
                                                drop_remainder=True)
  processes = shard_options.shard_count
  if global_batch_size <= 0 or global_batch_size % processes:
    raise ValueError(
        f"global_batch_size={global_batch_size} must be a positive multiple of the number of "
        f"data shards (processes) {processes}: each process loads global_batch_size // "
        f"{processes} examples")
  source = RecordSource(out_dir, split, verify=verify)
  per_process = global_batch_size // processes
  if drop_remainder and len(source) // processes < per_process:
    raise ValueError(
        f"{out_dir}: split {split!r} has {len(source)} records, {len(source) // processes} per "
        f"process: fewer than one batch of {per_process} (with drop_remainder=True)")
  sampler = grain.samplers.IndexSampler(
      num_records=len(source), shard_options=shard_options, shuffle=shuffle,
      num_epochs=num_epochs, seed=seed)
  operations = [*transforms, grain.transforms.Batch(per_process, drop_remainder=drop_remainder)]
  return grain.DataLoader(data_source=source, sampler=sampler, operations=operations,
                          worker_count=worker_count, worker_buffer_size=worker_buffer_size,
                          shard_options=shard_options,
                          read_options=grain.ReadOptions(num_threads=read_threads,
                                                         prefetch_buffer_size=read_buffer_size))


def iterator_state_to_json(iterator: grain.DataLoaderIterator) -> dict[str, Any]:
  """The iterator's position as a JSON-serialisable dict (save it with ocp.args.JsonSave)."""
  return json.loads(iterator.get_state().decode())


def restore_iterator_state(iterator: grain.DataLoaderIterator, state: Mapping[str, Any]) -> None:
  """Moves `iterator` to a position saved by `iterator_state_to_json`.

  The loader must be built the same way (dataset path, split, seed, shuffle, epochs, sharding and
  worker_count); Grain checks this and raises ValueError otherwise.
  """
  iterator.set_state(json.dumps(dict(state)).encode())


def global_batch_from_process_local(
    batch: Mapping[str, np.ndarray],
    sharding: jax.sharding.Sharding | Mapping[str, jax.sharding.Sharding],
) -> dict[str, jax.Array]:
  """Per-process batch -> global jax.Arrays (leading dim = global batch) laid out by `sharding`.

  `sharding` is one sharding for every field (usually NamedSharding(mesh, P('data'))) or a dict
  per field.
  """
  out = {}
  for name, value in batch.items():
    s = sharding[name] if isinstance(sharding, Mapping) else sharding
    out[name] = jax.make_array_from_process_local_data(s, np.asarray(value))
  return out
