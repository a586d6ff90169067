"""Shard datasets: how counterfactual and real MNIST sets are stored.

A dataset is a directory with `index.json` and fixed-size `.npy` shards per
field, e.g. `image-00003.npy` (uint8 [n, 32, 32, 3]) and `label-00003.npy`
(int32 [n]). Images are quantised from [-1, 1] as
q = round((x + 1) * 127.5) (clipped to 0..255) and read back as
x = q / 127.5 - 1 (`dequantize`), an error of at most 1/255. Shards are read
through `np.load(mmap_mode='r')`, so training streams a 1e6-image set
(3 GB) without loading it. A directory is written under a temporary name and
renamed when complete, so a crash never leaves a readable half-written
dataset. The index's `metadata` holds what made the set (e.g. generate.py's
provenance).

Writer: `ShardWriter` (or `write_arrays`); readers: `ShardedSource` (a grain
random-access source with a batched `gather`) and `ConcatSource`.
"""

import json
import os
import pathlib
import shutil
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

FORMAT = "cgn_jax.shards/v1"
INDEX = "index.json"
IMAGE_ENCODING = "uint8: q = round((x + 1) * 127.5), x = q / 127.5 - 1"


# ------------------------------------------------------------ quantisation --


def quantize(x):
  """[-1, 1] float images -> uint8 (works on numpy and jax arrays)."""
  xp = jnp if isinstance(x, jax.Array) else np
  return xp.clip(xp.round((x + 1.0) * 127.5), 0, 255).astype(xp.uint8)


def dequantize(q):
  """uint8 images -> float32 in [-1, 1] (numpy or jax)."""
  xp = jnp if isinstance(q, jax.Array) else np
  return q.astype(xp.float32) / 127.5 - 1.0


# ---------------------------------------------------------------- storage --


class ShardWriter:
  """Writes fixed-size `.npy` shards and an index, atomically.

  Usage: `with ShardWriter(dir, shard_size) as w: w.write(batch)`; `batch` is
  a dict of arrays sharing the leading axis. On a clean exit the temporary
  directory is renamed to `dir`; on an exception it is deleted.
  """

  def __init__(self, directory, shard_size: int = 50_000,
               metadata: Mapping[str, Any] | None = None,
               overwrite: bool = False):
    self.directory = pathlib.Path(directory)
    if self.directory.exists() and not overwrite:
      raise FileExistsError(
          f"{self.directory} already exists; delete it or pass overwrite")
    self.shard_size = int(shard_size)
    self.metadata = dict(metadata or {})
    self.overwrite = overwrite
    self._tmp = self.directory.with_name(self.directory.name + ".tmp")
    self._buffers = None
    self._fill = 0
    self._shards = []
    self._fields = {}
    self.num = 0

  def __enter__(self):
    if self._tmp.exists():
      shutil.rmtree(self._tmp)
    self._tmp.mkdir(parents=True)
    return self

  def __exit__(self, exc_type, exc, tb):
    if exc_type is not None:
      shutil.rmtree(self._tmp, ignore_errors=True)
      return False
    self.close()
    return False

  def write(self, batch: Mapping[str, np.ndarray]) -> None:
    """Appends a batch (dict of arrays with the same leading size)."""
    batch = {k: np.asarray(v) for k, v in batch.items()}
    n = {len(v) for v in batch.values()}
    if len(n) != 1:
      raise ValueError(f"fields have different lengths: "
                       f"{ {k: len(v) for k, v in batch.items()} }")
    n = n.pop()
    if self._buffers is None:
      self._fields = {k: {"dtype": v.dtype.str, "shape": list(v.shape[1:])}
                      for k, v in batch.items()}
      self._buffers = {k: np.empty((self.shard_size,) + v.shape[1:], v.dtype)
                       for k, v in batch.items()}
    elif set(batch) != set(self._buffers):
      raise ValueError(f"fields {sorted(batch)} differ from the first "
                       f"batch's {sorted(self._buffers)}")
    start = 0
    while start < n:
      take = min(n - start, self.shard_size - self._fill)
      for k, v in batch.items():
        self._buffers[k][self._fill:self._fill + take] = v[start:start + take]
      self._fill += take
      start += take
      if self._fill == self.shard_size:
        self._flush()

  def _flush(self) -> None:
    if not self._fill:
      return
    i = len(self._shards)
    files = {}
    for k, buf in self._buffers.items():
      name = f"{k}-{i:05d}.npy"
      np.save(self._tmp / name, buf[:self._fill])
      files[k] = name
    self._shards.append({"num": self._fill, "files": files})
    self.num += self._fill
    self._fill = 0

  def close(self) -> None:
    """Flushes the last shard, writes the index and renames into place."""
    self._flush()
    index = {"format": FORMAT, "num": self.num, "shard_size": self.shard_size,
             "fields": self._fields, "shards": self._shards,
             "image_encoding": IMAGE_ENCODING, "metadata": self.metadata}
    with open(self._tmp / INDEX, "w") as f:
      json.dump(index, f, indent=1, sort_keys=True)
    if self.directory.exists():  # overwrite=True (checked in __init__)
      old = self.directory.with_name(self.directory.name + ".old")
      shutil.rmtree(old, ignore_errors=True)
      os.replace(self.directory, old)
      os.replace(self._tmp, self.directory)
      shutil.rmtree(old)
    else:
      os.replace(self._tmp, self.directory)


def is_complete(directory) -> bool:
  """Whether `directory` holds a finished shard dataset."""
  return (pathlib.Path(directory) / INDEX).is_file()


def read_index(directory) -> dict:
  """The `index.json` of a shard dataset, with a clear error if absent."""
  path = pathlib.Path(directory) / INDEX
  if not path.is_file():
    raise FileNotFoundError(
        f"{directory} is not a dataset written by generate.py (no {INDEX}); "
        "run `python generate.py --config=configs/counterfactuals_mnist.py:"
        "VARIANT --workdir=DIR --config.cgn=CKPT` and pass DIR")
  with open(path) as f:
    index = json.load(f)
  if index.get("format") != FORMAT:
    raise ValueError(f"{path}: unknown format {index.get('format')!r}, "
                     f"expected {FORMAT!r}")
  return index


class ShardedSource:
  """Random access to a shard dataset (a grain `RandomAccessDataSource`).

  Shards are memory-mapped lazily; nothing is read until indexed. Records are
  dicts of numpy values; `gather(indices)` returns a whole batch at once
  (the fast path for training: one fancy-index read per shard touched).

  Args:
    directory: a dataset written by `ShardWriter`.
    fields: the fields to read (default: all).
  """

  def __init__(self, directory, fields: Sequence[str] | None = None):
    self.directory = pathlib.Path(directory)
    self.index = read_index(directory)
    self.fields = tuple(fields or self.index["fields"])
    missing = sorted(set(self.fields) - set(self.index["fields"]))
    if missing:
      raise KeyError(f"{directory} has no field(s) {missing}; it has "
                     f"{sorted(self.index['fields'])}")
    sizes = [s["num"] for s in self.index["shards"]]
    self._starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    self._maps = {}

  @property
  def metadata(self) -> dict:
    return self.index["metadata"]

  def __len__(self) -> int:
    return int(self.index["num"])

  def __repr__(self) -> str:
    return f"ShardedSource({str(self.directory)!r}, n={len(self)})"

  def _array(self, shard: int, field: str) -> np.ndarray:
    key = (shard, field)
    if key not in self._maps:
      name = self.index["shards"][shard]["files"][field]
      self._maps[key] = np.load(self.directory / name, mmap_mode="r")
    return self._maps[key]

  def _locate(self, indices: np.ndarray):
    indices = np.asarray(indices, np.int64)
    if indices.size and (indices.min() < 0 or indices.max() >= len(self)):
      raise IndexError(f"index out of range for {len(self)} records")
    shard = np.searchsorted(self._starts, indices, side="right") - 1
    return shard, indices - self._starts[shard]

  def gather(self, indices) -> dict[str, np.ndarray]:
    """A batch {field: array [len(indices), ...]} in the order of indices."""
    indices = np.asarray(indices, np.int64).reshape(-1)
    shard, offset = self._locate(indices)
    out = {}
    for field in self.fields:
      spec = self.index["fields"][field]
      arr = np.empty((len(indices),) + tuple(spec["shape"]),
                     np.dtype(spec["dtype"]))
      for s in np.unique(shard):
        sel = shard == s
        arr[sel] = self._array(int(s), field)[offset[sel]]
      out[field] = arr
    return out

  def __getitem__(self, i) -> dict[str, np.ndarray]:
    return {k: v[0] for k, v in self.gather([int(i)]).items()}

  def __getitems__(self, indices) -> list[dict[str, np.ndarray]]:
    batch = self.gather(indices)
    return [{k: v[j] for k, v in batch.items()} for j in range(len(indices))]


class ConcatSource:
  """Several sources back to back (e.g. counterfactual + real images)."""

  def __init__(self, sources: Sequence[Any]):
    if not sources:
      raise ValueError("ConcatSource needs at least one source")
    self.sources = list(sources)
    self._starts = np.cumsum([0] + [len(s) for s in sources]).astype(np.int64)

  def __len__(self) -> int:
    return int(self._starts[-1])

  def gather(self, indices) -> dict[str, np.ndarray]:
    indices = np.asarray(indices, np.int64).reshape(-1)
    which = np.searchsorted(self._starts, indices, side="right") - 1
    parts = {}
    for s in np.unique(which):
      sel = np.nonzero(which == s)[0]
      parts[int(s)] = (sel, self.sources[s].gather(indices[sel]
                                                   - self._starts[s]))
    fields = set.intersection(*(set(p[1]) for p in parts.values()))
    out = {}
    for field in sorted(fields):
      first = next(iter(parts.values()))[1][field]
      arr = np.empty((len(indices),) + first.shape[1:], first.dtype)
      for sel, batch in parts.values():
        arr[sel] = batch[field]
      out[field] = arr
    return out

  def __getitem__(self, i):
    return {k: v[0] for k, v in self.gather([int(i)]).items()}


def write_arrays(directory, arrays: Mapping[str, np.ndarray], *,
                 shard_size: int = 50_000, batch: int = 10_000,
                 metadata: Mapping[str, Any] | None = None,
                 overwrite: bool = False) -> pathlib.Path:
  """Writes in-memory arrays (images already uint8) as a shard dataset."""
  n = len(next(iter(arrays.values())))
  with ShardWriter(directory, shard_size, metadata, overwrite) as w:
    for i in range(0, n, batch):
      w.write({k: v[i:i + batch] for k, v in arrays.items()})
  return pathlib.Path(directory)
