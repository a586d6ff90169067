"""`python -m cgn_jax.sample {biggan,u2net} ...`: one subcommand per model.

Each subcommand lives in its own module exposing `add_arguments(parser)` and
`run(args)`; they are imported lazily so one model's imports never slow the
other.
"""

import argparse
import importlib
import sys

_COMMANDS = {
    "biggan": ("cgn_jax.sample.biggan", "sample BigGAN-deep images"),
    "u2net": ("cgn_jax.sample.u2net", "U^2-Net saliency mask of an image"),
}


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m cgn_jax.sample")
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
