"""Sample a class grid from converted BigGAN-deep weights.

  python -m cgn_jax.sample biggan --weights weights/biggan-deep-256 \\
      --classes 207 933 --truncation 0.4 --n 8 --seed 0 --out grid.png

One row per class. The noise follows the package's `truncated_noise_sample`
(truncation * scipy truncnorm(-2, 2)), drawn with
`jax.random.truncated_normal` from `--seed`, so it is reproducible in JAX
but not the same numbers as scipy's.
"""

import jax
import jax.numpy as jnp
import numpy as np

from cgn_jax.models import biggan
from cgn_jax.models import biggan_weights


def truncated_noise(key, batch: int, z_dim: int = 128,
                    truncation: float = 1.0):
  """truncation * TruncNormal(-2, 2) noise, [batch, z_dim] float32."""
  return truncation * jax.random.truncated_normal(
      key, -2.0, 2.0, (batch, z_dim), jnp.float32)


def make_sampler(model: biggan.BigGAN, truncation: float):
  """A jitted `(variables, key, labels [B] int) -> images [B, H, W, 3]`."""

  @jax.jit
  def sample(variables, key, labels):
    z = truncated_noise(key, labels.shape[0], model.z_dim, truncation)
    y = jax.nn.one_hot(labels, model.num_classes)
    return model.apply(variables, z, y, truncation)[0]

  return sample


def to_grid(images, rows: int) -> np.ndarray:
  """[rows * cols, H, W, 3] in [-1, 1] -> one uint8 image, row-major."""
  images = np.asarray(images, np.float32)
  n, h, w, c = images.shape
  cols = n // rows
  grid = images.reshape(rows, cols, h, w, c).transpose(0, 2, 1, 3, 4)
  grid = np.clip((grid.reshape(rows * h, cols * w, c) + 1) * 127.5, 0, 255)
  return np.round(grid).astype(np.uint8)


def add_arguments(parser) -> None:
  parser.add_argument("--weights", required=True,
                      help="directory written by `python -m converters "
                      "biggan`")
  parser.add_argument("--classes", type=int, nargs="+", required=True,
                      help="ImageNet class indices, one grid row each")
  parser.add_argument("--truncation", type=float, default=0.4)
  parser.add_argument("--n", type=int, default=8, help="images per class")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--dtype", default="float32",
                      choices=("float32", "bfloat16"))
  parser.add_argument("--bn-interpolation", default="package",
                      choices=biggan.BN_INTERPOLATIONS)
  parser.add_argument("--out", default="grid.png")


def run(args) -> int:
  from PIL import Image  # pylint: disable=g-import-not-at-top
  config, variables = biggan_weights.load(args.weights)
  bad = [c for c in args.classes if not 0 <= c < config["num_classes"]]
  if bad:
    raise SystemExit(f"--classes {bad} out of range [0, "
                     f"{config['num_classes']})")
  model = biggan.BigGAN.from_config(
      config, dtype=jnp.dtype(args.dtype),
      bn_interpolation=args.bn_interpolation)
  labels = jnp.repeat(jnp.asarray(args.classes, jnp.int32), args.n)
  sample = make_sampler(model, args.truncation)
  images = sample(variables, jax.random.PRNGKey(args.seed), labels)
  Image.fromarray(to_grid(images, len(args.classes))).save(args.out)
  print(f"wrote {args.out}: {len(args.classes)} x {args.n} images at "
        f"truncation {args.truncation}")
  return 0

