"""MNIST CGN training speed: one G+D step, and 100 steps end to end.

* `cgn_mnist_train/{variant}/b{16,64}`: one jitted training step (G update
  with the style loss, D update, real images rendered on device) on a batch
  already on the device; random VGG16 weights (same cost as ImageNet ones).
* `cgn_mnist_epoch/{variant}`: 100 steps at batch 16 through the real input
  pipeline (grain iterator of MNIST digits -> device -> step), as training
  runs them; needs MNIST (CGN_MNIST_DIR) and, for wildlife, the textures.
* `cgn_mnist_epoch/wildlife/scan100`: the same with `steps_per_call=100`
  (100 steps in one jitted lax.scan): for GPUs, where a batch-16 step is
  shorter than its dispatch.

Upstream PyTorch on a 2-core Zen 4 CPU at batch 16 (issue 3): step wildlife
0.37 s, colored 0.27 s; end to end wildlife 0.44 s, double-colored 0.31 s.
All of it reuses the trainer's own functions (STYLE habit 18).
"""

import jax
import numpy as np

from benchmarks.harness import Benchmark
from cgn_jax.train import cgn_mnist as trainer
from cgn_jax.train import common

VARIANTS = ("colored", "double_colored", "wildlife")
EPOCH_STEPS = 100


def _config(variant: str, batch: int, steps_per_call: int = 1):
  from configs import cgn_mnist_base  # pylint: disable=g-import-not-at-top
  config = cgn_mnist_base.get_config(variant)
  config.batch_size = batch
  config.steps_per_call = steps_per_call
  config.perceptual.vgg16 = "random"
  return config


def _trainer(config):
  """(jitted steps, state, VGG params, mesh) as `train_and_evaluate` builds."""
  vgg = trainer.load_vgg_variables(config.perceptual.vgg16)
  models = trainer.create_models(config, with_vgg=True)
  lc = trainer.LossConfig.from_config(config, with_style=True)
  mesh = common.make_mesh()
  rep = common.replicated(mesh)
  state = jax.device_put(
      trainer.create_train_state(config, models, jax.random.PRNGKey(0)), rep)
  steps = trainer.compiled_steps(models, lc, trainer.renderer(config.dataset),
                                 mesh)
  return steps, state, jax.device_put(vgg, rep), mesh


def _step_setup(variant: str, batch: int):
  def setup():
    config = _config(variant, batch)
    steps, state, vgg, mesh = _trainer(config)
    rng = np.random.default_rng(0)
    host = {"digits": rng.integers(0, 256, (1, batch, 28, 28), np.uint8),
            "label": rng.integers(0, 10, (1, batch), np.int32)}
    batches = trainer.shard_stacked(host, mesh)
    box = [state]

    def step():
      box[0], metrics = steps(box[0], batches, vgg)  # state is donated
      return metrics

    return step
  return setup


def _epoch_setup(variant: str, steps_per_call: int = 1):
  def setup():
    config = _config(variant, 16, steps_per_call)
    steps, state, vgg, mesh = _trainer(config)
    iterator, _, _ = trainer.make_input(config)
    box = [state]

    def run():
      for _ in range(EPOCH_STEPS // steps_per_call):
        batches = trainer.shard_stacked(
            trainer.stack_batches(iterator, steps_per_call), mesh)
        box[0], metrics = steps(box[0], batches, vgg)
      return box[0].step, metrics

    return run
  return setup


BENCHMARKS = [
    Benchmark(f"cgn_mnist_train/{v}/b{b}", _step_setup(v, b), batch=b,
              repeats=10, extra={"dtype": "float32", "vgg16": "random"})
    for v in VARIANTS for b in (16, 64)
] + [
    Benchmark(f"cgn_mnist_epoch/{v}", _epoch_setup(v), batch=16,
              iters_per_call=EPOCH_STEPS, repeats=3,
              extra={"dtype": "float32", "pipeline": "grain"})
    for v in ("double_colored", "wildlife")
] + [
    Benchmark("cgn_mnist_epoch/wildlife/scan100",
              _epoch_setup("wildlife", EPOCH_STEPS), batch=16,
              iters_per_call=EPOCH_STEPS, repeats=3,
              extra={"dtype": "float32", "pipeline": "grain",
                     "steps_per_call": EPOCH_STEPS}),
]
