"""Counterfactual image datasets on disk: sharded ArrayRecord files read by grain.

Layout of a dataset directory (SPEC §5; replaces upstream's one-JPEG-per-image
folder and its broken CSV, §10 item 15):

  metadata.json                              what made it, written first
  data-00000-of-00042.array_record            complete shards only
  ...

Each record is a msgpack map:
  index                    the image's position in the dataset (0..num-1)
  image                    JPEG bytes of x_gen (quality in metadata)
  shape_cls, texture_cls, bg_cls   the three ImageNet labels (int)
  mask                     optional: PNG bytes, uint8 grayscale (mask * 255)
  foreground, background   optional: JPEG bytes

Images are quantised as torchvision's `save_image` does,
uint8 = floor(clip(v * 255 + 0.5, 0, 255)), with v = (x + 1) / 2 (the
default, `normalize='range'`) or upstream's per-image min-max
(`normalize='minmax'`, torchvision `normalize=True`: (x - min) /
max(max - min, 1e-5)), SPEC §10 item 16.

Crash safety and resuming: the dataset has a fixed number of fixed-size
shards (shard i holds images [i * shard_size, min((i + 1) * shard_size, num))).
A shard is written under a temporary name and renamed when closed, so a shard
file either is complete or does not exist. A rerun writes only the missing
shards; provided shard i's content is a pure function of (metadata, i), as
`cgn_jax.counterfactuals.imagenet` guarantees, an interrupted and resumed run
gives the same bytes as an uninterrupted one, with no duplicates or gaps.
`metadata.json` records what made the dataset (CGN weights hash, num, seed,
mode, truncation, ...); resuming with anything different is refused.

Reading: `CounterfactualSource(dir)` is a grain random-access data source
(decoding JPEGs on access, or returning raw bytes with `decode=False` so a
pipeline decodes in its workers). `export_upstream` writes the layout
upstream's `ImagenetCounterfactual` reads: `ims/{name}_x_gen.jpg` and a
`labels.csv` with real rows.
"""

import concurrent.futures
import io
import json
import os
import pathlib
import shutil
from typing import Any, Iterable, Mapping, Sequence

import msgpack
import numpy as np

from cgn_jax import provenance

FORMAT = "cgn_jax.counterfactual_records/v1"
METADATA = "metadata.json"
LABELS = ("shape_cls", "texture_cls", "bg_cls")
EXTRA_IMAGES = ("mask", "foreground", "background")
NORMALIZE = ("range", "minmax")
CSV_HEADER = ",im_name,shape_cls,texture_cls,bg_cls"
_SUFFIX = ".array_record"
_TMP = ".tmp"


class DatasetMismatchError(provenance.ProvenanceMismatch):
  """An existing dataset was made differently from what is asked now."""


# ---------------------------------------------------------- quantisation --


def to_uint8(x, normalize: str = "range"):
  """[-1, 1] float images [..., H, W, C] -> uint8, as torchvision saves them.

  Works on numpy and jax arrays (pass jnp arrays to quantise on device).

  Args:
    x: images, leading batch axes allowed.
    normalize: 'range' ((x + 1) / 2) or 'minmax' (per image: the min and
      max over its H, W, C).
  """
  xp = _xp(x)
  x = x.astype(xp.float32)
  if normalize == "range":
    v = (x + 1.0) / 2.0
  elif normalize == "minmax":
    lo = x.min(axis=(-3, -2, -1), keepdims=True)
    hi = x.max(axis=(-3, -2, -1), keepdims=True)
    v = (x - lo) / xp.maximum(hi - lo, 1e-5)
  else:
    raise ValueError(f"normalize={normalize!r}; use one of {NORMALIZE}")
  return unit_to_uint8(v)


def unit_to_uint8(v):
  """[0, 1] values -> uint8 with torchvision's rounding (masks, images)."""
  xp = _xp(v)
  return xp.floor(xp.clip(v * 255.0 + 0.5, 0.0, 255.0)).astype(xp.uint8)


def _xp(x):
  if isinstance(x, np.ndarray) or np.isscalar(x):
    return np
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  return jnp


# --------------------------------------------------------------- records --


def encode_jpeg(image: np.ndarray, quality: int) -> bytes:
  """uint8 [H, W, 3] -> JPEG bytes (PIL/libjpeg, deterministic)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  buf = io.BytesIO()
  Image.fromarray(np.asarray(image, np.uint8)).save(buf, format="JPEG",
                                                    quality=int(quality))
  return buf.getvalue()


def encode_png(image: np.ndarray) -> bytes:
  """uint8 [H, W] or [H, W, 1|3] -> PNG bytes (lossless)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  image = np.asarray(image, np.uint8)
  if image.ndim == 3 and image.shape[-1] == 1:
    image = image[..., 0]
  buf = io.BytesIO()
  Image.fromarray(image).save(buf, format="PNG")
  return buf.getvalue()


def decode_image(data: bytes) -> np.ndarray:
  """JPEG/PNG bytes -> uint8 [H, W, 3] (or [H, W, 1] for a grayscale PNG)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  with Image.open(io.BytesIO(data)) as im:
    a = np.asarray(im)
  return a[..., None] if a.ndim == 2 else a


def encode_record(index: int, image: np.ndarray, labels: Sequence[int], *,
                  quality: int, extras: Mapping[str, np.ndarray] | None = None
                  ) -> bytes:
  """One record (see the module docstring) from uint8 arrays."""
  rec = {"index": int(index), "image": encode_jpeg(image, quality)}
  rec.update({k: int(v) for k, v in zip(LABELS, labels, strict=True)})
  for k, v in (extras or {}).items():
    if k not in EXTRA_IMAGES:
      raise ValueError(f"unknown extra field {k!r}; use {EXTRA_IMAGES}")
    rec[k] = encode_png(v) if k == "mask" else encode_jpeg(v, quality)
  return msgpack.packb(rec, use_bin_type=True)


def encode_records(first_index: int, images: np.ndarray, labels: np.ndarray,
                   *, quality: int,
                   extras: Mapping[str, np.ndarray] | None = None,
                   pool: concurrent.futures.Executor | None = None
                   ) -> list[bytes]:
  """Records for images [n, H, W, 3] uint8 and labels [n, 3].

  JPEG encoding releases the GIL, so a thread pool encodes in parallel.
  """
  extras = extras or {}

  def one(j):
    return encode_record(first_index + j, images[j], labels[j],
                         quality=quality,
                         extras={k: v[j] for k, v in extras.items()})

  if pool is None:
    return [one(j) for j in range(len(images))]
  return list(pool.map(one, range(len(images))))


def decode_record(raw: bytes, decode: bool = True) -> dict[str, Any]:
  """A record's fields; images decoded to uint8 arrays unless `decode=False`."""
  rec = msgpack.unpackb(raw, raw=False)
  if decode:
    for k in ("image",) + EXTRA_IMAGES:
      if k in rec:
        rec[k] = decode_image(rec[k])
  return rec


# ---------------------------------------------------------------- writing --


def num_shards(num: int, shard_size: int) -> int:
  if num < 1 or shard_size < 1:
    raise ValueError(f"num={num} and shard_size={shard_size} must be >= 1")
  return -(-num // shard_size)


def shard_name(i: int, n: int) -> str:
  return f"data-{i:05d}-of-{n:05d}{_SUFFIX}"


def _write_json_atomic(path: pathlib.Path, obj) -> None:
  tmp = path.with_name(path.name + _TMP)
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=1, sort_keys=True)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


class ShardedWriter:
  """Writes a dataset shard by shard; resumable (see the module docstring).

  Args:
    directory: the dataset directory (created if needed).
    num: number of images.
    shard_size: images per shard (the last shard may be shorter).
    metadata: JSON-able description of what makes the content (weights
      hash, seed, mode, ...). An existing dataset with different metadata,
      num or shard_size raises DatasetMismatchError unless `overwrite`.
    fields: the record fields beyond image and labels (EXTRA_IMAGES subset).
    overwrite: delete an existing dataset in `directory` first.
  """

  def __init__(self, directory, *, num: int, shard_size: int,
               metadata: Mapping[str, Any], fields: Sequence[str] = (),
               overwrite: bool = False):
    self.directory = pathlib.Path(directory)
    bad = sorted(set(fields) - set(EXTRA_IMAGES))
    if bad:
      raise ValueError(f"unknown fields {bad}; choose from {EXTRA_IMAGES}")
    self.num, self.shard_size = int(num), int(shard_size)
    self.num_shards = num_shards(self.num, self.shard_size)
    self.header = {"format": FORMAT, "num": self.num,
                   "shard_size": self.shard_size,
                   "num_shards": self.num_shards,
                   "fields": ["image", *LABELS, *sorted(fields)],
                   "metadata": json.loads(json.dumps(dict(metadata)))}
    meta_path = self.directory / METADATA
    if overwrite and self.directory.exists():
      shutil.rmtree(self.directory)
    if meta_path.is_file():
      with open(meta_path) as f:
        old = json.load(f)
      diff = provenance.differences(old, self.header)
      if diff:
        raise DatasetMismatchError(
            f"{self.directory} already holds a dataset made differently:\n  "
            + "\n  ".join(diff) + "\nuse another directory, or overwrite it "
            "(--config.overwrite=True) to start again")
    elif self.directory.exists() and any(self.directory.iterdir()):
      raise FileExistsError(
          f"{self.directory} is not empty and has no {METADATA}; choose an "
          "empty or new directory")
    else:
      self.directory.mkdir(parents=True, exist_ok=True)
      _write_json_atomic(meta_path, self.header)
    for stale in self.directory.glob(f"*{_TMP}*"):
      stale.unlink()  # left by a killed run; its shard is redone

  def shard_range(self, i: int) -> tuple[int, int]:
    """[start, stop) image indices of shard i."""
    start = i * self.shard_size
    return start, min(start + self.shard_size, self.num)

  def shard_path(self, i: int) -> pathlib.Path:
    return self.directory / shard_name(i, self.num_shards)

  def missing_shards(self) -> list[int]:
    return [i for i in range(self.num_shards)
            if not self.shard_path(i).is_file()]

  def is_complete(self) -> bool:
    return not self.missing_shards()

  def write_shard(self, i: int, records: Sequence[bytes]) -> pathlib.Path:
    """Writes shard i (all its records) atomically."""
    from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top
    start, stop = self.shard_range(i)
    if len(records) != stop - start:
      raise ValueError(f"shard {i} needs {stop - start} records, got "
                       f"{len(records)}")
    path = self.shard_path(i)
    tmp = path.with_name(f"{path.name}{_TMP}-{os.getpid()}")
    writer = array_record_module.ArrayRecordWriter(str(tmp), "group_size:1")
    try:
      for r in records:
        writer.write(r)
    finally:
      writer.close()
    os.replace(tmp, path)
    return path


# ---------------------------------------------------------------- reading --


def read_metadata(directory) -> dict:
  """The dataset's `metadata.json` (format, num, shard_size, metadata)."""
  path = pathlib.Path(directory) / METADATA
  if not path.is_file():
    raise FileNotFoundError(
        f"{directory} is not a counterfactual dataset (no {METADATA}); "
        "generate one with `python generate.py --config=configs/"
        "counterfactuals_imagenet.py --workdir=DIR --config.cgn=WEIGHTS`")
  with open(path) as f:
    header = json.load(f)
  if header.get("format") != FORMAT:
    raise ValueError(f"{path}: format {header.get('format')!r}, expected "
                     f"{FORMAT!r}")
  return header


def shard_paths(directory, header: Mapping | None = None
                ) -> list[pathlib.Path]:
  """All shard files, in order; raises if the dataset is incomplete."""
  directory = pathlib.Path(directory)
  header = header or read_metadata(directory)
  n = header["num_shards"]
  paths = [directory / shard_name(i, n) for i in range(n)]
  missing = [p.name for p in paths if not p.is_file()]
  if missing:
    raise FileNotFoundError(
        f"{directory} is incomplete: {len(missing)} of {n} shards missing "
        f"({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}); "
        "rerun the same generate.py command to finish it")
  return paths


class CounterfactualSource:
  """grain random-access source over a complete dataset directory.

  Records are dicts (see the module docstring) with images decoded to uint8
  [H, W, 3] (mask [H, W, 1]) unless `decode=False`.
  """

  def __init__(self, directory, *, decode: bool = True):
    import grain  # pylint: disable=g-import-not-at-top
    self.directory = pathlib.Path(directory)
    self.header = read_metadata(directory)
    self.decode = decode
    self._source = grain.sources.ArrayRecordDataSource(
        [str(p) for p in shard_paths(directory, self.header)])
    if len(self._source) != self.header["num"]:
      raise ValueError(f"{directory}: shards hold {len(self._source)} "
                       f"records, metadata says {self.header['num']}")

  @property
  def metadata(self) -> dict:
    return self.header["metadata"]

  def __len__(self) -> int:
    return len(self._source)

  def __repr__(self) -> str:
    return f"CounterfactualSource({str(self.directory)!r}, n={len(self)})"

  def __getitem__(self, i) -> dict:
    return decode_record(self._source[int(i)], self.decode)

  def __getitems__(self, indices) -> list[dict]:
    return [decode_record(r, self.decode)
            for r in self._source.__getitems__([int(i) for i in indices])]

  def labels(self) -> np.ndarray:
    """[num, 3] int32 (shape, texture, background) of every record."""
    out = np.empty((len(self), 3), np.int32)
    for i, rec in enumerate(self._iter_raw()):
      out[i] = [rec[k] for k in LABELS]
    return out

  def _iter_raw(self, chunk: int = 1024) -> Iterable[dict]:
    for s in range(0, len(self), chunk):
      for r in self._source.__getitems__(list(range(s, min(s + chunk,
                                                           len(self))))):
        yield decode_record(r, decode=False)


def map_dataset(directory, *, decode: bool = True):
  """`grain.MapDataset` over a dataset directory (shuffle/map/batch it)."""
  import grain  # pylint: disable=g-import-not-at-top
  return grain.MapDataset.source(CounterfactualSource(directory,
                                                      decode=decode))


# ----------------------------------------------------------------- export --


def export_upstream(directory, out_dir, *, run_name: str | None = None,
                    fields: Sequence[str] = ()) -> pathlib.Path:
  """Writes upstream's layout: `ims/{im_name}_x_gen.jpg` + `labels.csv`.

  The JPEG bytes are copied, not re-encoded. `labels.csv` has a real row per
  image, `i,{run_name}_{i:07d},shape,texture,bg` under the header
  `,im_name,shape_cls,texture_cls,bg_cls` (upstream's header; its reader
  uses `index_col=0`, so the first column is the row index). Upstream's
  `ImagenetCounterfactual(cf_path)` globs `cf_path/train*` and
  `cf_path/val*`: name `out_dir` accordingly (e.g. CF_PATH/train_run0) and
  pass `mode='x_gen'` (its default 'silhouette' is a bug, SPEC §10 item 11).

  Args:
    directory: a complete dataset.
    out_dir: destination (created; existing files are overwritten).
    run_name: image name prefix (default: the dataset directory's name).
    fields: also export these stored extras as `{im_name}_{field}.jpg`
      (foreground, background) or `.png` (mask).

  Returns:
    out_dir.
  """
  src = CounterfactualSource(directory, decode=False)
  stored = set(src.header["fields"])
  missing = sorted(set(fields) - stored)
  if missing:
    raise ValueError(f"{directory} does not store {missing}; it has "
                     f"{sorted(stored)}")
  run_name = run_name or pathlib.Path(directory).resolve().name
  out_dir = pathlib.Path(out_dir)
  ims = out_dir / "ims"
  ims.mkdir(parents=True, exist_ok=True)
  rows = [CSV_HEADER]
  for rec in src._iter_raw():  # pylint: disable=protected-access
    i = rec["index"]
    name = f"{run_name}_{i:07d}"
    (ims / f"{name}_x_gen.jpg").write_bytes(rec["image"])
    for field in fields:
      ext = "png" if field == "mask" else "jpg"
      (ims / f"{name}_{field}.{ext}").write_bytes(rec[field])
    rows.append(f"{i},{name},{rec['shape_cls']},{rec['texture_cls']},"
                f"{rec['bg_cls']}")
  csv = out_dir / "labels.csv"
  tmp = csv.with_name(csv.name + _TMP)
  tmp.write_text("\n".join(rows) + "\n")
  os.replace(tmp, csv)
  return out_dir
