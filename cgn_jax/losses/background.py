"""The ImageNet CGN's background loss (SPEC §4.4)."""

import jax
import jax.numpy as jnp


def background_loss(background_mask: jax.Array, weight: float) -> jax.Array:
  """Batch mean of max(0, λ_bg · mean of each sample's U²-Net(background)).

  Upstream `BackgroundLoss`: pushes the saliency of f_bg's output down, so
  the background holds no object. The clip at 0 only matters for a negative
  λ (the saliency is a sigmoid, in [0, 1]).

  Args:
    background_mask: [B, H, W, 1] U²-Net saliency of the background.
    weight: LAMBDA.BG (2000).

  Returns:
    scalar loss.
  """
  b = background_mask.shape[0]
  per_sample = weight * jnp.mean(
      background_mask.astype(jnp.float32).reshape(b, -1), axis=1)
  return jnp.mean(jnp.maximum(per_sample, 0.0))
