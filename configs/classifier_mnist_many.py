"""K MNIST classifiers (seeds) trained together as one vmapped step.

  python train.py --config=configs/classifier_mnist_many.py:wildlife,seeds=3 \
      --workdir=DIR --config.counterfactuals=CF_DIR [--config.steps_per_call=50]

ARG: everything `configs/classifier_mnist.py` takes (variant, `real`,
`original`, `smoke`, `num_counterfactuals=N`, `epochs=N`, `seed=S`), plus
`seeds=K`: the models use seeds S, S+1, ..., S+K-1 (default 3). Each model is
the single-model run of its seed (cgn_jax/train/classifier_mnist_many.py);
`--config.seeds='(0, 5, 7)'` picks any seeds. `steps_per_call` fuses that
many steps into one `lax.scan` (keep 1 on CPU, where a convolution inside a loop body is
~40x slower; 50-100 on a GPU, where a 64-image step is launch-bound).
"""

from configs import classifier_mnist
from configs import common


def get_config(arg: str | None = None):
  words = [w for w in (arg or "").split(",") if w]
  many = [w for w in words if w.split("=")[0] in ("seeds", "steps_per_call")]
  a = common.parse_arg(",".join(many), seeds=3, steps_per_call=1)
  c = classifier_mnist.get_config(",".join(w for w in words
                                           if w not in many))
  c.trainer = "classifier_mnist_many"
  c.seeds = tuple(range(c.seed, c.seed + a.seeds))
  c.steps_per_call = a.steps_per_call
  return c
