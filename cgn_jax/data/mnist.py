"""MNIST through tensorflow-datasets, without TensorFlow.

The stock TFDS `mnist` builder needs TensorFlow to extract and encode, so this
module ships its own `GeneratorBasedBuilder` (`cgn_mnist`). It reads the four
official IDX .gz files with gzip and numpy, checks their published md5, stores
`tfds.features.Tensor` features (not `Image`, whose PNG encoder is TF) as
ArrayRecord, and is read back with `tfds.data_source`.

Where the IDX files come from, in order:
  1. the `mnist_dir` argument, else `CGN_MNIST_DIR` (a folder holding the four
     official files, e.g. `../shared/data/mnist`);
  2. otherwise they are downloaded from the official mirrors into
     `<data_dir>/downloads/cgn_mnist/`.
Either way every file must match its published md5 before anything is built.

The prepared dataset lives in the TFDS data dir: the `data_dir` argument, else
`CGN_TFDS_DIR`, else the TFDS default (`TFDS_DATA_DIR` or
`~/tensorflow_datasets`). It is built once; later calls only read it.

`load_mnist(split)` returns a whole split as numpy arrays held in RAM (MNIST is
small and an in-memory gather is the fastest input path, NOTES §3), cached per
process.
"""

import functools
import gzip
import hashlib
import os
import pathlib
import shutil
import struct
import tempfile
import urllib.error
import urllib.request

import numpy as np
import tensorflow_datasets as tfds

from cgn_jax import paths

try:
  from tensorflow_datasets.proto import tf_example_pb2
except ImportError:  # another TFDS layout: the generic decoder is used
  tf_example_pb2 = None

# Published md5 of the official files (shared/data/README.md §2).
FILES = {
    "train_images": ("train-images-idx3-ubyte.gz",
                     "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
    "train_labels": ("train-labels-idx1-ubyte.gz",
                     "d53e105ee54ea40749a09fcbcd1e9432"),
    "test_images": ("t10k-images-idx3-ubyte.gz",
                    "9fb629c4189551a2d022fa330f9573f3"),
    "test_labels": ("t10k-labels-idx1-ubyte.gz",
                    "ec29112dd5afa0611ce80d1b7f02629c"),
}
# Tried in order; the files have the same names and bytes on all of them.
MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)
SPLIT_SIZES = {"train": 60000, "test": 10000}
NUM_CLASSES = 10

_FIX = ("Fix: set CGN_MNIST_DIR to a folder holding the four official MNIST "
        "files (" + ", ".join(name for name, _ in FILES.values()) + "), or "
        "unset it on a machine with internet access to download them.")


class MnistFileError(RuntimeError):
  """A missing, unreadable or corrupt MNIST source file or folder."""


def md5sum(path: os.PathLike) -> str:
  """The hex md5 of a file, read in chunks."""
  h = hashlib.md5()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      h.update(chunk)
  return h.hexdigest()


def check_file(path: pathlib.Path, expected_md5: str) -> None:
  """Raises MnistFileError unless `path` exists and has `expected_md5`."""
  if not path.is_file():
    raise MnistFileError(
        f"MNIST file {path} is missing (expected md5 {expected_md5}). {_FIX}")
  got = md5sum(path)
  if got != expected_md5:
    raise MnistFileError(
        f"MNIST file {path} is corrupt: md5 {got}, expected {expected_md5} "
        f"(the published value). {_FIX}")


def local_files(mnist_dir: os.PathLike) -> dict[str, pathlib.Path]:
  """The four IDX files of a local folder, each md5-checked.

  Args:
    mnist_dir: a folder holding the four official MNIST .gz files.

  Returns:
    {'train_images' | 'train_labels' | 'test_images' | 'test_labels': path}.

  Raises:
    MnistFileError: the folder or a file is missing, or a file's md5 differs
      from the published one.
  """
  d = pathlib.Path(mnist_dir).expanduser()
  if not d.is_dir():
    raise MnistFileError(f"MNIST folder {d} does not exist. {_FIX}")
  out = {}
  for key, (name, md5) in FILES.items():
    out[key] = d / name
    check_file(out[key], md5)
  return out


def download_files(download_dir: os.PathLike) -> dict[str, pathlib.Path]:
  """Downloads the four IDX files (if not already there) and md5-checks them.

  Args:
    download_dir: where to keep the .gz files.

  Returns:
    Same as `local_files`.

  Raises:
    MnistFileError: no mirror served a file with the published md5.
  """
  d = pathlib.Path(download_dir)
  d.mkdir(parents=True, exist_ok=True)
  out = {}
  for key, (name, md5) in FILES.items():
    dest = d / name
    if not (dest.is_file() and md5sum(dest) == md5):
      errors = []
      for mirror in MIRRORS:
        try:
          _fetch(mirror + name, dest)
        except (urllib.error.URLError, OSError) as e:
          errors.append(f"{mirror + name}: {e}")
          continue
        got = md5sum(dest)
        if got == md5:
          break
        errors.append(f"{mirror + name}: md5 {got}, expected {md5}")
        dest.unlink()
      else:
        raise MnistFileError(
            f"could not download MNIST file {name} (expected md5 {md5}): "
            + "; ".join(errors) + f". {_FIX}")
    out[key] = dest
  return out


def _fetch(url: str, dest: pathlib.Path) -> None:
  # Download to a temporary name so an interrupted transfer leaves no file
  # that a later run could mistake for a complete one.
  fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=dest.name + ".")
  try:
    with os.fdopen(fd, "wb") as f, urllib.request.urlopen(url, timeout=60) as r:
      shutil.copyfileobj(r, f)
    os.replace(tmp, dest)
  finally:
    if os.path.exists(tmp):
      os.unlink(tmp)


def read_idx(path: os.PathLike) -> np.ndarray:
  """Reads an IDX .gz file (images: magic 2051, labels: magic 2049).

  Args:
    path: the .gz file.

  Returns:
    uint8 array, [N, rows, cols] for images and [N] for labels.
  """
  with gzip.open(path, "rb") as f:
    data = f.read()
  magic, = struct.unpack(">I", data[:4])
  ndim = magic & 0xFF
  if magic >> 8 != 0x08 or ndim not in (1, 3):  # 0x08: unsigned byte
    raise MnistFileError(f"{path} is not an IDX uint8 file (magic {magic}).")
  shape = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
  arr = np.frombuffer(data, np.uint8, offset=4 + 4 * ndim)
  if arr.size != int(np.prod(shape)):
    raise MnistFileError(f"{path}: header says {shape}, found {arr.size} "
                         f"values. {_FIX}")
  return arr.reshape(shape)


class CgnMnist(tfds.core.GeneratorBasedBuilder):
  """Official MNIST as uint8 [28, 28] digits and int labels (no TF needed)."""

  VERSION = tfds.core.Version("1.1.0")
  RELEASE_NOTES = {
      "1.0.0": "IDX files read with numpy; Tensor features.",
      "1.1.0": "Images stored as raw bytes (fast decode); IDX order kept.",
  }

  def __init__(self, *, mnist_dir: os.PathLike | None = None, **kwargs):
    """Builder.

    Args:
      mnist_dir: local folder with the four IDX .gz files; None means
        `CGN_MNIST_DIR`, and if that is unset too, download.
      **kwargs: passed to `tfds.core.GeneratorBasedBuilder` (e.g. data_dir).
    """
    self._mnist_dir = mnist_dir
    kwargs.setdefault("file_format", "array_record")
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    # DatasetInfo(builder=self) rather than dataset_info_from_configs, which
    # lists the module's folder looking for metadata files (NOTES §2).
    return tfds.core.DatasetInfo(
        builder=self,
        description="Official MNIST digits, read from the IDX files.",
        features=tfds.features.FeaturesDict({
            # Raw bytes rather than 784 varints: 3x faster to build/read.
            "image": tfds.features.Tensor(
                shape=(28, 28), dtype=np.uint8,
                encoding=tfds.features.Encoding.BYTES),
            "label": tfds.features.ClassLabel(num_classes=NUM_CLASSES),
        }),
        supervised_keys=("image", "label"),
        # Keep the IDX order: the upstream splits are index ranges
        # (train[:50000] / train[50000:]).
        disable_shuffling=True,
        homepage="http://yann.lecun.com/exdb/mnist/",
    )

  def _split_generators(self, dl_manager):
    mnist_dir = self._mnist_dir or paths.mnist_dir()
    if mnist_dir is not None:
      files = local_files(mnist_dir)
    else:
      files = download_files(
          pathlib.Path(str(dl_manager.download_dir)) / "cgn_mnist")
    return {
        split: self._generate_examples(files[f"{split}_images"],
                                       files[f"{split}_labels"])
        for split in ("train", "test")
    }

  def _generate_examples(self, images_path, labels_path):
    images = read_idx(images_path)
    labels = read_idx(labels_path)
    if len(images) != len(labels):
      raise MnistFileError(f"{images_path} has {len(images)} images but "
                           f"{labels_path} has {len(labels)} labels.")
    for i, (image, label) in enumerate(zip(images, labels)):
      yield i, {"image": image, "label": int(label)}


def tfds_data_dir(data_dir: os.PathLike | None = None) -> str | None:
  """The TFDS data dir: the argument, else CGN_TFDS_DIR, else TFDS's default.

  Args:
    data_dir: explicit folder, or None.

  Returns:
    A path string, or None for TFDS's own default.
  """
  d = data_dir or os.environ.get("CGN_TFDS_DIR")
  return str(pathlib.Path(d).expanduser()) if d else None


def is_prepared(data_dir: os.PathLike | None = None) -> bool:
  """Whether cgn_mnist is already built in the TFDS data dir (no I/O else)."""
  return CgnMnist(data_dir=tfds_data_dir(data_dir)).is_prepared()


def prepare(data_dir: os.PathLike | None = None,
            mnist_dir: os.PathLike | None = None) -> CgnMnist:
  """Builds the ArrayRecord dataset unless it is already there.

  Args:
    data_dir: TFDS data dir (see `tfds_data_dir`).
    mnist_dir: local IDX folder (default `CGN_MNIST_DIR`, else download).

  Returns:
    The prepared builder.

  Raises:
    MnistFileError: a source file or folder is missing or corrupt.
  """
  builder = CgnMnist(data_dir=tfds_data_dir(data_dir), mnist_dir=mnist_dir)
  builder.download_and_prepare()
  return builder


def _decode_all(source) -> tuple[np.ndarray, np.ndarray]:
  """Decodes every record of a cgn_mnist data source in bulk.

  TFDS's generic per-record decoder costs ~70 us a record; parsing the
  tf.train.Example protos directly is several times faster. The generic
  decoder remains the fallback, and it checks the first record of the fast
  path.
  """
  n = len(source)
  if tf_example_pb2 is not None:
    try:
      raw = source.data_source.__getitems__(range(n))
      images, labels = [], np.empty((n,), np.int32)
      for i, record in enumerate(raw):
        feature = tf_example_pb2.Example.FromString(record).features.feature
        images.append(feature["image"].bytes_list.value[0])
        labels[i] = feature["label"].int64_list.value[0]
      digits = np.frombuffer(b"".join(images), np.uint8).reshape(n, 28, 28)
      first = source[0]
      if (np.array_equal(first["image"], digits[0])
          and int(first["label"]) == labels[0]):
        return digits, labels
    except (AttributeError, KeyError, IndexError, ValueError):
      pass
  records = source.__getitems__(range(n))
  digits = np.stack([r["image"] for r in records]).astype(np.uint8)
  labels = np.asarray([r["label"] for r in records], np.int32)
  return digits, labels


@functools.lru_cache(maxsize=None)
def _load(split: str, data_dir: str | None) -> tuple[np.ndarray, np.ndarray]:
  prepare(data_dir)
  source = tfds.data_source("cgn_mnist", split=split, data_dir=data_dir)
  digits, labels = _decode_all(source)
  # The arrays are shared by every caller of the cache: keep them immutable.
  digits.flags.writeable = False
  labels.flags.writeable = False
  return digits, labels


def load_mnist(split: str, data_dir: os.PathLike | None = None
              ) -> tuple[np.ndarray, np.ndarray]:
  """A whole MNIST split in RAM, prepared into the TFDS data dir on first use.

  Args:
    split: 'train' (60000 images) or 'test' (10000, the official t10k set).
    data_dir: TFDS data dir (default CGN_TFDS_DIR, else TFDS's default).

  Returns:
    (digits uint8 [N, 28, 28], labels int32 [N]), read-only and cached per
    process and data dir.

  Raises:
    MnistFileError: the dataset is not prepared yet and a source file or
      folder is missing or corrupt.
  """
  if split not in SPLIT_SIZES:
    raise ValueError(f"split must be 'train' or 'test', got {split!r}")
  return _load(split, tfds_data_dir(data_dir))
