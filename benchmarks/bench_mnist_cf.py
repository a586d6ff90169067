"""Counterfactual MNIST generation and the invariant classifier's training.

  python -m benchmarks mnist_counterfactuals mnist_classifier_train

* `mnist_counterfactuals/float32`: images/s of `counterfactuals.mnist.
  Generator` (the code generate.py runs) at 10,000 images per call
  (1,000 shape samples x 10 counterfactuals), random CGN weights.
  Upstream: 241 images/s on a 2-core CPU; target >= 2x.
* `mnist_counterfactuals/bfloat16_1e6` (accelerators only): 10^6 images in
  one call (10 blocks of 10,000 shapes x 10); goal < 5 s on one H100.
* `mnist_classifier_train/float32`: `classifier_mnist.train_step` at batch
  64 (uint8 images on the device), 10 steps per timed call. Upstream: 1,363
  images/s on a 2-core CPU; target >= 1.2x.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.harness import Benchmark
from cgn_jax.counterfactuals import mnist as cf
from cgn_jax.models import cgn as cgn_lib
from cgn_jax.train import common


def _cf_setup(dtype, cfs, shapes_per_block, blocks_per_call):
  def setup():
    model = cgn_lib.CGN(dtype=jnp.dtype(dtype))
    variables = cgn_lib.init_variables(model, jax.random.PRNGKey(0))
    fn = cf.Generator(model, cfs, shapes_per_block, blocks_per_call)
    key = jax.random.PRNGKey(1)
    return lambda: fn(variables, key, 0)["image"]
  return setup


def _classifier_setup(batch: int, steps: int):
  def setup():
    from cgn_jax.train import classifier_mnist as cm  # pylint: disable=g-import-not-at-top
    from configs import classifier_mnist as cfg  # pylint: disable=g-import-not-at-top
    config = cfg.get_config("wildlife")
    model = cm.create_model(config)
    tx = cm.make_optimizer(config, steps_per_epoch=1000)
    mesh = common.make_mesh()
    state = jax.device_put(
        cm.create_train_state(model, tx, jax.random.PRNGKey(0)),
        common.replicated(mesh))
    rng = np.random.default_rng(0)
    batches = [common.shard_batch(
        {"image": rng.integers(0, 256, (batch, 32, 32, 3), dtype=np.uint8),
         "label": rng.integers(0, 10, batch, dtype=np.int32)}, mesh)
               for _ in range(steps)]
    step_fn = jax.jit(functools.partial(cm.train_step, model=model, tx=tx),
                      donate_argnums=(0,))
    holder = [state]

    def run():
      s = holder[0]
      for b in batches:
        s = step_fn(s, b)
      holder[0] = s
      return s.loss_sum
    return run
  return setup


BENCHMARKS = [
    Benchmark("mnist_counterfactuals/float32",
              _cf_setup("float32", 10, 1000, 1), batch=10_000, repeats=3,
              extra={"dtype": "float32", "cfs_per_shape": 10}),
    Benchmark("mnist_classifier_train/float32", _classifier_setup(64, 10),
              batch=64, iters_per_call=10, repeats=5,
              extra={"dtype": "float32"}),
]

if jax.default_backend() != "cpu":  # bf16 is emulated (slow) on CPUs
  BENCHMARKS += [
      Benchmark("mnist_counterfactuals/bfloat16",
                _cf_setup("bfloat16", 10, 1000, 1), batch=10_000,
                extra={"dtype": "bfloat16", "cfs_per_shape": 10}),
      Benchmark("mnist_counterfactuals/float32_1e6",
                _cf_setup("float32", 10, 10_000, 10), batch=1_000_000,
                repeats=3, extra={"dtype": "float32", "cfs_per_shape": 10}),
      Benchmark("mnist_counterfactuals/bfloat16_1e6",
                _cf_setup("bfloat16", 10, 10_000, 10), batch=1_000_000,
                repeats=3, extra={"dtype": "bfloat16", "cfs_per_shape": 10}),
  ]
