"""Generates a counterfactual MNIST dataset with a trained CGN (SPEC §3.1).

  python generate.py --config=configs/counterfactuals_mnist.py:wildlife \
      --workdir=DIR --config.cgn=CKPT_DIR [--config.num=1000000]

Writes DIR/counterfactuals/, DIR/real_train/, DIR/real_test/ (shard
datasets, see `cgn_jax.counterfactuals`) and DIR/preview.png. Complete sets
already in DIR are kept unless --config.overwrite=True.
"""

from absl import app
from absl import flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "configs/counterfactuals_mnist.py:VARIANT",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from cgn_jax import counterfactuals  # pylint: disable=g-import-not-at-top
  counterfactuals.run_config(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
  app.run(main)
