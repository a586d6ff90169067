"""The ImageNet CGN's L1 reconstruction loss (SPEC §4.4)."""

import jax
import jax.numpy as jnp


def l1_loss(x_gen: jax.Array, x_gt: jax.Array, weight: float) -> jax.Array:
  """λ_L1 · mean|x_gen − x_gt| (upstream `ReconstructionLoss('l1')`).

  Args:
    x_gen: [B, H, W, 3] composite image.
    x_gt: [B, H, W, 3] pseudo ground truth (no gradient: biggan_gt is
      frozen; detached here as well).
    weight: LAMBDA.L1 (100).

  Returns:
    scalar loss (mean over every element, so a batch mean).
  """
  diff = x_gen.astype(jnp.float32) - jax.lax.stop_gradient(x_gt).astype(
      jnp.float32)
  return weight * jnp.mean(jnp.abs(diff))
