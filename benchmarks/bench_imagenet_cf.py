"""ImageNet counterfactual datasets end to end, and the Inception Score's network.

  python -m benchmarks imagenet_counterfactuals inception_score

* `imagenet_counterfactuals/{dtype}/b{1,16,64}`: images/s of
  `counterfactuals.imagenet.write_dataset` (what generate.py runs) with the
  full-size CGN (BigGAN-deep-256 x 3 + U²-Net, random weights): draws,
  forward, uint8 on device, JPEG q75 in a thread pool and the ArrayRecord
  shard written and renamed, 4 batches per timed call. Upstream: one image
  per forward (batch 1), PNG/JPEG through torchvision. Goal on an
  H100-class GPU: >= 1,000 images/s in bfloat16 at batch 64.
  bfloat16 rows run on accelerators only (emulated on CPUs).
* `imagenet_counterfactuals/smoke/b16`: the same path with the tiny smoke
  CGN (32x32), a CPU-cheap check of the host side (encoding, writing).
* `inception_score/{dtype}/b{16,64}`: Inception-v3 log-probabilities of
  256x256 [-1, 1] images (bilinear resize to 299 included), random weights.
"""

import itertools
import pathlib
import shutil
import tempfile

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.harness import Benchmark

_CALLS = 4  # batches per timed call


def _full_model(dtype):
  from cgn_jax.models import imagenet_cgn  # pylint: disable=g-import-not-at-top
  return imagenet_cgn.from_config("biggan-deep-256", "u2net",
                                  dtype=jnp.dtype(dtype))


def _cf_setup(dtype: str, batch: int, smoke: bool = False):
  def setup():
    from cgn_jax.counterfactuals import imagenet as cf  # pylint: disable=g-import-not-at-top
    from cgn_jax.models import imagenet_cgn  # pylint: disable=g-import-not-at-top
    if smoke:
      model = cf.smoke_model(dtype)
      variables = cf.smoke_variables(model)
    else:
      model = _full_model(dtype)
      variables = imagenet_cgn.random_variables(model, 0)
    root = pathlib.Path(tempfile.mkdtemp(prefix="bench_imagenet_cf_"))
    runs = itertools.count()
    n = batch * _CALLS
    programs = cf.build_programs(model)  # one compilation for every call

    def run():
      d = root / f"run{next(runs)}"
      cf.write_dataset(d, model, variables, num=n, seed=0, batch_size=batch,
                       shard_size=n, weights_sha256="benchmark",
                       progress=False, programs=programs)
      shutil.rmtree(d)
      return jnp.zeros(())
    return run
  return setup


def _inception_setup(dtype: str, batch: int):
  def setup():
    from cgn_jax.evaluation import inception_score as is_lib  # pylint: disable=g-import-not-at-top
    from cgn_jax.models import inception  # pylint: disable=g-import-not-at-top
    from cgn_jax.models import inception_weights  # pylint: disable=g-import-not-at-top
    model = inception.InceptionV3(dtype=jnp.dtype(dtype))
    variables = jax.device_put(inception_weights.random_variables(0))
    images = jax.device_put(np.random.default_rng(0).uniform(
        -1, 1, (batch, 256, 256, 3)).astype(np.float32))
    predict = is_lib.make_predict_fn(model)
    return lambda: predict(variables, images)
  return setup


BENCHMARKS = [
    Benchmark(f"imagenet_counterfactuals/float32/b{b}",
              _cf_setup("float32", b), batch=b, iters_per_call=_CALLS,
              repeats=2 if jax.default_backend() == "cpu" else 5,
              extra={"dtype": "float32", "jpeg_quality": 75})
    for b in (1, 16, 64)
] + [
    Benchmark("imagenet_counterfactuals/smoke/b16",
              _cf_setup("float32", 16, smoke=True), batch=16,
              iters_per_call=_CALLS, repeats=3,
              extra={"dtype": "float32", "model": "smoke 32x32"}),
    Benchmark("inception_score/float32/b16", _inception_setup("float32", 16),
              batch=16, repeats=3, extra={"dtype": "float32"}),
    Benchmark("inception_score/float32/b64", _inception_setup("float32", 64),
              batch=64, repeats=3, extra={"dtype": "float32"}),
]

if jax.default_backend() != "cpu":  # bf16 is emulated (slow) on CPUs
  BENCHMARKS += [
      Benchmark(f"imagenet_counterfactuals/bfloat16/b{b}",
                _cf_setup("bfloat16", b), batch=b, iters_per_call=_CALLS,
                repeats=5, extra={"dtype": "bfloat16", "jpeg_quality": 75})
      for b in (1, 16, 64)
  ] + [
      Benchmark("inception_score/bfloat16/b64",
                _inception_setup("bfloat16", 64), batch=64, repeats=5,
                extra={"dtype": "bfloat16"}),
  ]
