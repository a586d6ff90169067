"""Gram-matrix style loss on VGG16 taps, as upstream's PerceptualLoss
(`shared/losses.py`; SPEC §2.5, §4.4)."""

from typing import Callable, Sequence

import jax
import jax.numpy as jnp

from cgn_jax.models import vgg16 as vgg16_lib

STYLE_LAYERS = vgg16_lib.LAYERS  # relu1_2, relu2_2, relu3_3, relu4_3
STYLE_SCALE = 5000.0  # upstream multiplies each style weight as w**2 * 5e3


def gram_matrix(features: jax.Array) -> jax.Array:
  """Per-sample Gram matrix F·Fᵀ / (C·H·W).

  Args:
    features: [B, H, W, C].

  Returns:
    [B, C, C] float32.
  """
  _, h, w, c = features.shape
  f = features.astype(jnp.float32)
  return jnp.einsum("bhwc,bhwd->bcd", f, f) / (c * h * w)


def style_loss_terms(vgg_apply: Callable, vgg_variables, x_gen: jax.Array,
                     x_target: jax.Array,
                     weights: Sequence[float]) -> dict[str, jax.Array]:
  """The Gram style terms of upstream's PerceptualLoss, per VGG layer.

  term_l = w_l² · 5000 · mean|G_l(x_gen) − G_l(x_target)| (L1 averaged over
  B·C·C). Layers whose weight is 0 are skipped and VGG16 runs only up to the
  last layer with a nonzero weight. The content terms of upstream are 0 in
  every CGN config and are not implemented. Both batches go through VGG in one
  call; the target side carries no gradient.

  Args:
    vgg_apply: `VGG16(...).apply`, called as
      `vgg_apply(vgg_variables, x, upto=name) -> {name: features}`.
    vgg_variables: {'params': ...} (see cgn_jax.models.vgg16_weights.load_vgg16).
    x_gen: [B, H, W, 3] generated images in [-1, 1] (fed as they are, no
      ImageNet normalisation, as upstream).
    x_target: [B, H, W, 3] real images in [-1, 1].
    weights: the four LAMBDAS.PERC style weights for relu1_2, relu2_2,
      relu3_3, relu4_3. They must be Python numbers (static under jit).

  Returns:
    {layer name: scalar term} for the layers with a nonzero weight.
  """
  if len(weights) != len(STYLE_LAYERS):
    raise ValueError(f"need {len(STYLE_LAYERS)} style weights "
                     f"({', '.join(STYLE_LAYERS)}), got {list(weights)}")
  active = [(name, float(w)) for name, w in zip(STYLE_LAYERS, weights)
            if float(w) != 0.0]
  if not active:
    return {}
  b = x_gen.shape[0]
  x = jnp.concatenate([x_gen, jax.lax.stop_gradient(x_target)], axis=0)
  feats = vgg_apply(vgg_variables, x, upto=active[-1][0])
  terms = {}
  for name, w in active:
    g = gram_matrix(feats[name])
    g_tgt = jax.lax.stop_gradient(g[b:])
    terms[name] = w**2 * STYLE_SCALE * jnp.mean(jnp.abs(g[:b] - g_tgt))
  return terms


def style_loss(vgg_apply: Callable, vgg_variables, x_gen: jax.Array,
               x_target: jax.Array, weights: Sequence[float]) -> jax.Array:
  """Sum of `style_loss_terms` (0.0 when every weight is 0).

  See `style_loss_terms` for the arguments.
  """
  terms = style_loss_terms(vgg_apply, vgg_variables, x_gen, x_target,
                           weights)
  return sum(terms.values(), jnp.zeros((), jnp.float32))
