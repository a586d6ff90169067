"""Trains a model from a config: the one entry point for every trainer.

  python train.py --config=configs/cgn_wildlife_mnist.py --workdir=DIR \
      [--config.a.b=value ...] [--verbose] [--no-cpu-defaults]

The config's `trainer` field names the training module (see `TRAINERS`); that
module's `train_and_evaluate(config, workdir)` does the work. A workdir that
already holds a checkpoint is resumed (the checkpoint must come from the
same config: `provenance.json` in the workdir says which; a mismatch is an
error unless --config.overwrite=True starts over).

Several processes (hosts): the same command on each, plus
`--coordinator=HOST0:PORT --num_processes=N --process_id=I` (or under srun
or mpirun, which need none of them); see cgn_jax/distributed.py.

Errors print one line (`--verbose` for the traceback); on a CPU backend the
CPU defaults of cgn_jax/platform.py are applied first (`--no-cpu-defaults`
or CGN_JAX_CPU_DEFAULTS=0 to skip them). Both are handled by cgn_jax.cli.
"""

import importlib

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from cgn_jax import cli

TRAINERS = {
    "cgn_mnist": "cgn_jax.train.cgn_mnist",
    "cgn_mnist_many": "cgn_jax.train.cgn_mnist_many",
    "classifier_mnist": "cgn_jax.train.classifier_mnist",
    "classifier_mnist_many": "cgn_jax.train.classifier_mnist_many",
    "cgn_imagenet": "cgn_jax.train.cgn_imagenet",
    "classifier_imagenet": "cgn_jax.train.classifier_imagenet",
}

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Path to a configs/*.py file (optionally :ARG).",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output and checkpoint dir.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  config = _CONFIG.value
  if config.trainer not in TRAINERS:
    raise ValueError(f"unknown trainer {config.trainer!r}; "
                     f"known: {sorted(TRAINERS)}")
  logging.info("trainer %s, workdir %s", config.trainer, _WORKDIR.value)
  importlib.import_module(TRAINERS[config.trainer]).train_and_evaluate(
      config, _WORKDIR.value)


if __name__ == "__main__":
  cli.run_absl_app(main)
