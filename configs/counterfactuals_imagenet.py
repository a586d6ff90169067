"""Counterfactual ImageNet datasets from a trained CGN (SPEC §5; paper §4.2).

  python generate.py --config=configs/counterfactuals_imagenet.py \
      --workdir=DIR --config.cgn=WEIGHTS --config.num=N \
      [--config.mode=best_classes] [--config.dtype=bfloat16]
  python generate.py --config=configs/counterfactuals_imagenet.py:smoke \
      --workdir=/tmp/cf

WEIGHTS is the output of `python -m converters cgn-imagenet --input cgn.pth
--output WEIGHTS` ('random' = a tiny random CGN, smoke runs only). Modes:
`random` (three independent classes), `best_classes` (upstream's curated
lists), `fixed_classes` (`--config.classes=SHAPE,TEXTURE,BG`). Truncation
0.5, as the datasets of the paper and both reproductions.

Writes DIR/counterfactuals/ (sharded ArrayRecord of JPEGs with the shape,
texture and background labels; see cgn_jax/data/records.py), DIR/preview.png
and, with `--config.export_dir=CF_PATH/train_RUN`, upstream's
`ims/*_x_gen.jpg` + `labels.csv` layout for its `ImagenetCounterfactual`.
A killed run continues where it stopped when rerun with the same command;
a different CGN, seed, mode, ... in the same DIR is refused.

ARG: `smoke` (16 images from a tiny random CGN, about a minute on CPU) and
typed overrides, e.g. `:num=1000,mode=best_classes`. Throughput: see
benchmarks/bench_imagenet_cf.py.
"""

import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The ImageNet counterfactual-generation config (module docstring)."""
  # Smoke changes the defaults; typed overrides still win (`smoke,num=32`).
  smoke = "smoke" in (arg or "").split(",")
  a = common.parse_arg(arg, smoke=False, num=16 if smoke else 100_000,
                       seed=0, mode="random", batch_size=8 if smoke else 64)
  c = ml_collections.ConfigDict()
  c.dataset = "imagenet"      # generate.py dispatch
  c.cgn = ""                  # converted CGN directory, or 'random' (smoke)
  c.num = a.num
  c.seed = a.seed
  c.mode = a.mode             # random | best_classes | fixed_classes
  c.classes = ""              # 'SHAPE,TEXTURE,BG' for fixed_classes
  c.truncation = 0.5
  c.batch_size = a.batch_size  # per call, over all devices
  c.shard_size = 5000         # images per shard: the unit of resumption
  c.jpeg_quality = 75         # PIL's default, as upstream's save_image
  c.normalize = "range"       # (x + 1) / 2; 'minmax' = upstream's per image
  c.fields = ""               # extras: 'mask,foreground,background'
  c.dtype = "float32"         # or 'bfloat16'
  c.overwrite = False         # delete an existing dataset in the workdir
  c.export_dir = ""           # upstream layout here (relative: in workdir)
  c.run_name = ""             # image name prefix of the export
  if a.smoke:
    c.cgn = "random"
    c.shard_size = 8
    c.export_dir = "upstream/train_smoke"
  return c
