"""The paper's Table 1: Inception Score and µ_mask of the ImageNet CGN loss ablation.

  python -m cgn_jax.experiments.imagenet_table1 --cgn-weights CGN \\
      --inception INCEPTION [--ablation no_shape=DIR --ablation no_text=DIR \\
      --ablation no_bg=DIR --ablation no_rec=DIR] [--num 2000 --splits 2]
  python -m cgn_jax.experiments.imagenet_table1 --smoke

Rows: the full CGN ("all losses"), the BigGAN upper bound (the CGN's own
frozen `biggan_gt`, i.e. the pretrained BigGAN-deep, sampled with the same
noise and classes) and each loss-ablation CGN given with `--ablation`. Every
row scores `--num` images drawn as generate.py does (random classes,
truncation 0.5, `--seed`), printed beside the paper's numbers and the second
reproduction's [BG] (SPEC §8.1; the row-to-ablation assignment there is
reconstructed, so probable). The default protocol is [BG]'s (2,000 images,
2 splits, truncation 0.5, torchvision Inception weights); the paper's is
unstated (see cgn_jax/evaluation/inception_score.py).

`--smoke` runs end to end on random weights (a tiny random CGN, a random
Inception-v3, 8 images): for checking the pipeline only, the numbers mean
nothing.
"""

import argparse
import json
import pathlib
import sys
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from cgn_jax.evaluation import inception_score as is_lib

# SPEC §8.1: (IS, µ_mask) of the paper, then of [BG]; None = not reported.
PUBLISHED = {
    "no_shape": ("without L_shape", (85.9, 0.2), (100.8, 0.3)),
    "no_text": ("without L_text", (198.4, 0.9), (186.5, 0.4)),
    "no_bg": ("without L_bg", (195.6, 0.1), (200.9, 0.1)),
    "no_rec": ("without L_rec", (38.4, 0.3), (19.3, 0.4)),
    "full": ("all losses", (130.2, 0.3), (156.1, 0.3)),
    "biggan": ("BigGAN (upper bound)", (202.9, None), (None, None)),
}
ABLATIONS = ("no_shape", "no_text", "no_bg", "no_rec")


def _x_gt(module, u, y, truncation):
  return module.biggan_gt(u, y, truncation, train=False)[0]


def make_biggan_step(model, truncation: float) -> Callable:
  """Jitted (variables, key, indices [B]) -> uint8 BigGAN images (new)."""
  from cgn_jax.counterfactuals import imagenet  # pylint: disable=g-import-not-at-top
  from cgn_jax.data import records  # pylint: disable=g-import-not-at-top

  @jax.jit
  def step(variables, key, indices):
    u, ys = imagenet.draw_inputs(key, indices, mode="random",
                                 truncation=truncation, z_dim=model.z_dim)
    y = jax.nn.one_hot(ys[:, 0], model.num_classes)
    return records.to_uint8(model.apply(variables, u, y, truncation,
                                        method=_x_gt))

  return step


def biggan_batches(model, variables, *, num: int, batch_size: int,
                   seed: int, truncation: float,
                   step: Callable | None = None):
  """uint8 BigGAN images with generate.py's noise and (shape) classes.

  `step`: `make_biggan_step(model, truncation)` to reuse (default: new).
  """
  step = step or make_biggan_step(model, float(truncation))
  key = jax.random.PRNGKey(seed)
  variables = jax.device_put(variables)  # once, not per call
  for s in range(0, num, batch_size):
    n = min(batch_size, num - s)
    yield np.asarray(step(variables, key, s + jnp.arange(batch_size)))[:n]


def score_biggan(model, variables, inception_variables, *, num, splits,
                 batch_size, seed, truncation,
                 predict: Callable | None = None) -> dict:
  """IS of the BigGAN row; `predict` as `is_lib.predict_log_probs`'s."""
  log_probs = is_lib.predict_log_probs(
      inception_variables,
      biggan_batches(model, variables, num=num, batch_size=batch_size,
                     seed=seed, truncation=truncation),
      batch_size=batch_size, predict=predict)
  mean, std, _ = is_lib.inception_score(log_probs, splits)
  return {"is_mean": mean, "is_std": std, "num": num, "splits": splits}


def _fmt(v, digits=1):
  return "–" if v is None else f"{v:.{digits}f}"


def format_table(rows: dict) -> str:
  """Markdown: ours beside the paper and [BG]."""
  lines = ["| losses | IS (ours) | µ_mask (ours) | IS paper | µ_mask paper "
           "| IS [BG] | µ_mask [BG] |", "|---|---|---|---|---|---|---|"]
  for key in ("no_shape", "no_text", "no_bg", "no_rec", "full", "biggan"):
    name, paper, bg = PUBLISHED[key]
    ours = rows.get(key)
    is_ours = ("not run" if ours is None else
               f"{ours['is_mean']:.1f} ± {ours['is_std']:.1f}")
    mu = "–" if ours is None or "mu_mask" not in ours else \
        f"{ours['mu_mask']:.2f}"
    lines.append(f"| {name} | {is_ours} | {mu} | {_fmt(paper[0])} | "
                 f"{_fmt(paper[1])} | {_fmt(bg[0])} | {_fmt(bg[1])} |")
  return "\n".join(lines)


def run(cgn_specs: dict, inception_spec: str, *, num: int, splits: int,
        batch_size: int, seed: int, truncation: float,
        dtype: str = "float32") -> dict:
  """Scores every given CGN (+ the BigGAN row from the full CGN).

  One Inception-v3 program serves every row (compiled once).
  """
  from cgn_jax.counterfactuals import imagenet  # pylint: disable=g-import-not-at-top
  from cgn_jax.experiments import inception_score as is_cli  # pylint: disable=g-import-not-at-top
  from cgn_jax.models import inception  # pylint: disable=g-import-not-at-top
  from cgn_jax.models import inception_weights  # pylint: disable=g-import-not-at-top
  inception_variables, _ = inception_weights.load(inception_spec)
  predict = is_lib.make_predict_fn(inception.InceptionV3())
  rows = {}
  for key, spec in cgn_specs.items():
    model, variables, info = imagenet.load_cgn(spec, dtype)
    rows[key] = is_cli.score_cgn(
        model, variables, inception_variables, num=num, splits=splits,
        batch_size=batch_size, seed=seed, truncation=truncation,
        predict=predict)
    rows[key]["cgn_sha256"] = info["sha256"]
    if key == "full":
      rows["biggan"] = score_biggan(
          model, variables, inception_variables, num=num, splits=splits,
          batch_size=batch_size, seed=seed, truncation=truncation,
          predict=predict)
    print(f"{PUBLISHED[key][0]}: IS {rows[key]['is_mean']:.2f} ± "
          f"{rows[key]['is_std']:.2f}, µ_mask {rows[key]['mu_mask']:.3f}",
          flush=True)
  return rows


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
      prog="python -m cgn_jax.experiments.imagenet_table1",
      description=__doc__.split("\n\n")[0])
  parser.add_argument("--cgn-weights", help="the full CGN (converted)")
  parser.add_argument("--ablation", action="append", default=[],
                      metavar="NAME=DIR",
                      help=f"an ablation CGN; NAME in {ABLATIONS}")
  parser.add_argument("--inception", help="converted Inception-v3")
  parser.add_argument("--num", type=int, default=2000)
  parser.add_argument("--splits", type=int, default=2)
  parser.add_argument("--batch-size", type=int, default=50)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--truncation", type=float, default=0.5)
  parser.add_argument("--dtype", default="float32",
                      choices=("float32", "bfloat16"))
  parser.add_argument("--smoke", action="store_true",
                      help="random weights, 8 images: pipeline check only")
  parser.add_argument("--json", help="also write the rows here")
  args = parser.parse_args(argv)
  if args.smoke:
    specs, inception = {"full": "random"}, "random"
    args.num, args.splits, args.batch_size = 8, 2, 4
  else:
    if not args.cgn_weights or not args.inception:
      parser.error("--cgn-weights and --inception are required (or --smoke)")
    specs, inception = {"full": args.cgn_weights}, args.inception
  for item in args.ablation:
    name, eq, path = item.partition("=")
    if not eq or name not in ABLATIONS:
      parser.error(f"--ablation {item!r}: use NAME=DIR with NAME in "
                   f"{ABLATIONS}")
    specs[name] = path
  rows = run(specs, inception, num=args.num, splits=args.splits,
             batch_size=args.batch_size, seed=args.seed,
             truncation=args.truncation, dtype=args.dtype)
  print(f"\nTable 1 ({args.num} images, {args.splits} splits, truncation "
        f"{args.truncation}, seed {args.seed}; paper and [BG] from SPEC §8.1"
        f"{'; SMOKE: random weights, numbers meaningless' if args.smoke else ''}"
        "):\n")
  print(format_table(rows))
  if args.json:
    pathlib.Path(args.json).write_text(json.dumps(rows, indent=1))
  return 0


if __name__ == "__main__":
  sys.exit(main())
