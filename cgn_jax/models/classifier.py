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

import functools
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
  maximum over strided slices, first along W, then along H (a 2-D max is
  separable). Same values as `nn.max_pool`, but the gradient is a few
  elementwise selects instead of XLA's select-and-scatter: on CPU the
  backward pass drops from ~40 ms (select-and-scatter, or a 9-slice
  maximum chain) to ~7 ms at batch 64.

  One difference from torch: where a window holds several equal maxima
  (a constant region, such as MNIST's background), the gradient is split
  between them, where torch gives all of it to the first. Both are
  subgradients with the same sum. torch's rule needs the argmax as a
  residual; the variants tried on XLA:CPU were no faster, some slower.
  """
  x = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)),
              constant_values=-jnp.inf)
  for axis in (2, 1):
    n = (x.shape[axis] - window) // stride + 1
    x = functools.reduce(jnp.maximum, [
        jax.lax.slice_in_dim(x, i, i + stride * (n - 1) + 1, stride, axis)
        for i in range(window)])
  return x


def avg_pool_torch(x: jax.Array, window: int) -> jax.Array:
  """torch `AvgPool2d(window)` (stride = window, no padding, floor mode).

  On an 8x8 map with window 7 the output is 1x1: the mean of the top-left
  7x7 window only (rows/cols 7 are never read).
  """
  return nn.avg_pool(x, (window, window), (window, window), padding="VALID")


class _InputBatchNorm(nn.Module):
  """torch `BatchNorm2d` on the input image, with its affine part returned.

  Returns (x_hat, scale, bias), x_hat = (x - mean) / sqrt(var + eps), so
  that the next conv can fold `scale` and `bias` into its kernel. Variables
  as `nn.BatchNorm`: params scale/bias, batch_stats mean/var. Training
  normalises with the batch's biased variance and updates the running
  variance with the unbiased one, as torch does.
  """

  @nn.compact
  def __call__(self, x, *, train: bool):
    c = x.shape[-1]
    scale = self.param("scale", nn.initializers.ones, (c,))
    bias = self.param("bias", nn.initializers.zeros, (c,))
    ra_mean = self.variable("batch_stats", "mean", jnp.zeros, (c,))
    ra_var = self.variable("batch_stats", "var", jnp.ones, (c,))
    x = x.astype(jnp.float32)
    if train:
      axes = tuple(range(x.ndim - 1))
      mean = jnp.mean(x, axes)
      var = jnp.mean(jnp.square(x - mean), axes)
      if not self.is_initializing():
        n = x.size // c
        ra_mean.value = (_BN_MOMENTUM * ra_mean.value
                         + (1 - _BN_MOMENTUM) * mean)
        ra_var.value = (_BN_MOMENTUM * ra_var.value
                        + (1 - _BN_MOMENTUM) * var * n / max(n - 1, 1))
    else:
      mean, var = ra_mean.value, ra_var.value
    return (x - mean) * jax.lax.rsqrt(var + _BN_EPS), scale, bias


class _FoldedConv(nn.Module):
  """torch `Conv2d(3, features, k, 1, pad)` applied to `scale·x_hat + bias`.

  Computed as conv(x_hat, kernel·scale) + conv(1, kernel·bias): x_hat holds
  no parameters, so the backward pass needs only the kernel gradient, and
  XLA:CPU skips the input gradient of this 3-channel conv, one of the
  slowest ops of the step. The second conv sees one all-ones image, whose
  zero padding makes the bias term correct at the borders too. Params:
  kernel [k, k, C, features] and bias, as `nn.Conv` (torch's init).
  """
  features: int
  kernel_size: int
  pad: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x_hat, scale, shift):
    c, k = x_hat.shape[-1], self.kernel_size
    fan_in = c * k * k
    kernel = self.param("kernel", torch_kernel_init(), (k, k, c,
                                                        self.features))
    bias = self.param("bias", torch_bias_init(fan_in), (self.features,))
    conv = functools.partial(
        jax.lax.conv_general_dilated, window_strides=(1, 1),
        padding=((self.pad, self.pad),) * 2,
        dimension_numbers=("NHWC", "HWIO", "NHWC"))
    ones = jnp.ones((1,) + x_hat.shape[1:], self.dtype)
    y = conv(x_hat.astype(self.dtype),
             (kernel * scale[:, None]).astype(self.dtype))
    y = y + conv(ones, (kernel * shift[:, None]).astype(self.dtype))
    return y + bias.astype(self.dtype)


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
    x_hat, scale, shift = _InputBatchNorm(name="model_0")(x, train=train)
    x = nn.relu(_FoldedConv(32, 5, 2, self.dtype, name="model_1")(
        x_hat, scale, shift))                            # 0, 1, 2
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
