"""U²-Net (full) saliency-mask throughput: `u2net_mask/{256,320}/b{1,16}`.

The jitted eval-mode forward of `cgn_jax.models.u2net.saliency_mask` with
random parameters (speed does not depend on the weights), at CGN's 256x256
and the original repository's 320x320, batch 1 and 16, in float32. The
`u2net_mask_bf16/...` group computes in bfloat16 (parameters stay float32);
it is meant for GPUs (a separate group, so that `u2net_mask` alone stays
float32 and cheap on a CPU).

  python -m benchmarks u2net_mask
  python -m benchmarks u2net_mask/256/b16 u2net_mask_bf16
"""

import functools

import jax
import jax.numpy as jnp

from benchmarks.harness import Benchmark
from cgn_jax.models import u2net

# The full model takes seconds per image on a CPU; keep CPU runs short.
_REPEATS = 2 if jax.default_backend() == "cpu" else 20


def _setup(size: int, batch: int, dtype):
  def setup():
    variables = u2net.init_variables(jax.random.key(0), "u2net")
    images = jax.random.uniform(jax.random.key(1), (batch, size, size, 3),
                                jnp.float32, -1.0, 1.0)
    mask = jax.jit(functools.partial(u2net.saliency_mask, variant="u2net",
                                     dtype=dtype))
    return lambda: mask(variables, images)
  return setup


BENCHMARKS = [
    Benchmark(f"{group}/{size}/b{batch}",
              _setup(size, batch, dtype), batch, repeats=_REPEATS,
              extra={"dtype": jnp.dtype(dtype).name, "variant": "u2net",
                     "size": size})
    for size in (256, 320)
    for batch in (1, 16)
    for group, dtype in (("u2net_mask", jnp.float32),
                         ("u2net_mask_bf16", jnp.bfloat16))
]
