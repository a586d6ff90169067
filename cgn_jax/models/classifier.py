"""The MNIST invariant classifier `CNN` (SPEC §3.2).

Mirrors `mnists/models/classifier.py` of autonomousvision/
counterfactual_generative_networks (commit 335bebd): a small CNN trained on
counterfactual (and optionally real) colored / double-colored / wildlife MNIST
and tested on images whose colours and textures are random.

Submodules are named after their index in the upstream `nn.Sequential`s
(`model.1.weight` <-> `model_1/kernel`, `cls.0.weight` <-> `cls_0/kernel`), so
a converter for upstream classifier weights would be a rule table.

Layout NHWC. Padding is explicit torch-style everywhere: a stride-2 3x3 conv
with `'SAME'` pads (0, 1) where torch's `padding=1` pads (1, 1) (NOTES P4).

Upstream quirk kept on purpose (SPEC §10 item 6): the last conv produces an
8x8 map and upstream pools it with `AvgPool2d(7)` (stride 7, no padding), which
averages only the top-left 7x7 window and silently drops the last row and
column. `CNN` reproduces this; `global_pool=True` is the documented deviation
(a true global average).

Initialisation follows torch's defaults (uniform +-1/sqrt(fan_in) for
weights and biases; BatchNorm scale 1, bias 0) because the recipe (Adadelta
at lr 1.0) was tuned with them.

Parameters: 67,760 (BatchNorm 6, convs 2,432 + 9,248 + 18,496 + 36,928,
Dense 650), the same as upstream.
"""

from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

# torch BatchNorm2d defaults: momentum 0.1 (= flax decay 0.9), eps 1e-5.
_BN_MOMENTUM = 0.9
_BN_EPS = 1e-5

AUX_KEYS = ("logits", "features")


def torch_kernel_init():
  """torch's default Conv/Linear weight init: U(+-1/sqrt(fan_in)).

  (kaiming_uniform with a=sqrt(5)); flax's lecun_normal has 3x the variance,
  which matters with Adadelta at lr 1.0.
  """
  return nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def torch_bias_init(fan_in: int):
  """torch's default bias init: U(+-1/sqrt(fan_in)) of the layer's fan-in."""
  bound = 1.0 / fan_in**0.5

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)
  return init


def max_pool_torch(x: jax.Array, window: int, stride: int,
                   padding: int) -> jax.Array:
  """torch `MaxPool2d(window, stride, padding)` on NHWC input.

  Pads with -inf (padding never wins the max, as in torch) and takes the
  maximum over the window's strided slices. Same values as `nn.max_pool`,
  but its gradient is elementwise selects instead of XLA's
  select-and-scatter, which is ~10x slower on CPU (it dominated the step).
  """
  x = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)),
              constant_values=-jnp.inf)
  h = (x.shape[1] - window) // stride + 1
  w = (x.shape[2] - window) // stride + 1
  out = None
  for i in range(window):
    for j in range(window):
      s = x[:, i:i + stride * (h - 1) + 1:stride,
            j:j + stride * (w - 1) + 1:stride]
      out = s if out is None else jnp.maximum(out, s)
  return out


def avg_pool_torch(x: jax.Array, window: int) -> jax.Array:
  """torch `AvgPool2d(window)` (stride = window, no padding, floor mode).

  On an 8x8 map with window 7 the output is 1x1: the mean of the top-left
  7x7 window only (rows/cols 7 are never read).
  """
  return nn.avg_pool(x, (window, window), (window, window), padding="VALID")


class CNN(nn.Module):
  """Upstream's MNIST classifier; returns log-probabilities.

  Attributes:
    num_classes: output classes.
    global_pool: average the whole final map instead of upstream's
      AvgPool2d(7) on 8x8 (a deviation; off by default for parity).
    dtype: compute dtype of convs and Dense (params stay float32; the
      log-softmax is computed in float32).
  """
  num_classes: int = 10
  global_pool: bool = False
  dtype: Any = jnp.float32

  def _conv(self, x, features, kernel, stride, pad, name):
    fan_in = x.shape[-1] * kernel * kernel
    return nn.Conv(features, (kernel, kernel), (stride, stride),
                   padding=((pad, pad), (pad, pad)), dtype=self.dtype,
                   kernel_init=torch_kernel_init(),
                   bias_init=torch_bias_init(fan_in), name=name)(x)

  @nn.compact
  def __call__(self, x, *, train: bool):
    """Classifies images.

    Args:
      x: [B, 32, 32, 3] images in [-1, 1].
      train: BatchNorm uses batch statistics and updates its running
        statistics (apply with `mutable=['batch_stats']`), else running stats.

    Returns:
      (log_probs [B, num_classes] float32, aux) with aux 'logits' (pre
      log-softmax) and 'features' ([B, 64], the pooled map).
    """
    x = nn.BatchNorm(use_running_average=not train, momentum=_BN_MOMENTUM,
                     epsilon=_BN_EPS, dtype=self.dtype, name="model_0")(x)
    x = nn.relu(self._conv(x, 32, 5, 1, 2, "model_1"))   # 1, 2
    x = max_pool_torch(x, 3, 2, 1)                       # 3: 32 -> 16
    x = nn.relu(self._conv(x, 32, 3, 1, 1, "model_4"))   # 4, 5
    x = nn.relu(self._conv(x, 64, 3, 2, 1, "model_6"))   # 6, 7: 16 -> 8
    x = nn.relu(self._conv(x, 64, 3, 1, 1, "model_8"))   # 8, 9
    if self.global_pool:
      x = jnp.mean(x, axis=(1, 2))
    else:
      x = avg_pool_torch(x, 7).reshape(x.shape[0], -1)   # 10, 11 (Flatten)
    features = x
    logits = nn.Dense(self.num_classes, dtype=self.dtype,
                      kernel_init=torch_kernel_init(),
                      bias_init=torch_bias_init(x.shape[-1]),
                      name="cls_0")(x)
    logits = logits.astype(jnp.float32)
    return jax.nn.log_softmax(logits, axis=-1), dict(logits=logits,
                                                     features=features)


def init_variables(model: CNN, rng: jax.Array, batch: int = 2):
  """Initial {'params', 'batch_stats'} of `model` for 32x32 RGB input."""
  x = jnp.zeros((batch, 32, 32, 3), jnp.float32)
  return model.init(rng, x, train=False)
