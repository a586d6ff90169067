"""`python -m converters {vgg16,cgn-mnist,biggan,u2net} --input F --output DIR`.

Each converter module exposes `add_arguments(parser)` and `run(args)`; the
module is imported only for the subcommand that runs.
"""

import argparse
import importlib
import sys

_COMMANDS = {
    "vgg16": ("converters.vgg16", "torchvision VGG16 (ImageNet) features"),
    "cgn-mnist": ("converters.cgn_mnist", "the authors' MNIST CGN ckp.pth"),
    "biggan": ("converters.biggan", "pytorch-pretrained-biggan weights"),
    "u2net": ("converters.u2net", "U^2-Net / U^2-Netp released weights"),
}


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m converters")
  sub = parser.add_subparsers(dest="command", required=True)
  argv = sys.argv[1:] if argv is None else argv
  for name, (module, help_) in _COMMANDS.items():
    p = sub.add_parser(name, help=help_)
    if argv and argv[0] == name:
      importlib.import_module(module).add_arguments(p)
  args = parser.parse_args(argv)
  return importlib.import_module(_COMMANDS[args.command][0]).run(args) or 0


if __name__ == "__main__":
  sys.exit(main())
