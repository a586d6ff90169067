"""ImageNet CGN training speed: one micro-step and one accumulated update.

* `cgn_imagenet_train/{full,smoke}/micro/b{1,8,32}/{float32,bfloat16}`: one
  jitted micro-step: draw (u, class), the train-mode CGN forward (four
  BigGAN-deep, U²-Net on premask and background), all six losses with VGG16
  and their gradient with respect to the three mechanisms.
* `cgn_imagenet_train/{full,smoke}/update4/b{...}/{...}`: one jitted update
  of 4 accumulated micro-steps (`lax.scan`) plus the three Adam steps, as
  `train_and_evaluate` runs it; iters_per_call 4, so img/s is comparable.

`full` is BigGAN-deep-256 + U²-Net (upstream's model), `smoke` is the
`:smoke` config (channel_width 4, U²-Netp); all weights random (same cost).
Records carry `peak_bytes` (device peak memory after the run) where the
backend reports it (GPUs). On CPU only batch 1 is practical. The functions
timed are the trainer's own (`micro_step`; `build_programs(...).update`).
"""

import functools

import jax

from benchmarks.harness import Benchmark
from cgn_jax.train import cgn_imagenet as trainer
from cgn_jax.train import common

ACC = 4


def _config(size: str, batch: int, dtype: str, acc: int):
  from configs import cgn_imagenet as config_lib  # pylint: disable=g-import-not-at-top
  config = config_lib.get_config("smoke" if size == "smoke" else None)
  # At 256², as the PyTorch baseline's smoke size (the :smoke config trains
  # at 128²).
  config.model.biggan = "biggan-deep-256"
  config.weights.biggan = config.weights.u2net = "random"
  config.weights.vgg16 = "random"
  config.model.dtype = dtype
  config.batch_size, config.batch_acc = batch, acc
  return config


def _peak(extra):
  stats = jax.devices()[0].memory_stats() or {}
  if "peak_bytes_in_use" in stats:
    extra["peak_bytes"] = int(stats["peak_bytes_in_use"])


def _setup(size: str, batch: int, dtype: str, acc: int, extra: dict):
  config = _config(size, batch, dtype, max(acc, 1))
  programs = trainer.build_programs(config)
  mesh = programs.mesh
  vgg = common.replicate(trainer.load_vgg("random"), mesh)
  state = trainer.state_from_variables(
      trainer.load_variables(config, programs.model), programs.tx, 0)
  box = [trainer.place(state, programs.sharding)]
  if acc:
    update = programs.update

    def step():
      box[0], metrics = update(box[0], vgg)
      _peak(extra)
      return metrics
    return step

  s = programs.static
  micro = jax.jit(functools.partial(
      trainer.micro_step, s=s, batch_sharding=common.batch_sharding(mesh)))
  keys = iter(range(1 << 30))

  def step():
    out = micro(box[0], box[0].spectral,
                jax.random.fold_in(jax.random.PRNGKey(0), next(keys)), vgg)
    _peak(extra)
    return out
  return step


def _bench(size, kind, batch, dtype):
  extra = {"size": size, "dtype": dtype, "kind": kind,
           "model": ("biggan-deep-256 + u2net" if size == "full" else
                     "channel_width 4 + u2netp")}
  acc = ACC if kind == f"update{ACC}" else 0
  return Benchmark(
      f"cgn_imagenet_train/{size}/{kind}/b{batch}/{dtype}",
      functools.partial(_setup, size, batch, dtype, acc, extra),
      batch=batch, iters_per_call=max(acc, 1), repeats=2, extra=extra)


BENCHMARKS = [
    _bench(size, kind, batch, dtype)
    for size in ("full", "smoke") for kind in ("micro", f"update{ACC}")
    for batch in (1, 8, 32) for dtype in ("float32", "bfloat16")
]
