"""`python -m cgn_jax.sample {biggan,u2net} ...`: one subcommand per model."""

import sys

from cgn_jax import cli

COMMANDS = {
    "biggan": ("cgn_jax.sample.biggan", "sample BigGAN-deep images"),
    "u2net": ("cgn_jax.sample.u2net", "U^2-Net saliency mask of an image"),
    "cgn-imagenet": ("cgn_jax.sample.cgn_imagenet",
                     "ImageNet CGN interpolation sheets, GIFs and grids"),
}


def main(argv=None) -> int:
  return cli.dispatch("python -m cgn_jax.sample", COMMANDS, argv)


if __name__ == "__main__":
  sys.exit(main())
