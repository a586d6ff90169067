"""Trains a model from a config: the one entry point for every trainer.

  python train.py --config=configs/cgn_wildlife_mnist.py --workdir=DIR \
      [--config.a.b=value ...]

The config's `trainer` field names the training module (see `TRAINERS`); that
module's `train_and_evaluate(config, workdir)` does the work. A workdir that
already holds a checkpoint is resumed.
"""

import importlib

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from cgn_jax import distributed

TRAINERS = {
    "cgn_mnist": "cgn_jax.train.cgn_mnist",
    "classifier_mnist": "cgn_jax.train.classifier_mnist",
}

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Path to a configs/*.py file (optionally :ARG).",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output and checkpoint dir.")
flags.mark_flags_as_required(["config", "workdir"])
distributed.define_flags()


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  distributed.initialize_from_flags()
  config = _CONFIG.value
  if config.trainer not in TRAINERS:
    raise ValueError(f"unknown trainer {config.trainer!r}; "
                     f"known: {sorted(TRAINERS)}")
  logging.info("trainer %s, workdir %s", config.trainer, _WORKDIR.value)
  importlib.import_module(TRAINERS[config.trainer]).train_and_evaluate(
      config, _WORKDIR.value)


if __name__ == "__main__":
  app.run(main)
