"""The paper's MNIST ablation figure: test accuracy vs. number of CFs.

  python -m cgn_jax.experiments.mnist_ablation --cgn-dir CGN_DIR \
      --workdir DIR [--variants wildlife] [--seeds 3] [--scale 1]
  python -m cgn_jax.experiments.mnist_ablation --workdir DIR --plot-only

The grid is `configs/classifier_mnist.py:get_hyper(variant)`: for each number
of counterfactuals per shape (1/5/10 on colored, 1/5/10/20 on the others)
one dataset of 10⁶ counterfactuals is generated, and the classifier trains
on its first 10⁴, 10⁵ and 10⁶ (as [FA] did), counterfactuals only, K seeds
in one vmapped program (cgn_jax/train/classifier_mnist_many.py).
`--scale S` divides every N by S (a CPU-sized grid: `--scale 100` is
10² / 10³ / 10⁴). Stages are reused on a rerun as in mnist_table.

Writes DIR/ablation.json (every cell: mean, std, N seeds, the values) and
DIR/ablation.png: one panel per variant, test accuracy (%) against log10 N,
one line per counterfactuals-per-shape, ±1 std as error bars. PIL only (no
matplotlib dependency).
"""

import argparse
import json
import math
import pathlib
import sys

from cgn_jax import cli
from cgn_jax.train import common

VARIANTS = ("colored", "double_colored", "wildlife")
COLOURS = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40))


def run_cell(variant: str, gen_over: dict, train_over: dict, args) -> dict:
  """One grid cell: generate (reused across N) and train K seeds."""
  from cgn_jax.counterfactuals import mnist as counterfactuals  # pylint: disable=g-import-not-at-top
  from cgn_jax.experiments import mnist_table  # pylint: disable=g-import-not-at-top
  from cgn_jax.train import classifier_mnist_many  # pylint: disable=g-import-not-at-top
  from configs import classifier_mnist as cls_config  # pylint: disable=g-import-not-at-top
  from configs import counterfactuals_mnist as gen_config  # pylint: disable=g-import-not-at-top
  k = gen_over["cfs_per_shape"]
  num = gen_over["num"] // args.scale
  n = train_over["num_counterfactuals"] // args.scale
  root = pathlib.Path(args.workdir) / variant / f"cfs{k}"
  gen = gen_config.get_config(variant)
  gen.cgn = str(mnist_table.find_cgn(args.cgn_dir, variant))
  gen.num, gen.cfs_per_shape, gen.seed = num, k, args.seed
  gen.overwrite = args.overwrite
  gen.shapes_per_block = min(gen.shapes_per_block,
                             max(100, num // k // 100 * 100))
  counterfactuals.run_config(gen, root / "data")
  c = cls_config.get_config(variant)
  c.trainer = "classifier_mnist_many"
  c.counterfactuals = str(root / "data")
  c.num_counterfactuals = n
  c.epochs, c.seed = args.epochs, args.seed
  c.seeds = tuple(range(args.seed, args.seed + args.seeds))
  c.steps_per_call = args.steps_per_call
  c.test_subset = args.test_subset
  c.overwrite = args.overwrite
  out = classifier_mnist_many.train_and_evaluate(c, root / f"n{n}")
  s = out["summary"]["test_accuracy"]
  return {"variant": variant, "cfs_per_shape": k, "num": n,
          "test_accuracy": 100 * s["mean"], "std": 100 * s["std"],
          "n_seeds": len(s["values"]),
          "values": [100 * v for v in s["values"]],
          "epochs": out["summary"]["epochs"]}


def plot(cells: list[dict], path, title: str = "") -> pathlib.Path:
  """Draws the figure with PIL: a panel per variant, a line per CF/shape."""
  from PIL import Image, ImageDraw, ImageFont  # pylint: disable=g-import-not-at-top
  variants = [v for v in VARIANTS if any(c["variant"] == v for c in cells)]
  pw, ph, m = 360, 300, 50
  img = Image.new("RGB", (pw * max(1, len(variants)), ph + 40), "white")
  d = ImageDraw.Draw(img)
  try:
    font = ImageFont.load_default(size=13)
  except TypeError:  # Pillow < 10.1: bitmap font only
    font = ImageFont.load_default()
  d.text((8, 4), title, fill="black", font=font)
  for p, v in enumerate(variants):
    mine = [c for c in cells if c["variant"] == v]
    xs = sorted({c["num"] for c in mine})
    lo = min(c["test_accuracy"] - c["std"] for c in mine)
    hi = max(c["test_accuracy"] + c["std"] for c in mine)
    lo, hi = math.floor(lo / 5) * 5, math.ceil(hi / 5) * 5
    hi = hi if hi > lo else lo + 5
    x0, y0, x1, y1 = p * pw + m, 30 + 20, (p + 1) * pw - 15, ph - 10
    d.rectangle((x0, y0, x1, y1), outline="black")
    d.text((x0, y0 - 18), v.replace("_", "-"), fill="black", font=font)
    lx = [math.log10(x) for x in xs]
    span = (max(lx) - min(lx)) or 1.0
    fx = lambda n: x0 + 10 + (math.log10(n) - min(lx)) / span * (x1 - x0 - 20)
    fy = lambda a: y1 - (a - lo) / (hi - lo) * (y1 - y0)
    for t in range(lo, hi + 1, 5 if hi - lo <= 40 else 10):
      d.line((x0 - 4, fy(t), x0, fy(t)), fill="black")
      d.text((x0 - 30, fy(t) - 7), f"{t}", fill="black", font=font)
    for n in xs:
      d.line((fx(n), y1, fx(n), y1 + 4), fill="black")
      d.text((fx(n) - 12, y1 + 6), f"1e{math.log10(n):.0f}"
             if float(math.log10(n)).is_integer() else f"{n}", fill="black",
             font=font)
    for j, k in enumerate(sorted({c["cfs_per_shape"] for c in mine})):
      col = COLOURS[j % len(COLOURS)]
      pts = sorted((c["num"], c["test_accuracy"], c["std"]) for c in mine
                   if c["cfs_per_shape"] == k)
      xy = [(fx(n), fy(a)) for n, a, _ in pts]
      if len(xy) > 1:
        d.line(xy, fill=col, width=2)
      for (n, a, s), (x, y) in zip(pts, xy):
        d.ellipse((x - 3, y - 3, x + 3, y + 3), fill=col)
        if s:
          d.line((x, fy(a - s), x, fy(a + s)), fill=col)
      d.text((x0 + 8, y0 + 6 + 15 * j), f"{k} CF/shape", fill=col,
             font=font)
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_suffix(".tmp.png")
  img.save(tmp)
  tmp.replace(path)
  return path


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(
      prog="python -m cgn_jax.experiments.mnist_ablation",
      description=__doc__.split("\n\n")[0])
  p.add_argument("--cgn-dir", help="as mnist_table's --cgn-dir")
  p.add_argument("--workdir", required=True)
  p.add_argument("--variants", default=",".join(VARIANTS))
  p.add_argument("--seeds", type=int, default=1)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--epochs", type=int, default=10)
  p.add_argument("--scale", type=int, default=1,
                 help="divide every N of the grid by this (CPU runs)")
  p.add_argument("--cfs-per-shape", default="",
                 help="comma-separated subset of the grid's CFs per shape")
  p.add_argument("--steps-per-call", type=int, default=1)
  p.add_argument("--test-subset", type=int, default=0)
  p.add_argument("--overwrite", action="store_true")
  p.add_argument("--plot-only", action="store_true",
                 help="redraw DIR/ablation.png from DIR/ablation.json")
  return p.parse_args(argv)


def main(argv=None) -> int:
  args = parse_args(argv)
  workdir = pathlib.Path(args.workdir)
  out_json = workdir / "ablation.json"
  if args.plot_only:
    data = json.loads(out_json.read_text())
    print(plot(data["cells"], workdir / "ablation.png", data["title"]))
    return 0
  if not args.cgn_dir:
    raise SystemExit("--cgn-dir is required unless --plot-only")
  from configs import classifier_mnist as cls_config  # pylint: disable=g-import-not-at-top
  from cgn_jax.experiments import mnist_table  # pylint: disable=g-import-not-at-top
  variants = [v for v in args.variants.split(",") if v]
  bad = sorted(set(variants) - set(VARIANTS))
  if bad:
    raise SystemExit(f"unknown variants {bad}; choose from {VARIANTS}")
  only = {int(k) for k in args.cfs_per_shape.split(",") if k}
  cells = json.loads(out_json.read_text())["cells"] if (
      out_json.exists() and not args.overwrite) else []
  done = {(c["variant"], c["cfs_per_shape"], c["num"]) for c in cells}
  for v in variants:
    for h in cls_config.get_hyper(v):
      k, n = h["generate"]["cfs_per_shape"], h["train"]["num_counterfactuals"]
      if (only and k not in only) or (v, k, n // args.scale) in done:
        continue
      cells.append(run_cell(v, h["generate"], h["train"], args))
      title = (f"MNIST ablation: {args.epochs} ep, {args.seeds} seed(s), "
               f"N/{args.scale}, {mnist_table.machine()}")
      common.write_json(out_json, {"args": vars(args), "title": title,
                                   "cells": cells})
      plot(cells, workdir / "ablation.png", title)
  for c in cells:
    print(f"{c['variant']:>15} {c['cfs_per_shape']:>2} CF/shape "
          f"N={c['num']:>8}: {c['test_accuracy']:.2f} ± {c['std']:.2f} "
          f"({c['n_seeds']} seeds)")
  print(workdir / "ablation.png")
  return 0


if __name__ == "__main__":
  sys.exit(cli.run_main(main,
                        prog="python -m cgn_jax.experiments.mnist_ablation"))
