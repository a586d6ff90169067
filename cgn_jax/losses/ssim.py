"""Differentiable SSIM loss, the reproduction's extra (SPEC §7.1)."""

import dm_pix as pix
import jax
import jax.numpy as jnp


def ssim_loss(x_gen: jax.Array, x_target: jax.Array, weight: float,
              max_val: float = 2.0) -> jax.Array:
  """λ_ssim · (1 − mean SSIM(x_gen, x_target)), with gradient to x_gen.

  The reproduction ([FA] `train_cgn_ssim.py`, SPEC §7.1) detached x_gen and
  used data_range 1, so its SSIM never reached the generator. Here the loss
  is differentiable in x_gen; data range 2 for [-1, 1] images. dm-pix
  defaults otherwise (Gaussian window 11, σ 1.5, K = 0.01/0.03, valid
  filtering). The target carries no gradient. Note that the real batch has
  other labels, so this is a structure prior, not a reconstruction.

  Args:
    x_gen: [B, H, W, C] generated images in [-1, 1] (H, W ≥ 11).
    x_target: [B, H, W, C] real images in [-1, 1].
    weight: λ_ssim.
    max_val: data range (2 for [-1, 1]).

  Returns:
    scalar loss.
  """
  s = pix.ssim(x_gen.astype(jnp.float32),
               jax.lax.stop_gradient(x_target).astype(jnp.float32),
               max_val=max_val)
  return weight * (1.0 - jnp.mean(s))
