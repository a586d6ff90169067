"""Paper Table 2 (MNIST) with one command: generate, train, tabulate.

  python -m cgn_jax.experiments.mnist_table --cgn-dir CGN_DIR \
      --workdir DIR [--num 1000000] [--epochs 10] [--seeds 3] \
      [--settings cf_only,cf_real] [--steps-per-call 100]

For each variant (colored, double_colored, wildlife) this generates a
counterfactual dataset with the variant's CGN (`generate.py`), trains the
invariant classifier on the counterfactuals alone (the upstream code) and on
counterfactuals + the real training images ("Original + CGN" as [RR] ran
it), and prints a markdown table of the final-epoch train/test accuracies
next to the paper's and the reproduction's numbers (SPEC §8.1, §8.2); each
of our rows names N, counterfactuals per shape, epochs, seeds and the
machine. With --seeds K > 1 every setting trains K classifiers (seeds
--seed..--seed+K-1) as one vmapped program
(cgn_jax/train/classifier_mnist_many.py, DIR/<variant>/<setting>/seed_<s>/)
and the table shows mean ± std (ddof 1) over them. The
table is saved as DIR/mnist_table.md and DIR/mnist_table.json. Finished
stages are reused when the command is rerun with the same DIR, but only if
they were made with the same CGN (weights sha256), --num, --cfs-per-shape,
--seed and classifier settings (their provenance records); a stage made
differently is an error naming the field, and --overwrite redoes it.

CGN_DIR holds one CGN per variant, either as converted directories

  CGN_DIR/colored/  CGN_DIR/double_colored/  CGN_DIR/wildlife/

(each written by `python -m converters cgn-mnist --input
cgn_<variant>_MNIST.pth --output CGN_DIR/<variant>`), or as the authors' raw
checkpoints `CGN_DIR/cgn_<variant>_MNIST.pth` (converted in memory; needs
torch). The shared asset folder `data/cgn_upstream/` has that layout.

Outputs per variant: DIR/<variant>/data (generate.py's workdir),
DIR/<variant>/cf_only and DIR/<variant>/cf_real (train.py workdirs with
results.json).
"""

import argparse
import json
import pathlib
import sys
import time

import numpy as np

from cgn_jax import cli
from cgn_jax import distributed
from cgn_jax.train import common

VARIANTS = ("colored", "double_colored", "wildlife")
SHORT = {"colored": "C", "double_colored": "DC", "wildlife": "W"}
SETTINGS = {"cf_only": "counterfactual", "cf_real": "counterfactual+real"}

# (train, test) accuracy in %, per variant. SPEC §8.1 (paper Table 2, as
# quoted by [BG] and confirmed by [RR]) and §8.2 ([RR] Table 3, 1e6 CFs).
REFERENCE_ROWS = (
    ("paper: Original + CGN",
     {"colored": (99.7, 95.1), "double_colored": (97.4, 89.0),
      "wildlife": (99.2, 85.7)}),
    ("[RR] pretrained CGN, with real images",
     {"colored": (100.0, 96.98), "double_colored": (98.9, 92.29),
      "wildlife": (99.7, 88.35)}),
    ("[RR] pretrained CGN, without real images",
     {"colored": (100.0, 92.70), "double_colored": (98.9, 90.42),
      "wildlife": (99.8, 85.09)}),
)


def find_cgn(cgn_dir, variant: str) -> pathlib.Path:
  """The CGN of `variant` in `cgn_dir` (converted dir or upstream .pth)."""
  cgn_dir = pathlib.Path(cgn_dir)
  candidates = [cgn_dir / variant, cgn_dir / f"cgn_{variant}_MNIST",
                cgn_dir / f"cgn_{variant}_MNIST.pth"]
  for c in candidates:
    if c.exists():
      return c
  raise FileNotFoundError(
      f"no CGN for {variant} in {cgn_dir}: expected one of "
      f"{[c.name for c in candidates]}. Convert the authors' checkpoint with "
      f"`python -m converters cgn-mnist --input cgn_{variant}_MNIST.pth "
      f"--output {cgn_dir / variant}`")


class Interrupted(RuntimeError):
  """A stage was stopped by a signal (its checkpoint is saved)."""


def run_variant(variant: str, args, *, cgn=None, root=None) -> dict:
  """Generates and trains both settings for one variant; returns results.

  `cgn` (default: the variant's CGN in --cgn-dir) and `root` (default:
  DIR/<variant>) let other commands run the same stages on other CGNs. With
  --seeds K > 1 each setting trains K classifiers (seeds S..S+K-1) in one
  vmapped program (cgn_jax/train/classifier_mnist_many.py) and reports the
  mean and std over them.
  """
  from cgn_jax.counterfactuals import mnist as counterfactuals  # pylint: disable=g-import-not-at-top
  from cgn_jax.data import shards  # pylint: disable=g-import-not-at-top
  from cgn_jax.train import classifier_mnist  # pylint: disable=g-import-not-at-top
  from cgn_jax.train import classifier_mnist_many  # pylint: disable=g-import-not-at-top
  from configs import classifier_mnist as cls_config  # pylint: disable=g-import-not-at-top
  from configs import counterfactuals_mnist as gen_config  # pylint: disable=g-import-not-at-top
  root = pathlib.Path(root or pathlib.Path(args.workdir) / variant)
  seeds = max(1, getattr(args, "seeds", 1))
  out = {"timings_s": {}}
  t0 = time.perf_counter()
  gen = gen_config.get_config(variant)
  gen.cgn = str(cgn or find_cgn(args.cgn_dir, variant))
  gen.num = args.num
  gen.cfs_per_shape = args.cfs_per_shape
  gen.seed = args.seed
  gen.num_real = args.num_real
  gen.overwrite = args.overwrite
  gen.shapes_per_block = min(gen.shapes_per_block,
                             max(100, args.num // args.cfs_per_shape // 100
                                 * 100))
  counterfactuals.run_config(gen, root / "data")
  out["timings_s"]["generate"] = time.perf_counter() - t0
  out["num_counterfactuals"] = len(shards.ShardedSource(
      root / "data" / counterfactuals.CF_DIR))
  for name, train_on in SETTINGS.items():
    if name not in getattr(args, "settings", SETTINGS):
      continue
    t0 = time.perf_counter()
    c = cls_config.get_config(variant)
    c.counterfactuals = str(root / "data")
    c.train_on = train_on
    c.epochs = args.epochs
    c.seed = args.seed
    c.test_subset = args.test_subset
    c.num_real = args.num_real
    c.overwrite = args.overwrite
    if seeds > 1:
      c.trainer = "classifier_mnist_many"
      c.seeds = tuple(range(args.seed, args.seed + seeds))
      c.steps_per_call = getattr(args, "steps_per_call", 1)
      runs = classifier_mnist_many.train_and_evaluate(
          c, root / name)["per_seed"].values()
    else:
      runs = [classifier_mnist.train_and_evaluate(c, root / name)]
    for results in runs:
      if len(results["epochs"]) < c.epochs:
        # The trainer saved and returned early (SIGTERM): stop the whole
        # table instead of moving on; every stage resumes on a rerun.
        raise Interrupted(
            f"{variant}/{name} stopped after {len(results['epochs'])} of "
            f"{c.epochs} epochs; rerun the same command to resume")
    out[name] = _seed_stats([r["epochs"][-1] for r in runs])
    out[name]["epochs"] = len(next(iter(runs))["epochs"])
    out["timings_s"][name] = time.perf_counter() - t0
  return out


def _seed_stats(finals: list[dict]) -> dict:
  """Final-epoch accuracies in % over seeds: mean, std (ddof 1), N."""
  out = {"n": len(finals)}
  for key in ("train_accuracy", "test_accuracy"):
    v = np.array([100 * f[key] for f in finals], np.float64)
    out[key] = float(v.mean())
    out[key + "_std"] = float(v.std(ddof=1)) if len(v) > 1 else 0.0
    out[key + "_values"] = v.tolist()
  return out


def machine() -> str:
  """'gpu: NVIDIA H200' etc.: where the numbers were measured."""
  import jax  # pylint: disable=g-import-not-at-top
  d = jax.devices()[0]
  return f"{d.platform}: {d.device_kind} x{jax.device_count()}"


def _fmt(x) -> str:
  if isinstance(x, (tuple, list)) and len(x) == 2 and x[1] is not None:
    return f"{x[0]:.2f} ± {x[1]:.2f}"
  if isinstance(x, (tuple, list)):
    x = x[0]
  return "–" if x is None else f"{x:.2f}"


def make_table(results: dict, args) -> tuple[str, list[dict]]:
  """(markdown, rows) with our two rows, then the reference rows."""
  rows = []
  seeds = max(1, getattr(args, "seeds", 1))
  where = f", {seeds} seed{'s' * (seeds > 1)}, {machine()}"
  for name, label in (("cf_only", "ours: counterfactuals only"),
                      ("cf_real", "ours: counterfactuals + real")):
    rows.append({"setting": f"{label} (N={args.num}, "
                            f"{args.cfs_per_shape} CF/shape, "
                            f"{args.epochs} ep{where})",
                 **{v: ((results[v][name]["train_accuracy"],
                         results[v][name]["test_accuracy"])
                        if v in results and name in results[v] else None)
                    for v in VARIANTS}})
    if seeds > 1:  # mean ± std over the seeds
      rows[-1]["std"] = {v: (results[v][name]["train_accuracy_std"],
                             results[v][name]["test_accuracy_std"])
                         for v in VARIANTS if v in results}
  for label, ref in REFERENCE_ROWS:
    rows.append({"setting": label, **ref})
  head = ["setting"] + [f"{SHORT[v]} {s}" for v in VARIANTS
                        for s in ("train", "test")]
  lines = ["| " + " | ".join(head) + " |",
           "|" + "---|" * len(head)]
  for r in rows:
    cells = [r["setting"]]
    for v in VARIANTS:
      std = r.get("std", {}).get(v, (None, None))
      cells += [_fmt((x, sd)) for x, sd in zip(r[v] or (None, None), std)]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n", rows


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(
      prog="python -m cgn_jax.experiments.mnist_table",
      description=__doc__.split("\n\n")[0])
  p.add_argument("--cgn-dir", required=True,
                 help="folder with <variant>/ converted CGNs or the "
                 "upstream cgn_<variant>_MNIST.pth files")
  p.add_argument("--workdir", required=True)
  p.add_argument("--num", type=int, default=1_000_000,
                 help="counterfactual images per variant ([RR]: 1e6)")
  p.add_argument("--cfs-per-shape", type=int, default=10)
  p.add_argument("--epochs", type=int, default=10)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--seeds", type=int, default=1,
                 help="classifier seeds per setting (seed..seed+K-1), "
                 "trained as one vmapped program; the table shows mean ± std")
  p.add_argument("--steps-per-call", type=int, default=1,
                 help="classifier steps per lax.scan call (with --seeds > 1;"
                 " 50-100 on a GPU)")
  p.add_argument("--test-subset", type=int, default=0,
                 help="test on the first N test images (0 = all)")
  p.add_argument("--num-real", type=int, default=0,
                 help="mix in only the first N real images (0 = all)")
  p.add_argument("--settings", default=",".join(SETTINGS),
                 type=lambda t: [w for w in t.split(",") if w],
                 help="comma-separated subset of " + ",".join(SETTINGS))
  p.add_argument("--overwrite", action="store_true",
                 help="redo stages made with other settings instead of "
                 "stopping with an error")
  p.add_argument("--variants", default=",".join(VARIANTS),
                 help="comma-separated subset of " + ",".join(VARIANTS))
  return p.parse_args(argv)


def main(argv=None) -> int:
  args = parse_args(argv)
  variants = [v for v in args.variants.split(",") if v]
  bad = sorted(set(variants) - set(VARIANTS))
  if bad:
    raise SystemExit(f"unknown variants {bad}; choose from {VARIANTS}")
  workdir = pathlib.Path(args.workdir)
  results = {}
  try:
    for v in variants:
      results[v] = run_variant(v, args)
  except Interrupted as e:
    print(f"interrupted: {e}", file=sys.stderr)
    return 143  # 128 + SIGTERM, as a shell reports a terminated job
  markdown, rows = make_table(results, args)
  if distributed.is_main_process():  # several processes: one table
    print(markdown)
    (workdir / "mnist_table.md").write_text(markdown)
  common.write_json(workdir / "mnist_table.json",
                    {"args": vars(args), "rows": rows, "results": results})
  return 0


if __name__ == "__main__":
  sys.exit(cli.run_main(main, prog="python -m cgn_jax.experiments.mnist_table"))
