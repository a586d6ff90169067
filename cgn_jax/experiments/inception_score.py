"""Inception Score of image folders, counterfactual datasets or a CGN (SPEC §7.3).

  python -m cgn_jax.experiments.inception_score --weights INCEPTION \\
      --images DIR [--num N] [--splits 10]
  python -m cgn_jax.experiments.inception_score --weights INCEPTION \\
      --cgn WEIGHTS --num 2000 --splits 2 [--truncation 0.5]

INCEPTION is the output of `python -m converters inception-v3` ('random':
random weights, smoke runs only). `--images` takes a folder of JPEG/PNG
files (searched recursively, sorted by path; e.g. upstream's `ims/`) or a
dataset written by generate.py (`metadata.json` + ArrayRecord shards).
`--cgn` draws N counterfactuals from a converted ImageNet CGN exactly as
generate.py does (mode, seed, truncation; images quantised to uint8 as
saved, without the JPEG step) and also prints µ_mask, the mean mask value
of the paper's Table 1.

Prints `IS = mean ± std over K splits` (see
`cgn_jax/evaluation/inception_score.py` for the split rule and for which
protocol each published number used: [BG] = `--num 2000 --splits 2` at
truncation 0.5; [RR] = 10 splits; the paper's is unstated).
"""

import argparse
import json
import pathlib
import sys
from typing import Callable, Iterator

import numpy as np

from cgn_jax.evaluation import inception_score as is_lib

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def _load_rgb(path) -> np.ndarray:
  from PIL import Image  # pylint: disable=g-import-not-at-top
  with Image.open(path) as im:
    return np.asarray(im.convert("RGB"))


def _resize_host(image: np.ndarray) -> np.ndarray:
  """uint8 [H, W, 3] -> float32 [299, 299, 3] in [-1, 1], torch bilinear.

  Images of different sizes cannot share a batch, so they are resized on the
  host with the same indices and weights as `models/resize.py`.
  """
  from cgn_jax.models import resize  # pylint: disable=g-import-not-at-top
  x = image.astype(np.float32) / 127.5 - 1.0
  for axis in (0, 1):
    if x.shape[axis] != is_lib.INPUT_SIZE:
      i0, i1, lam = resize.source_indices(x.shape[axis], is_lib.INPUT_SIZE,
                                          False)
      shape = [1, 1, 1]
      shape[axis] = -1
      lam = lam.reshape(shape)
      x = (1 - lam) * np.take(x, i0, axis) + lam * np.take(x, i1, axis)
  return x


def image_batches(directory, num: int, batch_size: int
                  ) -> tuple[Iterator[np.ndarray], int]:
  """Batches of a folder of images or of a generate.py dataset."""
  directory = pathlib.Path(directory)
  if (directory / "metadata.json").is_file():
    from cgn_jax.data import records  # pylint: disable=g-import-not-at-top
    src = records.CounterfactualSource(directory)
    n = min(num, len(src)) if num else len(src)
    load = lambda i: src[i]["image"]
  else:
    if not directory.is_dir():
      raise FileNotFoundError(f"--images {directory} is not a directory")
    files = sorted(p for p in directory.rglob("*")
                   if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
      raise FileNotFoundError(f"no {IMAGE_SUFFIXES} files under {directory}")
    n = min(num, len(files)) if num else len(files)
    load = lambda i: _load_rgb(files[i])

  def gen():
    for s in range(0, n, batch_size):
      yield np.stack([_resize_host(load(i))
                      for i in range(s, min(s + batch_size, n))])

  return gen(), n


def cgn_batches(model, variables, *, num: int, batch_size: int, seed: int,
                mode: str, classes, truncation: float, mask_means: list
                ) -> Iterator[np.ndarray]:
  """uint8 counterfactual batches (generate.py's draws); appends mask means."""
  from cgn_jax.counterfactuals import imagenet  # pylint: disable=g-import-not-at-top
  ranges = [(s, min(s + batch_size, num)) for s in range(0, num, batch_size)]
  for _, batch in imagenet.generate(
      model, variables, ranges, seed=seed, mode=mode, classes=classes,
      truncation=truncation, batch_size=batch_size):
    mask_means.append(batch["mask_mean"])
    yield batch["image"]


def score_cgn(cgn_model, cgn_variables, inception_variables, *, num: int,
              splits: int, batch_size: int = 50, seed: int = 0,
              mode: str = "random", classes=None,
              truncation: float = 0.5,
              predict: Callable | None = None) -> dict:
  """IS and µ_mask of `num` counterfactuals of a CGN.

  `predict`: `is_lib.make_predict_fn(...)`, built once by a caller that
  scores several CGNs (default: a new one, one compilation).
  """
  means: list = []
  log_probs = is_lib.predict_log_probs(
      inception_variables,
      cgn_batches(cgn_model, cgn_variables, num=num, batch_size=batch_size,
                  seed=seed, mode=mode, classes=classes,
                  truncation=truncation, mask_means=means),
      batch_size=batch_size, predict=predict)
  mean, std, scores = is_lib.inception_score(log_probs, splits)
  return {"is_mean": mean, "is_std": std, "is_splits": scores.tolist(),
          "num": int(len(log_probs)), "splits": splits,
          "mu_mask": float(np.concatenate(means).mean())}


def score_images(directory, inception_variables, *, num: int, splits: int,
                 batch_size: int = 50,
                 predict: Callable | None = None) -> dict:
  """IS of a folder of images or of a generate.py dataset."""
  batches, n = image_batches(directory, num, batch_size)
  log_probs = is_lib.predict_log_probs(inception_variables, batches,
                                       batch_size=batch_size,
                                       predict=predict)
  mean, std, scores = is_lib.inception_score(log_probs, splits)
  return {"is_mean": mean, "is_std": std, "is_splits": scores.tolist(),
          "num": n, "splits": splits}


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
      prog="python -m cgn_jax.experiments.inception_score",
      description=__doc__.split("\n\n")[0])
  parser.add_argument("--weights", required=True,
                      help="converted Inception-v3 directory ('random': "
                      "smoke only)")
  src = parser.add_mutually_exclusive_group(required=True)
  src.add_argument("--images", help="image folder or generate.py dataset")
  src.add_argument("--cgn", help="converted ImageNet CGN ('random': smoke)")
  parser.add_argument("--num", type=int, default=0,
                      help="images (default: all of --images; 50000 with "
                      "--cgn)")
  parser.add_argument("--splits", type=int, default=10)
  parser.add_argument("--batch-size", type=int, default=50)
  parser.add_argument("--truncation", type=float, default=0.5)
  parser.add_argument("--mode", default="random",
                      choices=("random", "best_classes", "fixed_classes"))
  parser.add_argument("--classes", type=int, nargs=3, default=None)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--dtype", default="float32",
                      choices=("float32", "bfloat16"))
  parser.add_argument("--json", help="also write the result here")
  args = parser.parse_args(argv)
  from cgn_jax.models import inception_weights  # pylint: disable=g-import-not-at-top
  inception_variables, meta = inception_weights.load(args.weights)
  if args.cgn:
    from cgn_jax.counterfactuals import imagenet  # pylint: disable=g-import-not-at-top
    model, variables, info = imagenet.load_cgn(args.cgn, args.dtype)
    result = score_cgn(model, variables, inception_variables,
                       num=args.num or 50_000, splits=args.splits,
                       batch_size=args.batch_size, seed=args.seed,
                       mode=args.mode, classes=args.classes,
                       truncation=args.truncation)
    result.update(cgn_sha256=info["sha256"], truncation=args.truncation,
                  mode=args.mode, seed=args.seed)
  else:
    result = score_images(args.images, inception_variables, num=args.num,
                          splits=args.splits, batch_size=args.batch_size)
  result["inception_weights"] = meta.get("sha256", meta.get("source"))
  line = (f"IS = {result['is_mean']:.2f} ± {result['is_std']:.2f} over "
          f"{result['splits']} splits of {result['num']} images")
  if "mu_mask" in result:
    line += f"; µ_mask = {result['mu_mask']:.3f}"
  print(line)
  if args.json:
    pathlib.Path(args.json).write_text(json.dumps(result, indent=1))
  return 0


if __name__ == "__main__":
  sys.exit(main())
