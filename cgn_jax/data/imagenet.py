"""ImageNet, IN-9 and the counterfactual sets as grain input pipelines.

Sources (random access, each record holds encoded image bytes and labels;
decoding happens in the pipeline's workers):

* `image_folder(root)`: any ImageFolder layout (`<root>/<class>/*.JPEG`):
  ImageNet-mini, Kaggle's "imagenetmini-1000", the full set unpacked, IN-9.
  When every folder name is an ImageNet wnid the class index is the
  `imagenet_class_index.json` order (torchvision's, and that of upstream's
  sorted folders of the full set); a subset of the 1000 classes therefore
  keeps the 1000-way indices. Other names are indexed in sorted order, as
  torchvision's `ImageFolder`.
* `tfds_source(split)`: a prepared TFDS `imagenet2012` read through
  `tfds.data_source` (ArrayRecord) without TensorFlow; see its docstring for
  preparing.
* `counterfactual_source(root, split)`: the counterfactual datasets of the
  CGN (three labels per image): the project's records (`cgn_jax.data.
  records`, written by generate.py) or upstream's layout
  (`train*/labels.csv`, `train*/ims/{im_name}_x_gen.jpg`).

Pipelines (grain `MapDataset`s; `batches()` turns one into an iterator with
`worker_count` decoding processes):

* `eval_dataset`: Resize 256 → CenterCrop 224 (or IN-9's ToTensor only),
  every image once, the last batch padded and flagged by `mask`;
* `mixed_epoch`: one training epoch, RandomResizedCrop + flip, each step b
  real and `int(cf_ratio · b)` counterfactual images, the counterfactual pool
  resampled per epoch as upstream (SPEC §6.2).

Batches are dicts of numpy arrays, `image` float32 [b, 224, 224, 3]
normalised (ImageNet or IN-9 statistics), labels int32. Sharding: a global
batch of b rows is cut into `shard_count` equal slices and shard i decodes
only rows [i·b/n, (i+1)·b/n) of every global batch, so all processes walk the
same global order (multi-host training passes jax.process_index/count;
`process_batches` does it for evaluation and gathers the labels).

Randomness: the epoch order and the counterfactual draw come from
`np.random.default_rng((seed, epoch, ...))`, each image's augmentation from
`default_rng((seed, epoch, position))`, so batches are identical for any
worker count and sharding.

Deviation from upstream: training epochs drop the last partial real batch
(static shapes under jit), so an epoch has `len(real) // b` steps where
PyTorch's loader would run one more, smaller step.
"""

import csv
import dataclasses
import functools
import json
import math
import os
import pathlib
from typing import Any, Sequence

import grain
import numpy as np

from cgn_jax import paths
from cgn_jax.data import transforms

# torchvision's IMG_EXTENSIONS (ImageFolder), compared lower-cased.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif",
                    ".tiff", ".webp")
NUM_CLASSES = 1000

IMAGENET_HELP = (
    "ImageNet is not distributed with this project: register at "
    "https://image-net.org/download-images, then either unpack train/ and "
    "val/ into one folder per class (`<root>/<wnid>/*.JPEG`; the val images "
    "sorted into wnid folders, e.g. with the valprep.sh script of "
    "pytorch/examples) or use a subset of that layout such as Kaggle's "
    "'imagenetmini-1000'.")


class DataError(FileNotFoundError):
  """A dataset folder or file is missing or unusable; says where to get it."""


# ------------------------------------------------------------- class index --


@functools.lru_cache(maxsize=None)
def imagenet_wnids() -> tuple[str, ...]:
  """The 1000 wnids in class-index order.

  From `<shared>/data/imagenet_meta/imagenet_class_index.json` when present,
  else TFDS's `imagenet2012/labels.txt` (the same order: sorted wnids).
  """
  meta = paths.shared_dir() / "data" / "imagenet_meta"
  path = meta / "imagenet_class_index.json"
  if path.is_file():
    index = json.loads(path.read_text())
    return tuple(index[str(i)][0] for i in range(NUM_CLASSES))
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  labels = pathlib.Path(tfds.__file__).parent / "datasets" / "imagenet2012"
  wnids = tuple((labels / "labels.txt").read_text().split())
  if len(wnids) != NUM_CLASSES:
    raise DataError(f"expected 1000 wnids in {labels / 'labels.txt'}")
  return wnids


# ----------------------------------------------------------------- sources --


@dataclasses.dataclass(frozen=True)
class FileSource:
  """Image files with integer labels; records are {'encoded', *label keys}.

  Attributes:
    paths: one file per record.
    labels: {key: int32 [N]} ('label' for classification; 'shape_label',
      'texture_label', 'bg_label' for counterfactuals).
    classes: the class names in index order (folder sources), else ().
  """
  paths: tuple[str, ...]
  labels: dict
  classes: tuple[str, ...] = ()

  def __len__(self):
    return len(self.paths)

  def __getitem__(self, i):
    with open(self.paths[i], "rb") as f:
      out = {"encoded": f.read()}
    out.update({k: int(v[i]) for k, v in self.labels.items()})
    return out


def _class_index(names: Sequence[str]) -> dict[str, int]:
  wnids = imagenet_wnids()
  if names and all(n in wnids for n in names):
    where = {w: i for i, w in enumerate(wnids)}
    return {n: where[n] for n in names}
  return {n: i for i, n in enumerate(sorted(names))}


def image_folder(root: os.PathLike | str, *, what: str = "ImageNet",
                 help_text: str = IMAGENET_HELP) -> FileSource:
  """An ImageFolder tree `<root>/<class>/<image>` as a source.

  Args:
    root: the split folder (e.g. `imagenet/train`).
    what: the dataset's name for error messages.
    help_text: where to get the data, for error messages.

  Returns:
    A FileSource with 'label' (see the module docstring for the index) and
    `classes` = the 1000 wnids (wnid folders) or the sorted folder names.

  Raises:
    DataError: the folder is missing or holds no class folder with images.
  """
  root = pathlib.Path(root).expanduser()
  if not root.is_dir():
    raise DataError(f"{what} folder {root} does not exist. {help_text}")
  names = sorted(d.name for d in root.iterdir() if d.is_dir())
  index = _class_index(names)
  files, labels = [], []
  for name in names:
    ims = sorted(str(p) for p in (root / name).iterdir()
                 if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    files += ims
    labels += [index[name]] * len(ims)
  if not files:
    raise DataError(f"{what} folder {root} has no class folders with images "
                    f"({', '.join(IMAGE_EXTENSIONS)}). {help_text}")
  classes = (imagenet_wnids() if set(names) <= set(imagenet_wnids())
             else tuple(names))
  return FileSource(tuple(files), {"label": np.asarray(labels, np.int32)},
                    classes)


def imagenet_split(root: os.PathLike | str, split: str) -> FileSource:
  """`<root>/<split>` of an ImageFolder ImageNet ('train' or 'val')."""
  return image_folder(pathlib.Path(root).expanduser() / split,
                      what=f"ImageNet {split}")


class TfdsSource:
  """A prepared TFDS ImageNet split; records are {'encoded', 'label'}.

  Reads ArrayRecord files through `tfds.data_source`, which needs no
  TensorFlow; the JPEG bytes are decoded by the pipeline (PIL) like every
  other source. The labels of `imagenet2012` and of this project's
  TF-free `cgn_imagenet2012` (`cgn_jax.data.imagenet_tfds`) index the sorted
  wnids, the order of `imagenet_class_index.json`.
  """

  def __init__(self, split: str, data_dir: os.PathLike | str | None = None,
               name: str | None = None):
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    # pylint: disable-next=g-import-not-at-top
    from cgn_jax.data import imagenet_tfds
    data_dir = data_dir or os.environ.get("CGN_TFDS_DIR")
    errors = []
    for n in ([name] if name else ["imagenet2012", imagenet_tfds.NAME]):
      try:
        self._source = tfds.data_source(
            n, split=split, data_dir=data_dir, download=False,
            decoders={"image": tfds.decode.SkipDecoding()})
        self.name = n
        break
      except Exception as e:  # TFDS raises several types for "not there"
        errors.append(f"{n}: {type(e).__name__}: {e}")
    else:
      raise DataError(
          f"no prepared TFDS ImageNet (split {split!r}, ArrayRecord) in "
          f"data_dir {data_dir or '(TFDS default)'} ({'; '.join(errors)}). "
          "TFDS's stock imagenet2012 builder needs TensorFlow to prepare "
          "(it reads the manual_dir with tf.io.gfile and re-encodes CMYK "
          "JPEGs with tf.image); without TensorFlow prepare this project's "
          "equivalent from the two ILSVRC2012 tar files: "
          "`cgn_jax.data.imagenet_tfds.prepare(MANUAL_DIR, DATA_DIR)`; or "
          "prepare imagenet2012 on a machine with TensorFlow (`tfds build "
          "imagenet2012 --manual_dir=DIR --file_format=array_record`); or "
          f"use the ImageFolder layout. {IMAGENET_HELP}")
    self.classes = imagenet_wnids()

  def __len__(self):
    return len(self._source)

  def __getitem__(self, i):
    ex = self._source[i]
    image = ex["image"]
    if isinstance(image, np.ndarray) and image.ndim == 3:  # decoded pixels
      return {"array": image, "label": int(ex["label"])}
    return {"encoded": bytes(image), "label": int(ex["label"])}


def tfds_source(split: str, data_dir: os.PathLike | str | None = None,
                name: str | None = None) -> TfdsSource:
  """A prepared TFDS ImageNet split ('train' or 'validation').

  Args:
    split: TFDS split name.
    data_dir: TFDS data dir (default CGN_TFDS_DIR, else TFDS's default).
    name: 'imagenet2012' or 'cgn_imagenet2012'; None tries both.

  Raises:
    DataError: no such dataset is prepared (ArrayRecord) in `data_dir`.
  """
  return TfdsSource(split, data_dir, name)


CF_HELP = (
    "Generate a counterfactual dataset with the ImageNet CGN (`python "
    "generate.py --config=configs/counterfactuals_imagenet.py ...`), or point "
    "at a folder generated by upstream's imagenet/generate_data.py (subfolders "
    "train*/ and val*/ holding labels.csv and ims/).")
CF_LABELS = ("shape_label", "texture_label", "bg_label")


def _read_upstream_csv(path: pathlib.Path) -> list[dict]:
  """Rows of an upstream labels.csv (with or without its index column)."""
  with open(path, newline="") as f:
    rows = list(csv.reader(f))
  if not rows:
    raise DataError(f"{path} is empty. {CF_HELP}")
  header = rows[0]
  need = ("im_name", "shape_cls", "texture_cls", "bg_cls")
  if not set(need) <= set(header):
    raise DataError(f"{path}: header {header} lacks the columns {need}. "
                    f"{CF_HELP}")
  col = {k: header.index(k) for k in need}
  return [{k: r[col[k]] for k in need} for r in rows[1:] if r]


def counterfactual_source(root: os.PathLike | str, split: str = "train",
                          mode: str = "x_gen") -> Any:
  """A counterfactual dataset split with its three labels.

  Args:
    root: the dataset folder. Every subfolder whose name starts with `split`
      ('train' or 'val', as upstream's glob) is read and they are
      concatenated in name order; each is either this project's records
      (`cgn_jax.data.records`: metadata.json + ArrayRecord shards, written
      by generate.py) or upstream's layout (`labels.csv` with im_name,
      shape_cls, texture_cls, bg_cls and `ims/{im_name}_{mode}.jpg`). A
      records dataset given directly as `root` serves as the 'train' split.
    split: 'train' or 'val'.
    mode: the image suffix of upstream's layout ('x_gen', the composite).

  Returns:
    A random-access source of {'encoded', 'shape_label', 'texture_label',
    'bg_label'} records.

  Raises:
    DataError: the folder, a split, a labels.csv or an image is missing.
  """
  root = pathlib.Path(root).expanduser()
  if not root.is_dir():
    raise DataError(f"counterfactual dataset {root} does not exist. {CF_HELP}")
  if _is_records(root):
    if split != "train":
      raise DataError(
          f"{root} is a single counterfactual dataset (used for training); "
          f"for a {split} split put datasets in {root.parent}/train/ and "
          f"{root.parent}/{split}/ and pass {root.parent}. {CF_HELP}")
    return _records_split(root)
  subs = sorted(d for d in root.iterdir()
                if d.is_dir() and d.name.startswith(split))
  parts = [_records_split(d) if _is_records(d) else _upstream_split(d, mode)
           for d in subs]
  if not parts:
    raise DataError(f"counterfactual dataset {root} has no {split}* "
                    f"subfolders (records or labels.csv). {CF_HELP}")
  return parts[0] if len(parts) == 1 else ConcatSource(parts)


def _upstream_split(sub: pathlib.Path, mode: str) -> FileSource:
  csv_path = sub / "labels.csv"
  if not csv_path.is_file():
    raise DataError(f"{csv_path} is missing. {CF_HELP}")
  files, labels = [], []
  for row in _read_upstream_csv(csv_path):
    files.append(str(sub / "ims" / f"{row['im_name']}_{mode}.jpg"))
    labels.append([int(float(row[k])) for k in
                   ("shape_cls", "texture_cls", "bg_cls")])
  if files and not os.path.isfile(files[0]):
    raise DataError(f"{files[0]} (listed in labels.csv) is missing. "
                    f"{CF_HELP}")
  labels = np.asarray(labels, np.int32).reshape(-1, 3)
  return FileSource(tuple(files), {k: labels[:, j]
                                   for j, k in enumerate(CF_LABELS)})


def _is_records(path: pathlib.Path) -> bool:
  from cgn_jax.data import records  # pylint: disable=g-import-not-at-top
  return (path / records.METADATA).is_file()


def _records_split(path: pathlib.Path) -> "RecordsSource":
  from cgn_jax.data import records  # pylint: disable=g-import-not-at-top
  try:
    return RecordsSource(records.CounterfactualSource(path, decode=False))
  except (FileNotFoundError, ValueError) as e:
    raise DataError(f"{e}. {CF_HELP}") from e


class RecordsSource:
  """The project's counterfactual records as this module's records."""

  def __init__(self, source):
    self.source = source  # records.CounterfactualSource(decode=False)

  def __len__(self):
    return len(self.source)

  def __getitem__(self, i):
    r = self.source[i]
    return {"encoded": r["image"], "shape_label": int(r["shape_cls"]),
            "texture_label": int(r["texture_cls"]),
            "bg_label": int(r["bg_cls"])}


class ConcatSource:
  """Several sources one after the other."""

  def __init__(self, sources: Sequence):
    self.sources = list(sources)
    self.offsets = np.cumsum([0] + [len(s) for s in self.sources])

  def __len__(self):
    return int(self.offsets[-1])

  def __getitem__(self, i):
    i = int(i)
    if not 0 <= i < len(self):
      raise IndexError(i)
    k = int(np.searchsorted(self.offsets, i, side="right")) - 1
    return self.sources[k][i - int(self.offsets[k])]


# ------------------------------------------------------------ per-image ops --


def decode(record: dict):
  """The PIL RGB image of a record ('encoded' bytes or a decoded 'array')."""
  if "array" in record:
    from PIL import Image  # pylint: disable=g-import-not-at-top
    return Image.fromarray(np.asarray(record["array"], np.uint8)).convert("RGB")
  return transforms.load_rgb(record["encoded"])


def in9_image(img, size: int = transforms.CROP) -> np.ndarray:
  """IN-9's preprocessing: none (ToTensor only); the images are 224 squares."""
  if img.size != (size, size):
    raise ValueError(f"IN-9 images are {size}x{size}; got {img.size}. Use the "
                     "backgrounds challenge release unchanged.")
  return np.asarray(img)


EVAL_TRANSFORMS = {
    "imagenet": (transforms.eval_image, transforms.IMAGENET_MEAN,
                 transforms.IMAGENET_STD),
    "in9": (in9_image, transforms.IN9_MEAN, transforms.IN9_STD),
}


def _labels_of(record: dict) -> dict:
  return {k: v for k, v in record.items() if k.endswith("label")}


class ExampleSource:
  """Per-example access for trainers that batch themselves.

  `get(index, rng)` returns {'image': float32 [size, size, 3] normalised
  with ImageNet statistics, labels}: the training augmentation
  (RandomResizedCrop + flip, drawn from `rng`) when rng is given, else the
  evaluation transform. `rename` maps record label keys to the trainer's
  (e.g. {'shape_label': 'shape'}). The grain pipelines above are the fast
  path; this is the same transforms one image at a time.
  """

  def __init__(self, source, rename: dict | None = None,
               size: int = transforms.CROP):
    self.source, self.rename, self.size = source, dict(rename or {}), size

  def __len__(self):
    return len(self.source)

  def get(self, index: int, rng: np.random.Generator | None = None) -> dict:
    record = self.source[int(index)]
    img = decode(record)
    if rng is None:
      x = transforms.eval_image(img, self.size * 8 // 7, self.size)
    else:
      x = transforms.train_image(img, rng, self.size)
    out = {"image": transforms.normalize(x)}
    for k, v in _labels_of(record).items():
      out[self.rename.get(k, k)] = v
    return out


CF_RENAME = {"shape_label": "shape", "texture_label": "texture",
             "bg_label": "bg"}


def example_sources(root: os.PathLike | str,
                    counterfactuals: os.PathLike | str | None = None,
                    image_size: int = transforms.CROP) -> dict:
  """The four per-example sources a classifier trainer needs.

  Args:
    root: an ImageFolder ImageNet holding train/ and val/, or 'tfds' (a
      prepared TFDS ImageNet in CGN_TFDS_DIR).
    counterfactuals: a counterfactual dataset (train*/ and val*/), or None.
    image_size: crop side.

  Returns:
    {'real_train', 'real_val', 'cf_train', 'cf_val'}: ExampleSources with
    labels 'label' (real) and 'shape', 'texture', 'bg' (counterfactual);
    None where absent (no val/ folder, no counterfactuals, no val* split).

  Raises:
    DataError: the training images are missing.
  """
  if str(root) == "tfds":
    train, val = tfds_source("train"), None
    try:
      val = tfds_source("validation")
    except DataError:
      pass
  else:
    base = pathlib.Path(root).expanduser()
    train = imagenet_split(base, "train")
    val = imagenet_split(base, "val") if (base / "val").is_dir() else None
  out = {"real_train": ExampleSource(train, size=image_size),
         "real_val": val and ExampleSource(val, size=image_size),
         "cf_train": None, "cf_val": None}
  if counterfactuals:
    out["cf_train"] = ExampleSource(
        counterfactual_source(counterfactuals, "train"), CF_RENAME,
        image_size)
    try:
      out["cf_val"] = ExampleSource(
          counterfactual_source(counterfactuals, "val"), CF_RENAME,
          image_size)
    except DataError:
      pass
  return out


# ------------------------------------------------------------- evaluation --


class _EvalLoader:
  """Picklable per-position loader of an evaluation pass (grain workers)."""

  def __init__(self, source, order, label_keys, transform):
    self.source, self.order = source, order
    self.label_keys, self.transform = label_keys, transform

  def __call__(self, pos):
    i = int(self.order[pos])
    if i < 0:  # padding of the last global batch
      return None
    record = self.source[i]
    return {"image": self.transform(decode(record)),
            **{k: record[k] for k in self.label_keys}}


def _collate(items, label_keys, mean, std, size):
  """Stacks per-image dicts; None (padding) becomes zeros with mask False."""
  n = len(items)
  images = np.zeros((n, size, size, 3), np.uint8)
  labels = {k: np.zeros((n,), np.int32) for k in label_keys}
  mask = np.zeros((n,), bool)
  for j, it in enumerate(items):
    if it is None:
      continue
    images[j] = it["image"]
    for k in label_keys:
      labels[k][j] = it[k]
    mask[j] = True
  out = {"image": transforms.normalize(images, mean, std) if mean else images}
  out.update(labels)
  out["mask"] = mask
  return out


def _shard_rows(n_rows: int, batch_size: int, shard_index: int,
                shard_count: int) -> np.ndarray:
  """Positions (into a global order of `n_rows`) that one shard decodes."""
  if batch_size % shard_count:
    raise ValueError(f"global batch size {batch_size} is not divisible by "
                     f"the shard count {shard_count}")
  if not 0 <= shard_index < shard_count:
    raise ValueError(f"shard_index {shard_index} not in [0, {shard_count})")
  local = batch_size // shard_count
  rows = np.arange(n_rows).reshape(-1, batch_size)
  return rows[:, shard_index * local:(shard_index + 1) * local].reshape(-1)


def eval_dataset(source, batch_size: int, *, kind: str = "imagenet",
                 shard_index: int = 0, shard_count: int = 1,
                 normalize: bool = True, size: int = transforms.CROP
                 ) -> grain.MapDataset:
  """Every image of `source` once, in order, as fixed-shape batches.

  Args:
    source: a random-access source (see the module docstring).
    batch_size: the GLOBAL batch size (all shards together).
    kind: 'imagenet' (Resize 256 → CenterCrop 224, ImageNet statistics) or
      'in9' (no resize, IN-9 statistics).
    shard_index: this shard (process).
    shard_count: number of shards.
    normalize: float32 normalised images; False keeps uint8.
    size: output side (224).

  Returns:
    A MapDataset of ceil(N / batch_size) batches of batch_size / shard_count
    rows: {'image', every label key of the records, 'mask'}; the padding
    rows of the last batch have mask False and must not be counted.
  """
  if kind not in EVAL_TRANSFORMS:
    raise ValueError(f"kind must be one of {sorted(EVAL_TRANSFORMS)}")
  fn, mean, std = EVAL_TRANSFORMS[kind]
  if kind == "imagenet" and size != transforms.CROP:
    fn = functools.partial(transforms.eval_image, resize=size * 8 // 7,
                           crop=size)
  n = len(source)
  if n == 0:
    raise DataError("the evaluation source is empty")
  n_pad = math.ceil(n / batch_size) * batch_size
  order = np.full((n_pad,), -1, np.int64)
  order[:n] = np.arange(n)
  mine = order[_shard_rows(n_pad, batch_size, shard_index, shard_count)]
  label_keys = tuple(sorted(_labels_of(source[0])))
  loader = _EvalLoader(source, mine, label_keys, fn)
  local = batch_size // shard_count
  collate = functools.partial(_collate, label_keys=label_keys,
                              mean=mean if normalize else None, std=std,
                              size=size)
  return (grain.MapDataset.range(len(mine)).map(loader)
          .batch(local, batch_fn=collate))


def process_batches(source, batch_size: int, *, kind: str = "imagenet",
                    **kwargs):
  """Every image of `source` once, split over the processes of a run.

  Each process decodes only its rows of every global batch (`eval_dataset`
  with shard_index / shard_count = this process / the process count) and
  receives, with its own images, the labels and mask of the whole global
  batch (gathered from every process). An `apply_fn` given such batches
  maps this process's images to the outputs of the whole global batch (the
  classifier trainer's does: a global jax.Array from the local rows, the
  outputs gathered), so the accuracy code sees global batches, every
  process computes the same numbers and each image counts once. With one
  process this is `iterate(eval_dataset(source, batch_size, kind=kind))`.

  Args:
    source: a random-access source (see the module docstring).
    batch_size: the GLOBAL batch size.
    kind: see `eval_dataset`.
    **kwargs: passed to `iterate` (worker_count, threads, ...).
  """
  import jax  # pylint: disable=g-import-not-at-top
  from cgn_jax import distributed  # pylint: disable=g-import-not-at-top
  n = jax.process_count()
  ds = eval_dataset(source, batch_size, kind=kind,
                    shard_index=jax.process_index(), shard_count=n)
  for batch in iterate(ds, **kwargs):
    if n > 1:
      batch = dict(distributed.gather_rows(
          {k: v for k, v in batch.items() if k != "image"}),
                   image=batch["image"])
    yield batch


# --------------------------------------------------------------- training --


def steps_per_epoch(num_real: int, batch_size: int) -> int:
  """Training steps per epoch: full global batches of real images."""
  return num_real // batch_size


def cf_batch_size(batch_size: int, cf_ratio: float) -> int:
  """Counterfactual images per step, int(cf_ratio · b) as upstream."""
  return int(cf_ratio * batch_size)


def counterfactual_pool(num_cf: int, n_data: int,
                        rng: np.random.Generator) -> np.ndarray:
  """One epoch's counterfactual indices, drawn as upstream's `resample()`.

  Upstream replicates the dataset ceil(n_data / N) times when it is smaller
  than the n_data = cf_batch · steps images an epoch needs, then draws n_data
  rows of that pool without replacement (`DataFrame.sample`) at every epoch.
  A smaller n_data than the pool draws a fresh subset each epoch.

  Returns:
    int64 [n_data] indices into the dataset, in random order.
  """
  if n_data == 0:
    return np.zeros((0,), np.int64)
  if num_cf == 0:
    raise DataError(f"the counterfactual dataset is empty. {CF_HELP}")
  mult = max(1, math.ceil(n_data / num_cf))
  pool = np.tile(np.arange(num_cf), mult)
  return pool[rng.choice(len(pool), n_data, replace=False)]


class _TrainLoader:
  """Picklable loader of one mixed epoch: flat position → augmented image.

  Positions run step by step: the shard's `local_real` real rows of a step,
  then its `local_cf` counterfactual rows. Each image's augmentation draws
  from `default_rng((seed, epoch, kind, global position))`.
  """

  def __init__(self, real, cf, real_idx, cf_idx, shard_index, n_shards,
               seed, epoch, size):
    self.real, self.cf = real, cf
    self.real_idx, self.cf_idx = real_idx, cf_idx  # [steps, local]
    self.shard_index, self.n_shards = shard_index, n_shards
    self.seed, self.epoch, self.size = seed, epoch, size

  def __call__(self, pos):
    local_real, local_cf = self.real_idx.shape[1], self.cf_idx.shape[1]
    step, j = divmod(int(pos), local_real + local_cf)
    if j < local_real:
      kind, source, idx, local, col = 0, self.real, self.real_idx, local_real, j
    else:
      kind, source, idx, local = 1, self.cf, self.cf_idx, local_cf
      col = j - local_real
    global_pos = step * local * self.n_shards + self.shard_index * local + col
    rng = np.random.default_rng((self.seed, self.epoch, kind, global_pos))
    record = source[int(idx[step, col])]
    image = transforms.train_image(decode(record), rng, self.size)
    return kind, image, _labels_of(record)


def _collate_mixed(items, local_real, mean, std):
  """Splits a step's images into {'real': {...}, 'cf': {...}} batches."""
  out = {}
  for name, part in (("real", items[:local_real]),
                     ("cf", items[local_real:])):
    if not part:
      continue
    images = np.stack([it[1] for it in part])
    batch = {"image": transforms.normalize(images, mean, std)
             if mean else images}
    for k in part[0][2]:
      batch[k] = np.asarray([it[2][k] for it in part], np.int32)
    out[name] = batch
  return out


def epoch_order(num_real: int, num_cf: int, batch_size: int, cf_ratio: float,
                seed: int, epoch: int) -> tuple[np.ndarray, np.ndarray]:
  """The global real and counterfactual indices of every step of an epoch.

  Returns:
    (real int64 [steps, b], cf int64 [steps, int(cf_ratio · b)]): a fresh
    permutation of the real images (remainder dropped) and a fresh draw of
    the counterfactual pool (`counterfactual_pool`), both seeded by
    (seed, epoch).
  """
  steps = steps_per_epoch(num_real, batch_size)
  if steps == 0:
    raise ValueError(f"{num_real} real images are fewer than one global "
                     f"batch of {batch_size}")
  cb = cf_batch_size(batch_size, cf_ratio)
  real = np.random.default_rng((seed, epoch, 0)).permutation(num_real)
  cf = counterfactual_pool(num_cf, steps * cb,
                           np.random.default_rng((seed, epoch, 1)))
  return (real[:steps * batch_size].reshape(steps, batch_size),
          cf.reshape(steps, cb))


def mixed_epoch(real, cf, batch_size: int, *, cf_ratio: float = 1.0,
                seed: int = 0, epoch: int = 0, shard_index: int = 0,
                shard_count: int = 1, normalize: bool = True,
                size: int = transforms.CROP) -> grain.MapDataset:
  """One training epoch of real + counterfactual images (SPEC §6.2).

  Args:
    real: a source of {'encoded', 'label'} records (ImageNet train).
    cf: a counterfactual source, or None (then cf_ratio must be 0).
    batch_size: GLOBAL real batch size b.
    cf_ratio: counterfactual images per real image; each step has
      int(cf_ratio · b) of them; 0 is the real-only baseline.
    seed: seeds the order, the counterfactual draw and the augmentation.
    epoch: the epoch number (a fresh order and counterfactual draw each).
    shard_index: this shard (process).
    shard_count: number of shards; b and int(cf_ratio · b) must divide.
    normalize: float32 normalised images; False keeps uint8.
    size: crop side (224).

  Returns:
    A MapDataset with one element per step: {'real': {'image', 'label'}}
    plus, when cf_ratio > 0, 'cf': {'image', 'shape_label',
    'texture_label', 'bg_label'}; each this shard's rows.
  """
  cb = cf_batch_size(batch_size, cf_ratio)
  if cb and cf is None:
    raise DataError(f"cf_ratio={cf_ratio} needs a counterfactual dataset. "
                    f"{CF_HELP} Use cf_ratio=0 for the real-only baseline.")
  if cb % shard_count:
    raise ValueError(f"the counterfactual batch {cb} is not divisible by the "
                     f"shard count {shard_count}")
  real_idx, cf_idx = epoch_order(len(real), len(cf) if cb else 0, batch_size,
                                 cf_ratio, seed, epoch)
  cols = _shard_rows(batch_size, batch_size, shard_index, shard_count)
  real_idx = real_idx[:, cols]
  lc = cb // shard_count
  cf_idx = cf_idx[:, shard_index * lc:(shard_index + 1) * lc]
  loader = _TrainLoader(real, cf, real_idx, cf_idx, shard_index, shard_count,
                        seed, epoch, size)
  local_real = real_idx.shape[1]
  collate = functools.partial(_collate_mixed, local_real=local_real,
                              mean=transforms.IMAGENET_MEAN if normalize
                              else None, std=transforms.IMAGENET_STD)
  per_step = local_real + lc
  return (grain.MapDataset.range(len(real_idx) * per_step).map(loader)
          .batch(per_step, batch_fn=collate))


# --------------------------------------------------------------- iterators --


def _allow_worker_flags():
  """grain's worker processes read absl flags; outside absl.app they are
  unparsed and every worker would fail (NOTES §3). Mark them parsed (the
  defaults) once, only when workers are asked for."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


def batches(dataset: grain.MapDataset, *, worker_count: int = 0,
            threads: int = 2, prefetch: int = 4,
            worker_buffer: int = 2) -> grain.DatasetIterator:
  """An iterator over a pipeline's batches.

  Args:
    dataset: from `eval_dataset` or `mixed_epoch`.
    worker_count: processes decoding JPEGs (0: in this process). Batches are
      the same for every value.
    threads: threads per process reading ahead (PIL releases the GIL while
      it decodes and resizes).
    prefetch: batches each process reads ahead.
    worker_buffer: batches each worker process buffers.

  Returns:
    A checkpointable grain DatasetIterator.
  """
  it = dataset.to_iter_dataset(grain.ReadOptions(
      num_threads=threads, prefetch_buffer_size=prefetch))
  if worker_count > 0:
    _allow_worker_flags()
    it = it.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=worker_count, per_worker_buffer_size=worker_buffer))
  return iter(it)


def iterate(dataset: grain.MapDataset, **kwargs):
  """Yields every batch of `dataset` once, then closes the iterator.

  Closing stops the worker processes and frees their shared memory now
  rather than at garbage collection (grain's advice for `mp_prefetch`).

  Args:
    dataset: from `eval_dataset` or `mixed_epoch`.
    **kwargs: passed to `batches` (worker_count, threads, ...).
  """
  it = batches(dataset, **kwargs)
  try:
    yield from it
  finally:
    close = getattr(it, "close", None)
    if close is not None:
      close()

