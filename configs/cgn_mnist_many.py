"""K MNIST CGNs of one dataset (seeds) trained together, vmapped.

  python train.py --config=configs/cgn_mnist_many.py:wildlife,seeds=3 \
      --workdir=DIR [--config.steps_per_call=100]

ARG: a variant (`colored`, `double_colored`, `wildlife`), then the words of
configs/cgn_mnist_base.py (`smoke`, `ssim`, `jitter`, `edge`) and `seeds=K`:
the models use seeds 0..K-1 (default 3; `--config.seeds='(3, 4)'` picks
any). Each model is exactly the single-model run of its seed
(cgn_jax/train/cgn_mnist_many.py); DIR/seed_<s>/generator is its trained
generator for generate.py and the MNIST table.
"""

from configs import cgn_mnist_base
from configs import common
from configs import counterfactuals_mnist


def get_config(arg: str | None = None):
  variant, rest = counterfactuals_mnist.split_variant(arg)
  words = [w for w in rest.split(",") if w]
  many = [w for w in words if w.split("=")[0] == "seeds"]
  a = common.parse_arg(",".join(many), seeds=3)
  c = cgn_mnist_base.get_config(variant, ",".join(w for w in words
                                                  if w not in many))
  c.trainer = "cgn_mnist_many"
  c.seeds = tuple(range(c.seed, c.seed + a.seeds))
  return c
