"""Subcommand dispatch shared by `python -m converters` and `cgn_jax.sample`.

Each subcommand is a module exposing `add_arguments(parser)` and `run(args)`;
only the module of the subcommand being run is imported, so one model's
imports never slow another's.
"""

import argparse
import importlib
import sys


def dispatch(prog: str, commands: dict[str, tuple[str, str]],
             argv=None) -> int:
  """Parses `argv` as `NAME [ARGS]` and runs `commands[NAME]`'s module.

  Args:
    prog: program name for usage messages.
    commands: name -> (module path, one-line help).
    argv: arguments without the program name (default sys.argv[1:]).

  Returns:
    The module's `run(args)` result, 0 when it returns None.
  """
  parser = argparse.ArgumentParser(prog=prog)
  sub = parser.add_subparsers(dest="command", required=True)
  argv = sys.argv[1:] if argv is None else argv
  for name, (module, help_) in commands.items():
    p = sub.add_parser(name, help=help_)
    if argv and argv[0] == name:
      importlib.import_module(module).add_arguments(p)
  args = parser.parse_args(argv)
  return importlib.import_module(commands[args.command][0]).run(args) or 0
