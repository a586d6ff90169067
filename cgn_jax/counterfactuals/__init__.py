"""Counterfactual datasets: generation with a trained CGN, one module each.

  mnist.py     the MNIST CGN's counterfactual sets (generate.py, SPEC §3.1)

Storage is in `cgn_jax/data/shards.py`. The names of the former single
module `cgn_jax.counterfactuals` (e.g. `counterfactuals.ShardedSource`,
`counterfactuals.run_config`) still resolve, lazily, to their new homes so
that importing this package loads nothing.
"""

_MOVED = {
    "shards": ("FORMAT", "INDEX", "IMAGE_ENCODING", "quantize", "dequantize",
               "ShardWriter", "is_complete", "read_index", "ShardedSource",
               "ConcatSource", "write_arrays"),
    "mnist": ("GROUP", "CF_FIELDS", "CF_DIR", "REAL_TRAIN_DIR",
              "REAL_TEST_DIR", "permute_within_groups", "make_block_fn",
              "Generator", "make_generate_fn", "dataset_size", "generate",
              "write_counterfactuals", "write_real_sets", "run_config"),
}


def __getattr__(name):
  import importlib  # pylint: disable=g-import-not-at-top
  for module, names in _MOVED.items():
    if name in names:
      path = ("cgn_jax.data.shards" if module == "shards"
              else "cgn_jax.counterfactuals.mnist")
      return getattr(importlib.import_module(path), name)
  raise AttributeError(f"module 'cgn_jax.counterfactuals' has no attribute "
                       f"{name!r}")
