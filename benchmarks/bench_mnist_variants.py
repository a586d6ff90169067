"""Rendering throughput of the three MNIST variants (images per second).

Digits and labels are already on the device; one call renders `ITERS`
batches of `BATCH` train-split images with the jitted renderer (a scan, so
dispatch overhead does not dominate on fast accelerators). The real MNIST
digits and textures are used when present; otherwise (e.g. on a machine
without ../shared) random digits and textures of the same shapes, which
render at the same speed (a note on stderr says so).
"""

import functools
import sys

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.harness import Benchmark
from cgn_jax import paths
from cgn_jax.data import mnist
from cgn_jax.data import variants

BATCH = 256
ITERS = 8


@functools.lru_cache(maxsize=None)
def _data():
  """(digits uint8 [BATCH, 28, 28], labels int32 [BATCH], source name)."""
  # Never download here: a device machine may have no network at all.
  local = paths.mnist_dir() or paths.shared_dir() / "data" / "mnist"
  try:
    if not mnist.is_prepared() and local.is_dir():
      mnist.prepare(mnist_dir=local)
    if mnist.is_prepared():
      digits, labels = variants.split_arrays("double_colored", "train")
      return digits[:BATCH], labels[:BATCH], "mnist"
  except mnist.MnistFileError as e:
    print(f"mnist_variants: {e}", file=sys.stderr)
  rng = np.random.default_rng(0)
  digits = (rng.random((BATCH, 28, 28)) < 0.2) * rng.integers(
      0, 256, (BATCH, 28, 28))
  labels = rng.integers(0, 10, BATCH)
  return digits.astype(np.uint8), labels.astype(np.int32), "synthetic"


def _textures():
  try:
    return variants.load_textures(), "real"
  except FileNotFoundError:
    shape = (variants.NUM_CLASSES,) + (variants.TEXTURE_SIZE
                                       + 2 * variants.TEXTURE_PAD,) * 2 + (3,)
    rng = np.random.default_rng(1)
    tex = rng.uniform(-1, 1, shape).astype(np.float32)
    return (tex, tex), "synthetic"


def _setup(variant):
  digits, labels, source = _data()
  textures = None
  if variant == "wildlife":
    textures, tex_source = _textures()
    source += f"+{tex_source} textures"
  if "synthetic" in source:
    print(f"mnist_variants/{variant}: data {source}", file=sys.stderr)
  render = variants.make_renderer(variant, textures=textures)

  @jax.jit
  def many(digits, labels, key):
    def body(carry, k):
      return carry, render(digits, labels, k, "train")
    return jax.lax.scan(body, 0, jax.random.split(key, ITERS))[1]

  d, l = jnp.asarray(digits), jnp.asarray(labels)
  key = jax.random.key(0)
  return lambda: many(d, l, key)


BENCHMARKS = [
    Benchmark(name=f"mnist_variants/{v}", setup=functools.partial(_setup, v),
              batch=BATCH, iters_per_call=ITERS, repeats=10)
    for v in variants.VARIANTS
]
