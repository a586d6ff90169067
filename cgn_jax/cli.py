"""What every command line shares: errors, --verbose, CPU defaults, dispatch.

Entry points (train.py, generate.py, the experiments, `python -m
converters`, `python -m cgn_jax.sample`) run through `run_absl_app`,
`run_main` or `dispatch`, so that they all behave the same way:

* an error (missing data, a bad checkpoint, a bad flag or config override)
  prints ONE line, `PROG: error: MESSAGE (--verbose for the traceback)`, and
  exits with status 1; `--verbose` (or CGN_JAX_VERBOSE=1) shows the
  traceback instead;
* with `cpu_defaults=True`, `platform.apply_cpu_defaults()` runs before
  anything initialises a JAX backend, unless `--no-cpu-defaults` is given
  (see cgn_jax/platform.py for when it applies).
* then `distributed.initialize()` joins the other processes of a
  multi-process run (`--coordinator=HOST:PORT --num_processes=N
  --process_id=I`, their JAX_* variables, or srun/mpirun) and does nothing
  on one process; an error in any process stops all of them, each saying
  which process failed (see cgn_jax/distributed.py).

`--verbose` and `--no-cpu-defaults` are taken out of argv here, before the
entry point's own parser sees it.
"""

import argparse
import importlib
import os
import sys
from typing import Callable, Sequence

VERBOSE = "--verbose"
NO_CPU_DEFAULTS = "--no-cpu-defaults"


def pop_switches(argv: Sequence[str]) -> tuple[list[str], bool, bool]:
  """Removes --verbose and --no-cpu-defaults from argv.

  Returns:
    (argv without them, verbose, cpu_defaults).
  """
  rest = [a for a in argv if a not in (VERBOSE, NO_CPU_DEFAULTS)]
  verbose = VERBOSE in argv or os.environ.get("CGN_JAX_VERBOSE") == "1"
  return rest, verbose, NO_CPU_DEFAULTS not in argv


def one_line(error: BaseException) -> str:
  """An exception as one line: its message, lines joined with '; '."""
  text = str(error)
  if isinstance(error, KeyError) and error.args:  # str() adds quotes
    text = str(error.args[0])
  lines = [l.strip() for l in text.splitlines() if l.strip()]
  return "; ".join(lines) or type(error).__name__


def fail(prog: str, error: BaseException) -> None:
  """Prints `error` as one line on stderr and exits with status 1.

  In a multi-process run the other processes stop too (they would wait in
  their next collective for this one), each printing this message.
  """
  line = f"{prog}: error: {one_line(error)}"
  print(f"{line} ({VERBOSE} for the traceback)", file=sys.stderr, flush=True)
  if "jax" in sys.modules:
    from cgn_jax import distributed  # pylint: disable=g-import-not-at-top
    if distributed.is_multi_process():
      distributed.report_failure(
          f"process {distributed.process_index()} failed: {line}")
  raise SystemExit(1)


def _initialize_distributed(**explicit) -> None:
  from cgn_jax import distributed  # pylint: disable=g-import-not-at-top
  distributed.initialize(**explicit)


def _apply_cpu_defaults(enabled: bool, *, say: bool = False) -> None:
  """Applies the CPU defaults; `say`: also print what on stderr (argparse
  programs, whose absl log shows only warnings)."""
  from cgn_jax import platform  # pylint: disable=g-import-not-at-top
  done = platform.apply_cpu_defaults(enabled=enabled)
  if say and any(done.values()):
    print(platform.summary(done), file=sys.stderr, flush=True)


def run_main(main: Callable[[list[str]], int | None], argv=None, *,
             prog: str | None = None, cpu_defaults: bool = True,
             multi_process: bool = True) -> int:
  """Runs an argparse-style `main(argv) -> int` with the shared behaviour.

  `--coordinator=`, `--num_processes=`, `--process_id=` and
  `--distributed` are taken out of argv for `distributed.initialize` (with
  `multi_process`; tools that never compute across processes pass False).

  Returns:
    main's exit status (0 when it returns None); errors exit via `fail`.
  """
  argv = sys.argv[1:] if argv is None else list(argv)
  argv, verbose, cpu = pop_switches(argv)
  explicit = {}
  if multi_process:
    from cgn_jax import distributed  # pylint: disable=g-import-not-at-top
    argv, explicit = distributed.pop_args(argv)
  prog = prog or os.path.basename(sys.argv[0])
  if cpu_defaults:
    _apply_cpu_defaults(cpu, say=True)
  try:
    if multi_process:
      _initialize_distributed(**explicit)
    return main(argv) or 0
  except Exception as e:  # pylint: disable=broad-except
    if verbose:
      raise
    fail(prog, e)


def run_absl_app(main: Callable, argv=None, *,
                 cpu_defaults: bool = True) -> None:
  """`absl.app.run(main)` with the shared behaviour (exits).

  Flags are parsed here, inside the error guard: config_flags loads the
  config file and applies `--config.x=...` overrides while parsing, and a
  bad one raises (AttributeError, KeyError, flags.Error, ...).
  """
  from absl import app  # pylint: disable=g-import-not-at-top
  from absl import flags  # pylint: disable=g-import-not-at-top
  argv = sys.argv if argv is None else list(argv)
  rest, verbose, cpu = pop_switches(argv[1:])
  argv = [argv[0], *rest]
  prog = os.path.basename(argv[0])
  sys.argv = argv  # config_flags reads its overrides from sys.argv
  app.define_help_flags()
  from cgn_jax import distributed  # pylint: disable=g-import-not-at-top
  distributed.define_flags()
  try:
    remaining = flags.FLAGS(argv)
  except Exception as e:  # pylint: disable=broad-except
    if verbose:
      raise
    fail(prog, e)

  def guarded(args):
    if cpu_defaults:
      _apply_cpu_defaults(cpu)
    try:
      distributed.initialize_from_flags()
      return main(args)
    except app.UsageError:
      raise
    except Exception as e:  # pylint: disable=broad-except
      if verbose:
        raise
      fail(prog, e)

  app.run(guarded, argv=argv, flags_parser=lambda _: remaining)


def dispatch(prog: str, commands: dict[str, tuple[str, str]],
             argv=None, *, cpu_defaults: bool = False) -> int:
  """Parses `argv` as `NAME [ARGS]` and runs `commands[NAME]`'s module.

  Each subcommand is a module exposing `add_arguments(parser)` and
  `run(args)`; only the module of the subcommand being run is imported, so
  one model's imports never slow another's.

  Args:
    prog: program name for usage and error messages.
    commands: name -> (module path, one-line help).
    argv: arguments without the program name (default sys.argv[1:]).
    cpu_defaults: apply the CPU defaults (for commands that compute).

  Returns:
    The module's `run(args)` result, 0 when it returns None.
  """
  def main(argv):
    parser = argparse.ArgumentParser(prog=prog)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module, help_) in commands.items():
      p = sub.add_parser(name, help=help_)
      if argv and argv[0] == name:
        importlib.import_module(module).add_arguments(p)
    args = parser.parse_args(argv)
    return importlib.import_module(commands[args.command][0]).run(args)

  return run_main(main, argv, prog=prog, cpu_defaults=cpu_defaults,
                  multi_process=False)
