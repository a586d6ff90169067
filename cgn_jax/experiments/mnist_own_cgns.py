"""Paper Table 2 (MNIST) from CGNs trained by this code, seeds in parallel.

  python -m cgn_jax.experiments.mnist_own_cgns --workdir DIR \
      [--seeds 3] [--cgn-epochs 15] [--num 1000000] [--epochs 10] \
      [--steps-per-call 100] [--stage cgn|table|all]

Stage `cgn`: for each dataset (colored, colored with the edge loss
`:edge`, double-colored, wildlife) K CGNs (seeds 0..K-1) train for
upstream's 15 epochs as one vmapped program
(cgn_jax/train/cgn_mnist_many.py) into DIR/cgn/<name>/seed_<s>/, each
exported as DIR/cgn/<name>/seed_<s>/generator. Stage `table`: each
generator makes its counterfactual dataset and trains the classifier on it
(counterfactuals only and counterfactuals + real, as
cgn_jax/experiments/mnist_table.py) in DIR/table/<name>/seed_<s>/; the
table shows the mean ± std over the K CGNs beside the paper's and [RR]'s
numbers (SPEC §8.1, §8.2), and is saved as DIR/own_cgns.md / .json. Both
stages resume on a rerun. `--cgn-steps N` (smoke runs) trains N steps
instead of whole epochs.
"""

import argparse
import pathlib
import sys


from cgn_jax import cli
from cgn_jax.experiments import mnist_table
from cgn_jax.train import common

# name -> (variant, extra config words)
CGNS = {"colored": ("colored", ""), "colored_edge": ("colored", "edge"),
        "double_colored": ("double_colored", ""),
        "wildlife": ("wildlife", "")}

# (train, test) in %: [RR] Table 3, their own-trained CGNs (SPEC §8.2).
OWN_REFERENCE_ROWS = (
    ("[RR] own-trained CGN, with real images",
     {"colored": (98.7, 68.96), "double_colored": (96.8, 88.54),
      "wildlife": (99.9, 72.93)}),
    ("[RR] own-trained CGN, without real images",
     {"colored": (98.7, 43.88), "double_colored": (96.7, 87.90),
      "wildlife": (99.9, 75.28)}),
)


def train_cgns(name: str, args) -> pathlib.Path:
  from cgn_jax.train import cgn_mnist_many  # pylint: disable=g-import-not-at-top
  from configs import cgn_mnist_many as config_lib  # pylint: disable=g-import-not-at-top
  variant, extra = CGNS[name]
  words = ",".join(w for w in (variant, extra, f"seeds={args.seeds}",
                               "smoke" if args.smoke else "") if w)
  c = config_lib.get_config(words)
  c.seeds = tuple(range(args.seed, args.seed + args.seeds))
  c.num_epochs = args.cgn_epochs
  if args.cgn_steps:
    c.num_train_steps = args.cgn_steps
  c.steps_per_call = args.steps_per_call
  c.progress_bar = False
  c.overwrite = args.overwrite
  if args.vgg16:
    c.perceptual.vgg16 = args.vgg16
  out = pathlib.Path(args.workdir) / "cgn" / name
  cgn_mnist_many.train_and_evaluate(c, out)
  return out


def table_for(name: str, args) -> dict:
  """Both settings for each of the K CGNs of `name`; mean ± std over K."""
  from cgn_jax.train import cgn_mnist_many  # pylint: disable=g-import-not-at-top
  variant, _ = CGNS[name]
  per_cgn = []
  targs = argparse.Namespace(**vars(args))
  targs.seeds = 1  # one classifier per CGN: the CGN seed is the spread
  for s in range(args.seed, args.seed + args.seeds):
    gen = cgn_mnist_many.model_dir(pathlib.Path(args.workdir) / "cgn" / name,
                                   s) / cgn_mnist_many.GENERATOR_DIR
    if not gen.exists():
      raise FileNotFoundError(f"{gen} does not exist: run --stage cgn first")
    targs.seed = s
    per_cgn.append(mnist_table.run_variant(
        variant, targs, cgn=gen,
        root=pathlib.Path(args.workdir) / "table" / name / f"seed_{s}"))
  out = {"per_cgn": per_cgn}
  for setting in mnist_table.SETTINGS:
    if setting not in per_cgn[0]:
      continue
    finals = [{k: r[setting][k] / 100 for k in ("train_accuracy",
                                                 "test_accuracy")}
              for r in per_cgn]
    out[setting] = mnist_table._seed_stats(finals)  # pylint: disable=protected-access
  return out


def make_table(results: dict, args) -> tuple[str, list[dict]]:
  rows = []
  for setting, label in (("cf_only", "counterfactuals only"),
                         ("cf_real", "counterfactuals + real")):
    for suffix, names in (("", ("colored", "double_colored", "wildlife")),
                          (" (colored: edge loss)", ("colored_edge",))):
      cells = {}
      for name in names:
        r = results.get(name, {}).get(setting)
        if r:
          cells[CGNS[name][0]] = r
      if not cells:
        continue
      rows.append({
          "setting": f"ours, own CGNs{suffix}: {label} (N={args.num}, "
                     f"{args.cfs_per_shape} CF/shape, {args.epochs} ep, "
                     f"CGN {args.cgn_steps or args.cgn_epochs} "
                     f"{'steps' if args.cgn_steps else 'ep'}, "
                     f"{args.seeds} CGN seeds, {mnist_table.machine()})",
          **{v: ((cells[v]["train_accuracy"], cells[v]["test_accuracy"])
                 if v in cells else None) for v in mnist_table.VARIANTS},
          "std": {v: (cells[v]["train_accuracy_std"],
                      cells[v]["test_accuracy_std"]) for v in cells}})
  for label, ref in mnist_table.REFERENCE_ROWS[:1] + OWN_REFERENCE_ROWS:
    rows.append({"setting": label, **ref})
  head = ["setting"] + [f"{mnist_table.SHORT[v]} {s}"
                        for v in mnist_table.VARIANTS
                        for s in ("train", "test")]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for r in rows:
    cells = [r["setting"]]
    for v in mnist_table.VARIANTS:
      std = r.get("std", {}).get(v, (None, None))
      cells += [mnist_table._fmt((x, sd))  # pylint: disable=protected-access
                for x, sd in zip(r[v] or (None, None), std)]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n", rows


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(
      prog="python -m cgn_jax.experiments.mnist_own_cgns",
      description=__doc__.split("\n\n")[0])
  p.add_argument("--workdir", required=True)
  p.add_argument("--stage", choices=("cgn", "table", "all"), default="all")
  p.add_argument("--cgns", default=",".join(CGNS),
                 help="comma-separated subset of " + ",".join(CGNS))
  p.add_argument("--seeds", type=int, default=3)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--cgn-epochs", type=int, default=15)
  p.add_argument("--cgn-steps", type=int, default=0,
                 help="train the CGNs this many steps instead (smoke)")
  p.add_argument("--steps-per-call", type=int, default=1,
                 help="CGN steps per lax.scan call (100 on a GPU)")
  p.add_argument("--vgg16", default="",
                 help="override perceptual.vgg16 (default: the config's)")
  p.add_argument("--smoke", action="store_true",
                 help="the CGNs' :smoke config (batch 4, random VGG16)")
  p.add_argument("--num", type=int, default=1_000_000)
  p.add_argument("--cfs-per-shape", type=int, default=10)
  p.add_argument("--epochs", type=int, default=10,
                 help="classifier epochs")
  p.add_argument("--test-subset", type=int, default=0)
  p.add_argument("--num-real", type=int, default=0)
  p.add_argument("--settings", default=",".join(mnist_table.SETTINGS),
                 type=lambda t: [w for w in t.split(",") if w])
  p.add_argument("--overwrite", action="store_true")
  return p.parse_args(argv)


def main(argv=None) -> int:
  args = parse_args(argv)
  names = [n for n in args.cgns.split(",") if n]
  bad = sorted(set(names) - set(CGNS))
  if bad:
    raise SystemExit(f"unknown CGNs {bad}; choose from {sorted(CGNS)}")
  workdir = pathlib.Path(args.workdir)
  if args.stage in ("cgn", "all"):
    for n in names:
      train_cgns(n, args)
  if args.stage in ("table", "all"):
    results = {n: table_for(n, args) for n in names}
    markdown, rows = make_table(results, args)
    print(markdown)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "own_cgns.md").write_text(markdown)
    common.write_json(workdir / "own_cgns.json",
                      {"args": vars(args), "rows": rows,
                       "results": results})
  return 0


if __name__ == "__main__":
  sys.exit(cli.run_main(main,
                        prog="python -m cgn_jax.experiments.mnist_own_cgns"))
