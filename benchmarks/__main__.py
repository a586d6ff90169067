"""Command line of the benchmark harness."""

import argparse
import json
import sys

from benchmarks import harness
from cgn_jax import cli


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
      prog="python -m benchmarks",
      description="Times training steps and generators; prints one JSON "
      "record per benchmark. NAME selects a benchmark or a group "
      "(e.g. 'mnist_variants'). On a CPU backend the CPU defaults of "
      "cgn_jax/platform.py are applied first; --no-cpu-defaults skips "
      "them, --verbose shows tracebacks.")
  parser.add_argument("names", nargs="*", metavar="NAME")
  parser.add_argument("--list", action="store_true", help="list and exit")
  parser.add_argument("--json", metavar="FILE", help="write all records here")
  parser.add_argument("--repeats", type=int, default=None,
                      help="timed calls after warm-up (default: per bench)")
  args = parser.parse_args(argv)
  try:
    chosen = harness.select(harness.discover(), args.names)
  except ValueError as e:
    parser.error(str(e))
  if args.list:
    for b in chosen:
      print(f"{b.name}\tbatch={b.batch}")
    return 0
  records = []
  for b in chosen:
    rec = harness.run(b, args.repeats)
    records.append(rec)
    print(json.dumps(rec), flush=True)
    if args.json:  # rewrite after each record so a crash keeps the rest
      with open(args.json, "w") as f:
        json.dump(records, f, indent=1)
  return 0


if __name__ == "__main__":
  sys.exit(cli.run_main(main, prog="python -m benchmarks"))
