"""torchvision VGG16 (no BN) `features`, for the CGN style loss (SPEC §2.5).

Layer names mirror torchvision's state dict: `features.{i}.weight` <->
`features_{i}/kernel`, with convs at indices 0, 2, 5, 7, 10, 12, 14, 17, 19,
21, 24, 26, 28, ReLUs after each conv and 2x2 max-pools at 4, 9, 16, 23, 30.
The style loss taps the ReLU just before each of the first four pools:
relu1_2 (index 3), relu2_2 (8), relu3_3 (15), relu4_3 (22).

Inputs are used as given. Upstream feeds [-1, 1] images without ImageNet
mean/std normalisation (SPEC §10 item 3), and so do the losses here.

VGG16 is frozen, so a training step only needs its input gradient. Apply
it with an extra `frozen` collection (`frozen_variables(params)`, computed
once per set of weights) and each conv becomes a frozen layer:
- its input gradient uses a precomputed flipped, transposed kernel. XLA
  would otherwise redo those copies every step (~45 ms of a 0.6 s CPU step
  at relu4_3), because the weights are an argument of the step;
- on CPU, every conv but the first (3 input channels) runs forward and
  backward as Winograd F(2x2, 3x3) with pre-transformed kernels
  (`winograd.py`). GPUs keep the direct convolution (cuDNN picks its own
  algorithm).
"""

import functools
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from cgn_jax.models import winograd

# (name of the tap, conv indices of its block) in network order.
_BLOCKS = (
    ("relu1_2", ((0, 64), (2, 64))),
    ("relu2_2", ((5, 128), (7, 128))),
    ("relu3_3", ((10, 256), (12, 256), (14, 256))),
    ("relu4_3", ((17, 512), (19, 512), (21, 512))),
    ("relu5_3", ((24, 512), (26, 512), (28, 512))),
)
LAYERS = tuple(name for name, _ in _BLOCKS[:4])
CONV_INDICES = tuple(i for _, convs in _BLOCKS for i, _ in convs)


_DN = ("NHWC", "HWIO", "NHWC")
_conv3x3 = functools.partial(
    jax.lax.conv_general_dilated, window_strides=(1, 1),
    padding=((1, 1), (1, 1)), dimension_numbers=_DN)


def _input_grad_kernel(kernel: jax.Array) -> jax.Array:
  """The kernel whose 3x3 'same' convolution is `_conv3x3`'s input VJP."""
  return jnp.flip(kernel, (0, 1)).swapaxes(2, 3)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _frozen(conv, x, kernel, grad_kernel):
  """`conv(x, kernel)` whose input VJP is `conv(dy, grad_kernel)`.

  `conv` is `_conv3x3` (HWIO kernels) or `winograd.conv3x3` (kernels in the
  Winograd domain): a frozen linear layer either way.
  """
  del grad_kernel
  return conv(x, kernel)


def _frozen_fwd(conv, x, kernel, grad_kernel):
  return conv(x, kernel), grad_kernel


def _frozen_bwd(conv, grad_kernel, dy):
  # Frozen weights: no kernel cotangents (None is a symbolic zero).
  return conv(dy, grad_kernel.astype(dy.dtype)), None, None


_frozen.defvjp(_frozen_fwd, _frozen_bwd)

# With fewer input or output channels Winograd's 16 GEMMs are too thin to
# beat the direct convolution on CPU (VGG16's first conv has 3 inputs).
_WINOGRAD_MIN_CHANNELS = 64


def frozen_variables(params, winograd_convs: bool | None = None
                     ) -> dict[str, dict[str, jax.Array]]:
  """The `frozen` collection for VGG16 `params` (one entry per conv).

  Args:
    params: VGG16 params, {features_i: {kernel, bias}}.
    winograd_convs: use Winograd F(2x2, 3x3) for the convs with at least
      64 input and output channels (all but the first); None (default)
      means on the CPU backend only.

  Returns:
    {features_i: {'grad_kernel'} or {'winograd', 'winograd_grad'}}.
  """
  if winograd_convs is None:
    winograd_convs = jax.default_backend() == "cpu"
  out = {}
  for name, p in params.items():
    grad_kernel = _input_grad_kernel(p["kernel"])
    if winograd_convs and min(p["kernel"].shape[2:]) >= _WINOGRAD_MIN_CHANNELS:
      out[name] = {"winograd": winograd.kernel_transform(p["kernel"]),
                   "winograd_grad": winograd.kernel_transform(grad_kernel)}
    else:
      out[name] = {"grad_kernel": grad_kernel}
  return out


class _Conv3x3(nn.Module):
  """`nn.Conv(features, (3, 3), padding=1)`: same params, init and output.

  Given its `frozen` variables it is a frozen layer: its weights get no
  gradient, and its forward and input gradient use the precomputed kernels.
  """
  features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    kernel = self.param("kernel", nn.initializers.lecun_normal(),
                        (3, 3, x.shape[-1], self.features))
    bias = self.param("bias", nn.initializers.zeros, (self.features,))
    kernel = kernel.astype(self.dtype)
    if self.has_variable("frozen", "winograd"):
      y = _frozen(winograd.conv3x3, x,
                  self.get_variable("frozen", "winograd"),
                  self.get_variable("frozen", "winograd_grad"))
    elif self.has_variable("frozen", "grad_kernel"):
      y = _frozen(_conv3x3, x, kernel,
                  self.get_variable("frozen", "grad_kernel"))
    else:
      y = _conv3x3(x, kernel)
    return y + bias.astype(self.dtype)


def max_pool_2x2(x: jax.Array) -> jax.Array:
  """torch `MaxPool2d(2, 2)` (floor mode) on NHWC input, as a reshape + max.

  Same values as `nn.max_pool`; the gradient is an equality mask instead of
  XLA's select-and-scatter, which is several times slower on CPU. Ties
  share the gradient where torch picks one element; after a ReLU they occur
  only at 0, where the ReLU passes no gradient either way.
  """
  b, h, w, c = x.shape
  x = x[:, :h // 2 * 2, :w // 2 * 2]
  return x.reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


class VGG16(nn.Module):
  """VGG16 features in NHWC, stopping at the last tap that is needed.

  Attributes:
    dtype: compute dtype (float32 or bfloat16); params stay float32 and the
      returned features are float32.
  """
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, upto: str = "relu4_3"):
    """Runs the features stack up to and including tap `upto`.

    Args:
      x: [B, H, W, 3] images (fed as given; upstream uses [-1, 1]).
      upto: the last tap to compute, one of relu1_2, relu2_2, relu3_3,
        relu4_3 (relu5_3 also works). Later layers are not run: the style
        loss passes the last layer with a nonzero weight. `init_variables`
        initialises all 13 convs (upto='relu5_3'), matching torchvision.

    Returns:
      {tap name: [B, h, w, C] float32} for every tap up to `upto`.
    """
    names = [name for name, _ in _BLOCKS]
    if upto not in names:
      raise ValueError(f"unknown VGG16 layer {upto!r}; valid: {names}")
    feats = {}
    h = x.astype(self.dtype)
    for bi, (name, convs) in enumerate(_BLOCKS):
      if bi:  # the max-pool that ends the previous block
        h = max_pool_2x2(h)
      for idx, feat in convs:
        h = _Conv3x3(feat, self.dtype, name=f"features_{idx}")(h)
        h = nn.relu(h)
      feats[name] = h.astype(jnp.float32)
      if name == upto:
        return feats
    raise AssertionError("unreachable")


def init_variables(rng: jax.Array, upto: str = "relu5_3"):
  """Random {'params'} with every conv up to `upto` (a tiny 32x32 trace)."""
  return VGG16().init(rng, jnp.zeros((1, 32, 32, 3), jnp.float32), upto=upto)
