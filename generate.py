"""Generates a counterfactual MNIST dataset with a trained CGN (SPEC §3.1).

  python generate.py --config=configs/counterfactuals_mnist.py:wildlife \
      --workdir=DIR --config.cgn=CKPT_DIR [--config.num=1000000] \
      [--verbose] [--no-cpu-defaults]

Writes DIR/counterfactuals/, DIR/real_train/, DIR/real_test/ (shard
datasets, see `cgn_jax.data.shards`) and DIR/preview.png. A complete set
already in DIR is kept only when its `provenance` (the CGN's weights sha256,
num, cfs_per_shape, seed, ...) matches this config; a mismatch is an error
naming the field, and --config.overwrite=True regenerates instead.

ImageNet (SPEC §5): `--config=configs/counterfactuals_imagenet.py
--config.cgn=WEIGHTS --config.num=N` (see that config).

Several processes (MNIST): the flags of train.py (`--coordinator`,
`--num_processes`, `--process_id`, or srun/mpirun); each process generates
a contiguous share into DIR/counterfactuals/part-P/ and one index lists all
shards (DIR must be on a filesystem every process sees). ImageNet
generation runs on one process (its devices are all used).

Errors print one line (`--verbose` for the traceback); see cgn_jax/cli.py.
"""

from absl import app
from absl import flags
from ml_collections import config_flags

from cgn_jax import cli

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "configs/counterfactuals_mnist.py:VARIANT",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory.")
flags.mark_flags_as_required(["config", "workdir"])
# config.dataset -> the module whose run_config(config, workdir) generates.
_GENERATORS = {"mnist": "cgn_jax.counterfactuals.mnist",
               "imagenet": "cgn_jax.counterfactuals.imagenet"}


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  import importlib  # pylint: disable=g-import-not-at-top
  dataset = _CONFIG.value.get("dataset", "mnist")
  if dataset not in _GENERATORS:
    raise ValueError(f"config.dataset={dataset!r}; known: {sorted(_GENERATORS)}")
  importlib.import_module(_GENERATORS[dataset]).run_config(
      _CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
  cli.run_absl_app(main)
