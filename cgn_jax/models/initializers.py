"""Upstream initialisers: pix2pix-style `init_net` and PyTorch's defaults.

Mirrors `utils/train_utils.py:init_net` of autonomousvision/
counterfactual_generative_networks (commit 335bebd), SPEC §2.2: every Conv and
Linear weight comes from the chosen scheme with a gain and its bias is 0;
BatchNorm2d weights are N(1, gain) with bias 0; embeddings keep PyTorch's
N(0, 1) default.

Flax kernels are HWIO (conv) and (in, out) (Dense). JAX's fan computation
(in_axis=-2, out_axis=-1, receptive field = the leading axes) gives the same
fan_in/fan_out as PyTorch's (O, I, kh, kw), so the variance-scaling schemes
match. For `orthogonal`, torch flattens a conv weight to (out, in·k·k); Flax
flattens the HWIO kernel to (k·k·in, out), i.e. the transpose up to a
permutation of the k·k·in axis, which preserves orthogonality: the same
distribution.
"""

import math
from typing import Callable

import jax
import jax.numpy as jnp
from flax import linen as nn

Initializer = Callable[..., jax.Array]

INIT_TYPES = ("normal", "xavier", "kaiming", "orthogonal")


def kernel_init(init_type: str, gain: float) -> Initializer:
  """The Conv/Dense weight initialiser of upstream `init_net`.

  Args:
    init_type: 'normal' (N(0, gain)), 'xavier' (xavier-normal with gain),
      'kaiming' (kaiming-normal, fan_in, a=0; gain unused as upstream) or
      'orthogonal' (orthogonal with gain).
    gain: the config's INIT_GAIN.

  Returns:
    A Flax initialiser `(key, shape, dtype) -> array`.
  """
  if init_type == "normal":
    return nn.initializers.normal(stddev=gain)
  if init_type == "xavier":
    return nn.initializers.variance_scaling(gain**2, "fan_avg", "normal")
  if init_type == "kaiming":
    return nn.initializers.variance_scaling(2.0, "fan_in", "normal")
  if init_type == "orthogonal":
    return nn.initializers.orthogonal(scale=gain)
  raise ValueError(
      f"unknown init_type {init_type!r}; valid: {', '.join(INIT_TYPES)}")


def batchnorm_scale_init(gain: float) -> Initializer:
  """BatchNorm weight ~ N(1, gain), as upstream `init_net` does."""

  def init(key, shape, dtype=jnp.float32):
    return 1.0 + gain * jax.random.normal(key, shape, dtype)

  return init


def embedding_init() -> Initializer:
  """PyTorch `nn.Embedding` default: N(0, 1) (untouched by `init_net`)."""
  return nn.initializers.normal(stddev=1.0)


def torch_linear_kernel_init() -> Initializer:
  """PyTorch `nn.Linear`/`nn.Conv2d` default weight init.

  kaiming_uniform(a=sqrt(5)) gives U(±gain·sqrt(3/fan_in)) with
  gain = sqrt(2/(1+5)), i.e. U(±1/sqrt(fan_in)) = variance 1/(3·fan_in).
  """
  return nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def torch_bias_init(fan_in: int) -> Initializer:
  """PyTorch default bias init: U(±1/sqrt(fan_in))."""
  bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init
