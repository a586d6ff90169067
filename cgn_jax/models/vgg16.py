"""torchvision VGG16 (no BN) `features`, for the CGN style loss (SPEC §2.5).

Layer names mirror torchvision's state dict: `features.{i}.weight` <->
`features_{i}/kernel`, with convs at indices 0, 2, 5, 7, 10, 12, 14, 17, 19,
21, 24, 26, 28, ReLUs after each conv and 2x2 max-pools at 4, 9, 16, 23, 30.
The style loss taps the ReLU just before each of the first four pools:
relu1_2 (index 3), relu2_2 (8), relu3_3 (15), relu4_3 (22).

Inputs are used as given. Upstream feeds [-1, 1] images without ImageNet
mean/std normalisation (SPEC §10 item 3), and so do the losses here.
"""

from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

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
        h = nn.max_pool(h, (2, 2), strides=(2, 2), padding="VALID")
      for idx, feat in convs:
        h = nn.Conv(feat, (3, 3), padding=((1, 1), (1, 1)), dtype=self.dtype,
                    name=f"features_{idx}")(h)
        h = nn.relu(h)
      feats[name] = h.astype(jnp.float32)
      if name == upto:
        return feats
    raise AssertionError("unreachable")


def init_variables(rng: jax.Array, upto: str = "relu5_3"):
  """Random {'params'} with every conv up to `upto` (a tiny 32x32 trace)."""
  return VGG16().init(rng, jnp.zeros((1, 32, 32, 3), jnp.float32), upto=upto)
