"""`python -m converters {vgg16,cgn-mnist,biggan,u2net} --input F --output DIR`."""

import sys

from cgn_jax import cli

COMMANDS = {
    "vgg16": ("converters.vgg16", "torchvision VGG16 (ImageNet) features"),
    "cgn-mnist": ("converters.cgn_mnist", "the authors' MNIST CGN ckp.pth"),
    "biggan": ("converters.biggan", "pytorch-pretrained-biggan weights"),
    "u2net": ("converters.u2net", "U^2-Net / U^2-Netp released weights"),
    "cgn-imagenet": ("converters.cgn_imagenet", "the authors' ImageNet CGN cgn.pth"),
}


def main(argv=None) -> int:
  return cli.dispatch("python -m converters", COMMANDS, argv)


if __name__ == "__main__":
  sys.exit(main())
