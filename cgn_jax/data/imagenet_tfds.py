"""ImageNet (ILSVRC 2012) into TFDS ArrayRecord without TensorFlow.

TFDS's stock `imagenet2012` builder needs TensorFlow to prepare: it checks
the manual_dir with `tf.io.gfile`, reads the validation tar through
`tf.io.gfile.GFile` and re-encodes its CMYK/PNG JPEGs with `tf.image`. This
builder (`cgn_imagenet2012`, NOTES §2's pattern, as `cgn_jax.data.mnist`)
reads the same two archives of the manual download with `tarfile`, keeps every
image's original bytes (PIL decodes CMYK and the one PNG-in-a-.JPEG fine, and
the pipeline converts to RGB like torchvision's loader) and writes ArrayRecord
with the stock builder's features, labels and split names:

  features: image (JPEG bytes), label (index into the sorted wnids, the
  `imagenet_class_index.json` order), file_name
  splits: train (from ILSVRC2012_img_train.tar, a tar of per-class tars),
  validation (ILSVRC2012_img_val.tar + TFDS's validation_labels.txt)

Prepare once (about 150 GB written for the full set):

  python -c "from cgn_jax.data import imagenet_tfds as t; \\
      t.prepare('/path/with/ILSVRC2012_img_{train,val}.tar', DATA_DIR)"

then read with `cgn_jax.data.imagenet.tfds_source(split, DATA_DIR)`.
"""

import os
import pathlib
import tarfile

import tensorflow_datasets as tfds

from cgn_jax.data import imagenet

TRAIN_TAR = "ILSVRC2012_img_train.tar"
VAL_TAR = "ILSVRC2012_img_val.tar"
NAME = "cgn_imagenet2012"


def _validation_labels() -> list[str]:
  """wnids of the 50,000 val images in sorted file-name order (TFDS's)."""
  path = (pathlib.Path(tfds.__file__).parent / "datasets" / "imagenet2012" /
          "validation_labels.txt")
  return path.read_text().split()


class CgnImagenet2012(tfds.core.GeneratorBasedBuilder):
  """ILSVRC 2012 train/validation as original JPEG bytes (no TF needed)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Stock imagenet2012 features, read with tarfile."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      f"manual_dir should hold {TRAIN_TAR} and/or {VAL_TAR} from "
      "https://image-net.org/download-images (registration needed).")

  def __init__(self, *, manual_dir: os.PathLike | str | None = None,
               **kwargs):
    """Builder.

    Args:
      manual_dir: the folder holding the ILSVRC2012 tar files.
      **kwargs: passed to GeneratorBasedBuilder (data_dir, ...).
    """
    self._manual = manual_dir
    kwargs.setdefault("file_format", "array_record")
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    # DatasetInfo(builder=self): dataset_info_from_configs would list this
    # module's folder for metadata files (NOTES §2).
    return tfds.core.DatasetInfo(
        builder=self,
        description="ILSVRC 2012, original JPEG bytes.",
        features=tfds.features.FeaturesDict({
            # bytes pass through Image's encoder untouched (no TF)
            "image": tfds.features.Image(encoding_format="jpeg"),
            "label": tfds.features.ClassLabel(
                names=list(imagenet.imagenet_wnids())),
            "file_name": tfds.features.Text(),
        }),
        supervised_keys=("image", "label"),
        homepage="https://image-net.org/",
    )

  def _split_generators(self, dl_manager):
    del dl_manager
    if self._manual is None:
      raise imagenet.DataError(
          f"pass manual_dir (the folder with {TRAIN_TAR} / {VAL_TAR}). "
          f"{self.MANUAL_DOWNLOAD_INSTRUCTIONS}")
    manual = pathlib.Path(self._manual).expanduser()
    splits = {}
    if (manual / TRAIN_TAR).is_file():
      splits["train"] = self._generate_examples(manual / TRAIN_TAR, "train")
    if (manual / VAL_TAR).is_file():
      splits["validation"] = self._generate_examples(manual / VAL_TAR,
                                                     "validation")
    if not splits:
      raise imagenet.DataError(
          f"neither {TRAIN_TAR} nor {VAL_TAR} is in {manual}. "
          f"{self.MANUAL_DOWNLOAD_INSTRUCTIONS}")
    return splits

  def _generate_examples(self, path, split):
    if split == "train":
      yield from self._generate_train(path)
    else:
      yield from self._generate_validation(path)

  def _generate_train(self, path):
    with tarfile.open(path, mode="r|") as outer:
      for member in outer:  # one tar per class, 'n01440764.tar'
        wnid = pathlib.PurePosixPath(member.name).stem
        inner = tarfile.open(fileobj=outer.extractfile(member), mode="r|")
        for m in inner:
          if m.isfile():
            name = pathlib.PurePosixPath(m.name).name
            yield name, {"image": inner.extractfile(m).read(),
                         "label": wnid, "file_name": name}

  def _generate_validation(self, path):
    with tarfile.open(path, mode="r:") as tar:
      names = sorted(m.name for m in tar.getmembers() if m.isfile())
    labels = dict(zip(names, _validation_labels()))
    with tarfile.open(path, mode="r|") as tar:
      for m in tar:
        if m.isfile():
          yield m.name, {"image": tar.extractfile(m).read(),
                         "label": labels[m.name], "file_name": m.name}


def prepare(manual_dir: os.PathLike | str,
            data_dir: os.PathLike | str | None = None) -> CgnImagenet2012:
  """Builds `cgn_imagenet2012` in `data_dir` (default CGN_TFDS_DIR) once."""
  data_dir = data_dir or os.environ.get("CGN_TFDS_DIR")
  builder = CgnImagenet2012(manual_dir=manual_dir,
                            data_dir=str(data_dir) if data_dir else None)
  builder.download_and_prepare()
  return builder
