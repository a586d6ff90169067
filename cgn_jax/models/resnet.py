"""torchvision's ResNet-50 (v1.5) in linen, with torchvision's parameter layout.

The backbone of the ImageNet invariant classifier ensemble (SPEC §6.1;
`ensemble.py`). Mirrors `torchvision.models.resnet` (0.29): a 7x7/2 stem
conv, BatchNorm, ReLU and a 3x3/2 max-pool (padding 1), then four stages of
Bottleneck blocks (1x1 -> 3x3 with the stage's stride -> 1x1 expanding x4;
the stride sits on the 3x3 conv, torchvision's "v1.5"), global average
pooling and a Dense classifier.

Submodule names mirror torchvision's state dict so that the converter
(`converters/resnet50.py`) is a rule table: `conv1.weight` <->
`conv1/kernel`, `bn1.{weight,bias,running_mean,running_var}` <->
`bn1/{scale,bias}` + batch_stats `bn1/{mean,var}`, `layer2.0.conv2.weight`
<-> `layer2_0/conv2/kernel`, `layer2.0.downsample.{0,1}` <->
`layer2_0/downsample_{0,1}`, `fc.{weight,bias}` <-> `fc/{kernel,bias}`.

Layout NHWC; paddings are explicit torch-style (NOTES P4: 'SAME' pads a
stride-2 conv (0, 1) where torch pads (1, 1)).

BatchNorm: the invariant ensemble trains with every BatchNorm frozen in
eval mode (running statistics used and never updated; scale and bias still
trained: SPEC §6.2), so `frozen_bn=True` (the default) normalises with the
running statistics in training too. `frozen_bn=False` gives ordinary
train-mode BatchNorm (torch semantics, `batchnorm.BatchNorm`).

Initialisation is torchvision's: convs kaiming-normal (fan_out, ReLU),
BatchNorm scale 1 and bias 0, the Dense layer PyTorch's default
(U(±1/sqrt(fan_in)) for weight and bias). Real runs load converted weights.

Parameters: ResNet-50 25,557,032 (torchvision's count).
"""

import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn

from cgn_jax.models import batchnorm
from cgn_jax.models import initializers
from cgn_jax.models.classifier import max_pool_torch

# torch BatchNorm2d defaults: momentum 0.1 (= flax decay 0.9), eps 1e-5.
_BN_EPS = 1e-5
_BN_MOMENTUM = 0.9

RESNET50_STAGES = (3, 4, 6, 3)
AUX_KEYS = ("features",)


def _conv_init():
  # torchvision: kaiming_normal_(mode='fan_out', nonlinearity='relu').
  return nn.initializers.variance_scaling(2.0, "fan_out", "normal")


class Bottleneck(nn.Module):
  """torchvision `Bottleneck` (expansion 4, stride on the 3x3 conv).

  Attributes:
    planes: width of the 1x1 and 3x3 convs; the block outputs 4·planes.
    stride: of the 3x3 conv and the downsample conv.
    downsample: add the 1x1 conv + BatchNorm projection on the shortcut.
    frozen_bn: BatchNorm always uses its running statistics.
    dtype: compute dtype of the convs.
  """
  planes: int
  stride: int = 1
  downsample: bool = False
  frozen_bn: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    conv = functools.partial(nn.Conv, use_bias=False, dtype=self.dtype,
                             kernel_init=_conv_init())
    bn = functools.partial(
        batchnorm.BatchNorm, use_running_average=self.frozen_bn or not train,
        momentum=_BN_MOMENTUM, epsilon=_BN_EPS, dtype=self.dtype)
    s = self.stride
    y = nn.relu(bn(name="bn1")(conv(self.planes, (1, 1), name="conv1")(x)))
    y = conv(self.planes, (3, 3), (s, s), padding=((1, 1), (1, 1)),
             name="conv2")(y)
    y = nn.relu(bn(name="bn2")(y))
    y = bn(name="bn3")(conv(4 * self.planes, (1, 1), name="conv3")(y))
    if self.downsample:
      x = conv(4 * self.planes, (1, 1), (s, s), name="downsample_0")(x)
      x = bn(name="downsample_1")(x)
    return nn.relu(y + x)


class ResNet(nn.Module):
  """torchvision ResNet with Bottleneck blocks (ResNet-50 by default).

  Attributes:
    stage_sizes: blocks per stage; (3, 4, 6, 3) is ResNet-50. Smaller ones
      (e.g. (1, 1, 1, 1)) are for smoke runs and tests.
    width: planes of the first stage (64 in torchvision; doubled per stage),
      so the features have 8·width·4 = 2048 channels for ResNet-50.
    num_classes: output classes of `fc`; None drops the classifier (the
      ensemble's backbone: torchvision's children without the last).
    frozen_bn: see the module docstring.
    dtype: compute dtype (params and BatchNorm statistics stay float32;
      logits are returned in float32).
  """
  stage_sizes: Sequence[int] = RESNET50_STAGES
  width: int = 64
  num_classes: int | None = 1000
  frozen_bn: bool = True
  dtype: Any = jnp.float32

  @property
  def num_features(self) -> int:
    return self.width * 2 ** (len(self.stage_sizes) - 1) * 4

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    """Classifies (or embeds) images.

    Args:
      x: [B, H, W, 3] ImageNet-normalised images (224x224 for ImageNet).
      train: only matters with `frozen_bn=False` (batch statistics, updated
        running statistics: apply with `mutable=['batch_stats']`).

    Returns:
      (logits [B, num_classes] float32, aux) with aux 'features' [B, C] (the
      globally average-pooled map, float32); with `num_classes=None` the
      first element is the features.
    """
    x = nn.Conv(self.width, (7, 7), (2, 2), padding=((3, 3), (3, 3)),
                use_bias=False, dtype=self.dtype, kernel_init=_conv_init(),
                name="conv1")(x.astype(self.dtype))
    x = batchnorm.BatchNorm(
        use_running_average=self.frozen_bn or not train,
        momentum=_BN_MOMENTUM, epsilon=_BN_EPS, dtype=self.dtype,
        name="bn1")(x)
    x = max_pool_torch(nn.relu(x), 3, 2, 1)
    for i, blocks in enumerate(self.stage_sizes):
      for j in range(blocks):
        stride = 2 if i > 0 and j == 0 else 1
        x = Bottleneck(self.width * 2**i, stride, downsample=j == 0,
                       frozen_bn=self.frozen_bn, dtype=self.dtype,
                       name=f"layer{i + 1}_{j}")(x, train=train)
    features = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
    if self.num_classes is None:
      return features, {"features": features}
    fan_in = features.shape[-1]
    logits = nn.Dense(self.num_classes, dtype=self.dtype,
                      kernel_init=initializers.torch_linear_kernel_init(),
                      bias_init=initializers.torch_bias_init(fan_in),
                      name="fc")(features)
    return logits.astype(jnp.float32), {"features": features}


def resnet50(**kwargs) -> ResNet:
  """torchvision's `resnet50()` (override fields with kwargs)."""
  return ResNet(stage_sizes=RESNET50_STAGES, width=64, **kwargs)


def init_variables(model: nn.Module, rng: jax.Array, image_size: int = 224,
                   batch: int = 1):
  """Initial {'params', 'batch_stats'} of `model` for RGB images."""
  x = jnp.zeros((batch, image_size, image_size, 3), jnp.float32)
  return model.init(rng, x, train=False)
