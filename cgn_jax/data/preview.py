"""Writes a 10x10 preview grid of one MNIST variant (one row per class).

  python -m cgn_jax.data.preview --dataset wildlife --split train \
      --out wildlife_train.png [--seed 0] [--scale 2]

Row c shows the first ten digits of class c in the chosen split, rendered
with the variant's renderer from `--seed`.
"""

import argparse
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from cgn_jax.data import variants

PAD = 2  # pixels of black between tiles


def grid(images: np.ndarray, rows: int, cols: int, pad: int = PAD
         ) -> np.ndarray:
  """Tiles float [rows*cols, H, W, 3] images in [-1, 1] into a uint8 grid.

  Args:
    images: row-major tiles.
    rows: number of rows.
    cols: number of columns.
    pad: black pixels between and around tiles.

  Returns:
    uint8 [rows*(H+pad)+pad, cols*(W+pad)+pad, 3].
  """
  n, h, w, c = images.shape
  assert n == rows * cols, (n, rows, cols)
  u8 = np.round((np.clip(images, -1., 1.) + 1.) * 127.5).astype(np.uint8)
  out = np.zeros((rows * (h + pad) + pad, cols * (w + pad) + pad, c),
                 np.uint8)
  for i in range(n):
    r, q = divmod(i, cols)
    y, x = pad + r * (h + pad), pad + q * (w + pad)
    out[y:y + h, x:x + w] = u8[i]
  return out


def preview(dataset: str, split: str, seed: int = 0, per_class: int = 10,
            data_dir=None) -> np.ndarray:
  """Renders `per_class` examples of each class; returns the uint8 grid."""
  inputs, labels = variants.split_arrays(dataset, split, data_dir)
  idx = np.concatenate([
      np.flatnonzero(labels == c)[:per_class]
      for c in range(variants.NUM_CLASSES)])
  render = variants.jitted_renderer(dataset)
  images = render(jnp.asarray(inputs[idx]), jnp.asarray(labels[idx]),
                  jax.random.key(seed), split)
  return grid(np.asarray(images), variants.NUM_CLASSES, per_class)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
      prog="python -m cgn_jax.data.preview", description=__doc__.split("\n")[0])
  parser.add_argument("--dataset", required=True, choices=variants.VARIANTS)
  parser.add_argument("--split", default="train", choices=variants.SPLITS)
  parser.add_argument("--out", required=True, help="PNG file to write")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--scale", type=int, default=1,
                      help="integer upscaling of the grid, for viewing")
  parser.add_argument("--data_dir", default=None,
                      help="TFDS data dir (default CGN_TFDS_DIR, else "
                      "~/tensorflow_datasets)")
  args = parser.parse_args(argv)
  g = preview(args.dataset, args.split, args.seed, data_dir=args.data_dir)
  if args.scale > 1:
    g = g.repeat(args.scale, 0).repeat(args.scale, 1)
  out = pathlib.Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(g).save(out)
  print(f"wrote {out} ({g.shape[1]}x{g.shape[0]})")
  return 0


if __name__ == "__main__":
  sys.exit(main())
