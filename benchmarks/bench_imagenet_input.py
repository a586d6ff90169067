"""The ImageNet input pipeline alone: JPEG decode + augmentation, images/s.

`cgn_jax.data.imagenet`'s own pipelines on an ImageFolder of real photos:
the 20 upstream texture JPEGs (300-640 px, like ImageNet's ~400x350 average)
when the shared folder is there, else smooth synthetic 500x375 JPEGs (a note
on stderr says so), repeated to a long epoch. Variants:

* `train_1core`: RandomResizedCrop 224 + flip + normalise, decoded in the
  calling thread only: images/s per CPU core;
* `train_1core_uint8`: the same without normalising (uint8 batches, to
  normalise on the accelerator);
* `eval_1core`: Resize 256 → CenterCrop 224 + normalise, one core;
* `train_workers`: every core (`os.cpu_count()` grain worker processes).

One call draws one batch of 64 (float32 NHWC, the trainer's input).
"""

import functools
import os
import pathlib
import shutil
import sys
import tempfile

import numpy as np
from PIL import Image

from benchmarks.harness import Benchmark
from cgn_jax import paths
from cgn_jax.data import imagenet

BATCH = 64
REPEAT = 200  # epoch length = REPEAT x 20 images, never exhausted


@functools.lru_cache(maxsize=None)
def _folder() -> tuple[str, str]:
  """A temporary ImageFolder of 20 JPEGs in two classes, and their origin."""
  root = pathlib.Path(tempfile.mkdtemp(prefix="cgn_bench_in_"))
  textures = paths.upstream_dir() / "textures"
  files = sorted(textures.glob("*/*.jpg")) if textures.is_dir() else []
  for c in ("n01440764", "n01443537"):
    (root / c).mkdir()
  if len(files) == 20:
    for i, f in enumerate(files):
      shutil.copy(f, root / ("n01440764", "n01443537")[i % 2] / f.name)
    return str(root), "upstream texture JPEGs"
  print("imagenet_input: shared textures not found; synthetic JPEGs",
        file=sys.stderr)
  rng = np.random.default_rng(0)
  yy, xx = np.mgrid[0:375, 0:500]
  for i in range(20):
    base = np.stack([np.sin(xx / (7 + i)), np.cos(yy / (11 + i)),
                     np.sin((xx + yy) / (13 + i))], -1) * 100 + 128
    x = np.clip(base + rng.normal(0, 12, base.shape), 0, 255)
    Image.fromarray(x.astype(np.uint8)).save(
        root / ("n01440764", "n01443537")[i % 2] / f"{i}.JPEG", quality=90)
  return str(root), "synthetic JPEGs"


def _source():
  src = imagenet.image_folder(_folder()[0])
  return imagenet.FileSource(src.paths * REPEAT,
                             {"label": np.tile(src.labels["label"], REPEAT)})


def _setup(kind: str, workers: int, threads: int, normalize: bool = True):
  source = _source()
  if kind == "train":
    ds = imagenet.mixed_epoch(source, None, BATCH, cf_ratio=0.0,
                              normalize=normalize)
  else:
    ds = imagenet.eval_dataset(source, BATCH, normalize=normalize)
  it = imagenet.batches(ds, worker_count=workers, threads=threads,
                        prefetch=2 * max(threads, 1))

  def step():
    batch = next(it)
    return batch["real"]["image"] if kind == "train" else batch["image"]

  return step


_CORES = os.cpu_count() or 1
BENCHMARKS = [
    Benchmark(name="imagenet_input/train_1core",
              setup=functools.partial(_setup, "train", 0, 0), batch=BATCH,
              repeats=10, extra={"cores": 1}),
    Benchmark(name="imagenet_input/train_1core_uint8",
              setup=functools.partial(_setup, "train", 0, 0, False),
              batch=BATCH, repeats=10, extra={"cores": 1, "output": "uint8"}),
    Benchmark(name="imagenet_input/eval_1core",
              setup=functools.partial(_setup, "eval", 0, 0), batch=BATCH,
              repeats=10, extra={"cores": 1}),
    Benchmark(name="imagenet_input/train_workers",
              setup=functools.partial(_setup, "train", _CORES, 1),
              batch=BATCH, repeats=20,
              extra={"cores": _CORES, "worker_count": _CORES}),
]
