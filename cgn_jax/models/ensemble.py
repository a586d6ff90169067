"""The invariant classifier ensemble: one backbone, three heads (SPEC §6.1).

Mirrors `imagenet/models/classifier_ensemble.py:InvariantEnsemble(arch,
pretrained, cut=1)` of autonomousvision/counterfactual_generative_networks
(commit 335bebd): a torchvision ResNet-50 without its fc (`backbone`, usually
pretrained on ImageNet) and three new `Linear(2048, 1000)` heads with
PyTorch's default initialisation (kaiming_uniform(a=√5) weight, i.e.
U(±1/sqrt(2048)), and U(±1/sqrt(2048)) bias), one per mechanism: shape,
texture and background. Outputs (logits):

  shape, texture, bg                   one per head
  avg = (shape + texture + bg) / 3     the ensemble's prediction
  shape_texture = (shape + texture) / 2  without the background head

Parameter names mirror upstream's state dict: `backbone.{i}` is torchvision
ResNet-50's i-th child (0 conv1, 1 bn1, 4-7 layer1-4; 2 ReLU, 3 max-pool and
8 avg-pool hold no weights) and is kept under `backbone/` with torchvision's
own names (`resnet.py`); `m_shape.1.{weight,bias}` (index 1: the Linear after
a Flatten) <-> `m_shape_1/{kernel,bias}`, likewise `m_texture_1`, `m_bg_1`.
"""

from typing import Any, Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn

from cgn_jax.models import initializers
from cgn_jax.models import resnet

HEADS = ("shape", "texture", "bg")
OUTPUTS = ("shape", "texture", "bg", "avg", "shape_texture")


class InvariantEnsemble(nn.Module):
  """ResNet backbone + shape / texture / background heads.

  Attributes:
    num_classes: classes per head (1000 for ImageNet).
    stage_sizes, width: the backbone (ResNet-50 by default; smaller ones for
      smoke runs and tests).
    frozen_bn: the backbone's BatchNorm always uses running statistics (the
      upstream recipe); see resnet.py.
    dtype: compute dtype (params float32; logits float32).
  """
  num_classes: int = 1000
  stage_sizes: Sequence[int] = resnet.RESNET50_STAGES
  width: int = 64
  frozen_bn: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    """Classifies images with every head.

    Args:
      x: [B, H, W, 3] ImageNet-normalised images.
      train: passed to the backbone (matters only with frozen_bn=False).

    Returns:
      (avg logits [B, num_classes], aux) with aux holding every name of
      OUTPUTS ([B, num_classes] float32 each) and 'features' [B, C].
    """
    features, _ = resnet.ResNet(
        stage_sizes=self.stage_sizes, width=self.width, num_classes=None,
        frozen_bn=self.frozen_bn, dtype=self.dtype, name="backbone")(
            x, train=train)
    fan_in = features.shape[-1]
    out = {}
    for head in HEADS:
      out[head] = nn.Dense(
          self.num_classes, dtype=self.dtype,
          kernel_init=initializers.torch_linear_kernel_init(),
          bias_init=initializers.torch_bias_init(fan_in),
          name=f"m_{head}_1")(features).astype(jnp.float32)
    out["avg"] = (out["shape"] + out["texture"] + out["bg"]) / 3
    out["shape_texture"] = (out["shape"] + out["texture"]) / 2
    out["features"] = features
    return out["avg"], out


def init_variables(model: InvariantEnsemble, rng: jax.Array,
                   image_size: int = 224, batch: int = 1):
  """Initial {'params', 'batch_stats'} of `model` for RGB images."""
  x = jnp.zeros((batch, image_size, image_size, 3), jnp.float32)
  return model.init(rng, x, train=False)
