"""BigGAN-deep sampling speed: `biggan_sample/{128,256}/b{1,8,32}/{dtype}`.

Each step draws fresh truncated noise for a fixed batch of random classes and
runs the jitted generator (`cgn_jax.sample.biggan.make_sampler`, truncation
0.4) on random weights of the full-size configs (shapes from
`jax.eval_shape`, values from numpy, put on the device once). One step is
one batch; img/s is the figure of merit. Meant for a GPU: on CPU a 256 batch
of 32 takes minutes, hence few repeats.
"""

import functools

import jax
import jax.numpy as jnp

from benchmarks.harness import Benchmark
from cgn_jax.models import biggan
from cgn_jax.sample import biggan as sample_biggan

_TRUNCATION = 0.4


def _setup(config_name: str, batch: int, dtype: str):
  model = biggan.BigGAN.from_config(config_name, dtype=jnp.dtype(dtype))
  variables = biggan.random_variables(model)
  sample = sample_biggan.make_sampler(model, _TRUNCATION)
  key = jax.random.PRNGKey(1)
  labels = jax.random.randint(key, (batch,), 0, model.num_classes)
  keys = iter(range(1 << 30))

  def step():
    return sample(variables, jax.random.fold_in(key, next(keys)), labels)

  return step


BENCHMARKS = [
    Benchmark(f"biggan_sample/{res}/b{batch}/{dtype}",
              functools.partial(_setup, f"biggan-deep-{res}", batch, dtype),
              batch=batch, repeats=3,
              extra={"config": f"biggan-deep-{res}", "dtype": dtype,
                     "truncation": _TRUNCATION})
    for res in (128, 256) for batch in (1, 8, 32)
    for dtype in ("float32", "bfloat16")
]
