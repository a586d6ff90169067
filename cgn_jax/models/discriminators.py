"""The MNIST CGN discriminators, DiscLin and DiscConv (SPEC §2.4).

Mirrors `mnists/models/discriminator.py` of autonomousvision/
counterfactual_generative_networks (commit 335bebd); names follow its state
dict (`label_embedding`, `model.{i}` -> `model_{i}`) although no upstream
discriminator weights were released (checkpoints hold the generator only).

Both take NHWC images in [-1, 1] and int labels and return one raw score per
sample (LSGAN: no sigmoid). RNG stream: `dropout` (DiscLin, train mode).
Variables: `params`, plus `batch_stats` for DiscConv.
"""

from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from cgn_jax.models import batchnorm
from cgn_jax.models import initializers
from cgn_jax.models import strided_conv

_LEAK = 0.2


class DiscLin(nn.Module):
  """MLP discriminator on [flattened image, label embedding].

  Layers (torch index): 0 Linear(3072 + n_classes -> ndf), 1 LeakyReLU,
  2 Linear, 3 Dropout(0.4), 4 LeakyReLU, 5 Linear, 6 Dropout(0.4),
  7 LeakyReLU, 8 Linear(ndf -> 1). Dropout sits before the activation, as
  upstream. PyTorch default init (no `init_net`): 2,104,421 parameters at
  ndf 512.

  The image is flattened in torch's CHW order (a transpose of NHWC) so that
  the first Dense kernel would map 1:1 onto a torch weight. No torch weights
  exist, so this only fixes the convention; the transpose is fused by XLA.
  """
  n_classes: int = 10
  ndf: int = 512
  dropout_rate: float = 0.4
  dtype: Any = jnp.float32

  def _dense(self, x, features, name):
    fan_in = x.shape[-1]
    return nn.Dense(features, dtype=self.dtype,
                    kernel_init=initializers.torch_linear_kernel_init(),
                    bias_init=initializers.torch_bias_init(fan_in),
                    name=name)(x)

  @nn.compact
  def __call__(self, x, y, *, train: bool):
    """Scores images.

    Args:
      x: [B, H, W, C] images.
      y: [B] int labels.
      train: dropout active (needs the 'dropout' RNG).

    Returns:
      [B] float32 raw scores.
    """
    emb = nn.Embed(self.n_classes, self.n_classes,
                   embedding_init=initializers.embedding_init(),
                   name="label_embedding")(y)
    flat = jnp.transpose(x, (0, 3, 1, 2)).reshape(x.shape[0], -1)
    h = jnp.concatenate([flat.astype(jnp.float32), emb], -1)
    h = nn.leaky_relu(self._dense(h, self.ndf, "model_0"), _LEAK)
    for i in (2, 5):
      h = self._dense(h, self.ndf, f"model_{i}")
      h = nn.Dropout(self.dropout_rate, deterministic=not train)(h)
      h = nn.leaky_relu(h, _LEAK)
    out = self._dense(h, 1, "model_8")
    return out[:, 0].astype(jnp.float32)


class DiscConv(nn.Module):
  """Conv discriminator with the label as a fourth input plane.

  Layers (torch index): blocks of conv (no bias, VALID) + BatchNorm +
  LeakyReLU(0.2) at 0-2 (3x3 s1), 3-5 (3x3 s1), 6-8 (4x4 s2), 9-11 (4x4 s2);
  12 AvgPool(3) (stride 3, 5x5 -> 1x1 at 32x32 input); 13 conv 1x1 no bias.
  `init_net` defaults: normal, gain 0.02, BatchNorm scale N(1, 0.02);
  the embedding keeps N(0, 1). 413,642 parameters at ndf 32.
  """
  n_classes: int = 10
  ndf: int = 32
  init_type: str = "normal"
  init_gain: float = 0.02
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, y, *, train: bool):
    """Scores images.

    Args:
      x: [B, 32, 32, C] images.
      y: [B] int labels.
      train: BatchNorm uses batch statistics and updates `batch_stats`.

    Returns:
      [B] float32 raw scores.
    """
    emb = nn.Embed(self.n_classes, 1,
                   embedding_init=initializers.embedding_init(),
                   name="label_embedding")(y)
    plane = jnp.broadcast_to(emb[:, None, None, :], x.shape[:3] + (1,))
    h = jnp.concatenate([x.astype(jnp.float32), plane], -1)
    kinit = initializers.kernel_init(self.init_type, self.init_gain)
    blocks = ((0, self.ndf, 3, 1), (3, 2 * self.ndf, 3, 1),
              (6, 4 * self.ndf, 4, 2), (9, 4 * self.ndf, 4, 2))
    for idx, feats, k, s in blocks:
      h = nn.Conv(feats, (k, k), strides=(s, s), padding="VALID",
                  use_bias=False, dtype=self.dtype, kernel_init=kinit,
                  conv_general_dilated=strided_conv.conv_general_dilated,
                  name=f"model_{idx}")(h)
      h = batchnorm.BatchNorm(
          use_running_average=not train, momentum=0.9, epsilon=1e-5,
          dtype=self.dtype,
          scale_init=initializers.batchnorm_scale_init(self.init_gain),
          bias_init=nn.initializers.zeros, name=f"model_{idx + 1}")(h)
      h = nn.leaky_relu(h, _LEAK)
    h = nn.avg_pool(h, (3, 3), strides=(3, 3), padding="VALID")
    h = nn.Conv(1, (1, 1), use_bias=False, dtype=self.dtype,
                kernel_init=kinit, name="model_13")(h)
    return h.reshape(h.shape[0]).astype(jnp.float32)


def create(kind: str, **kwargs) -> nn.Module:
  """Builds a discriminator by the config's MODEL.DISC name.

  Args:
    kind: 'linear' (DiscLin) or 'conv' (DiscConv).
    **kwargs: module fields (n_classes, ndf, dtype, ...).
  """
  registry = {"linear": DiscLin, "conv": DiscConv}
  if kind not in registry:
    raise ValueError(f"unknown discriminator {kind!r}; valid: "
                     f"{', '.join(registry)}")
  return registry[kind](**kwargs)


def init_variables(model: nn.Module, rng: jax.Array, img_sz: int = 32,
                   batch: int = 2):
  """Initial variables of a discriminator ({'params'[, 'batch_stats']})."""
  x = jnp.zeros((batch, img_sz, img_sz, 3), jnp.float32)
  y = jnp.zeros((batch,), jnp.int32)
  return model.init({"params": rng}, x, y, train=False)
