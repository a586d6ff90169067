"""ImageNet invariant-ensemble training speed (ResNet-50, three heads).

* `imagenet_classifier_train/{float32,bfloat16}/b{B}`: one jitted training
  step (`classifier_imagenet.train_step`: b real + b counterfactual images at
  224x224, cf_ratio 1, forward + backward + SGD) on a batch already on the
  device; images/s counts all 2·b images. b32 is the `:mini` run (upstream's
  single-GPU command); b2 is for CPUs.
* `imagenet_classifier_train/pipeline/{float32,bfloat16}/b{B}`: the same
  steps fed by the real input path (JPEG decode + RandomResizedCrop + flip +
  normalise of cgn_jax/data through the trainer's `TrainBatches`, grain
  worker processes on every core), timed over 5 steps per call.

Random weights (the same cost as pretrained ones). Everything is the
trainer's own code (STYLE habit 18).
"""

import os

import jax
import numpy as np

from benchmarks.harness import Benchmark
from cgn_jax.train import classifier_imagenet as trainer
from cgn_jax.train import common

PIPELINE_STEPS = 5


def _config(dtype: str, batch: int):
  from configs import classifier_imagenet  # pylint: disable=g-import-not-at-top
  c = classifier_imagenet.get_config("mini")
  c.batch_size = batch
  c.model.dtype = dtype
  c.pretrained = "none"
  return c


def _trainer(config, steps_per_epoch: int = 1000):
  programs = trainer.build_programs(config, steps_per_epoch)
  mesh = programs.mesh
  variables = trainer.initial_variables(config, programs.model,
                                        jax.random.PRNGKey(0),
                                        init=programs.init)
  state = common.replicate(
      trainer.create_train_state(variables, programs.tx), mesh)
  return programs.train_step, state, mesh


def _step_setup(dtype: str, batch: int):
  def setup():
    config = _config(dtype, batch)
    step, state, mesh = _trainer(config)
    rng = np.random.default_rng(0)
    image = lambda: rng.standard_normal((batch, 224, 224, 3), np.float32)
    label = lambda: rng.integers(0, 1000, (batch,), np.int32)
    host = {"real": {"image": image(), "label": label()},
            "cf": {"image": image(), "shape": label(), "texture": label(),
                   "bg": label()}}
    batch_dev = common.shard_batch(host, mesh)
    box = [state]

    def run():
      box[0], metrics = step(box[0], batch_dev)  # the state is donated
      return metrics

    return run
  return setup


def _pipeline_setup(dtype: str, batch: int):
  def setup():
    from benchmarks import bench_imagenet_input  # pylint: disable=g-import-not-at-top
    from cgn_jax.data import imagenet  # pylint: disable=g-import-not-at-top
    source = imagenet.ExampleSource(bench_imagenet_input._source())  # pylint: disable=protected-access
    cf = _CounterfactualView(source)
    config = _config(dtype, batch)
    step, state, mesh = _trainer(config)
    batches = trainer.TrainBatches(source, cf, batch, batch, epochs=1,
                                   seed=0)
    cores = os.cpu_count() or 1
    it = trainer.make_train_iterator(batches, threads=1, prefetch=4,
                                     worker_count=cores)
    box = [state]

    def run():
      for _ in range(PIPELINE_STEPS):
        box[0], metrics = step(box[0], common.shard_batch(next(it), mesh))
      return metrics

    return run
  return setup


class _CounterfactualView:
  """Real photos labelled as counterfactuals (decode cost is what counts)."""

  def __init__(self, source):
    self.source = source

  def __len__(self):
    return len(self.source)

  def get(self, index, rng=None):
    ex = self.source.get(index, rng)
    y = ex.pop("label")
    return dict(ex, shape=y, texture=y, bg=y)


BENCHMARKS = [
    Benchmark(f"imagenet_classifier_train/{dt}/b{b}", _step_setup(dt, b),
              batch=2 * b, repeats=5 if b < 8 else 10,
              extra={"dtype": dt, "real_batch": b, "cf_batch": b})
    for dt in ("float32", "bfloat16") for b in (2, 32)
] + [
    Benchmark(f"imagenet_classifier_train/pipeline/{dt}/b{b}",
              _pipeline_setup(dt, b), batch=2 * b,
              iters_per_call=PIPELINE_STEPS, repeats=3,
              extra={"dtype": dt, "real_batch": b, "cf_batch": b,
                     "pipeline": "jpeg+grain workers",
                     "worker_count": os.cpu_count() or 1})
    for dt in ("float32", "bfloat16") for b in (2, 32)
]
