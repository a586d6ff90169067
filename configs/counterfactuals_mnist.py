"""Counterfactual MNIST datasets from a trained CGN (SPEC §3.1, paper Table 2).

  python generate.py --config=configs/counterfactuals_mnist.py:wildlife \
      --workdir=DIR --config.cgn=CKPT_DIR \
      [--config.num=1000000 --config.cfs_per_shape=10]

ARG: a variant (`colored`, `double_colored`, `wildlife`), optionally followed
by `,smoke` (2,000 images, small blocks) and typed overrides, e.g.
`:wildlife,num=10000,cfs_per_shape=5`.

CKPT_DIR is the output of `python -m converters cgn-mnist --input
cgn_wildlife_MNIST.pth --output CKPT_DIR` (or a CGN saved the same way); a
raw upstream `.pth` file also works (converted in memory; needs torch).

Writes DIR/counterfactuals/ (N images with shape, foreground and background
labels), DIR/real_train/ and DIR/real_test/ (the variant's real images for
the classifier) as uint8 `.npy` shards with an index (see
`cgn_jax/data/shards.py`; generation: `cgn_jax/counterfactuals/mnist.py`),
plus DIR/preview.png. Defaults follow the
upstream README (1e5 images, 10 counterfactuals per shape); the reproduction
[RR] used 1e6. Throughput: see `benchmarks/bench_mnist_cf.py`.
"""

import ml_collections

from configs import common

VARIANTS = ("colored", "double_colored", "wildlife")


def split_variant(arg: str | None) -> tuple[str, str]:
  """'wildlife,smoke,num=5' -> ('wildlife', 'smoke,num=5')."""
  head, _, rest = (arg or "").partition(",")
  if head not in VARIANTS:
    raise ValueError(f"config argument must start with a variant, one of "
                     f"{VARIANTS}; got {arg!r}")
  return head, rest


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The generation config for one variant (see the module docstring)."""
  variant, rest = split_variant(arg)
  a = common.parse_arg(rest, smoke=False, num=100_000, cfs_per_shape=10,
                       seed=0)
  c = ml_collections.ConfigDict()
  c.variant = variant
  c.cgn = ""                 # converted CGN directory (or an upstream .pth)
  c.num = a.num              # rounded down to a multiple of 100 * cfs
  c.cfs_per_shape = a.cfs_per_shape
  c.seed = a.seed            # CGN sampling; the real sets use `real_seed`
  c.real_seed = 0            # seeds the real train rendering and test set
  c.write_real = True        # also write real_train/ and real_test/
  c.num_real = 0             # only the first N real train images; 0 = all
  # A complete set in the workdir is kept only if its provenance (CGN
  # weights sha256, num, cfs_per_shape, seed, ...) matches this config; one
  # made differently is an error naming the field, or, with overwrite=True,
  # is regenerated.
  c.overwrite = False

  # Throughput knobs: a block is `shapes_per_block` shape samples times
  # `cfs_per_shape` images; a jitted call runs `blocks_per_call` blocks.
  # On an H100 use e.g. shapes_per_block=10000, blocks_per_call=10, bfloat16.
  c.shapes_per_block = 1000
  c.blocks_per_call = 1
  c.dtype = "float32"        # or 'bfloat16' (accelerators)
  c.fast = True              # folded eval-mode mechanisms (same numbers)
  c.shard_size = 50_000
  if a.smoke:
    c.num = 2_000
    c.shapes_per_block = 100
    c.shard_size = 1_000
  return c
