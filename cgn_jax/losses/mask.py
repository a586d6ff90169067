"""Mask priors: binary entropy (SPEC §2.5, §4.4), [BG]'s edge loss (§8.3) and
the ImageNet CGN's mask-size hinge (§4.4)."""

import jax
import jax.numpy as jnp


def binary_entropy_loss(mask: jax.Array, weight: float) -> jax.Array:
  """λ_mask · mean of the binary entropy in bits, −p log2 p − (1−p) log2(1−p).

  Args:
    mask: clamped mask (the CGN's aux['mask'], [B, H, W, 3]); values must lie
      strictly inside (0, 1), which the clamp to [1e-4, 0.9999] guarantees.
    weight: LAMBDAS.MASK.

  Returns:
    scalar loss (1 bit · weight for p = 0.5 everywhere).
  """
  p = mask.astype(jnp.float32)
  ent = -p * jnp.log2(p) - (1.0 - p) * jnp.log2(1.0 - p)
  return weight * jnp.mean(ent)


def edge_loss(mask: jax.Array, weight: float,
              border_frac: float = 0.2) -> jax.Array:
  """[BG]'s loss against mask collapse (their App. C; SPEC §8.3).

  Their code: border b = W // 5 pixels (1/5 of the width, not the 3 px their
  report says), centre = mask[b:H−b, b:W−b], and
  loss = λ_edge · (sum(mask) − 2·sum(centre)) / (W·H·B)
       = λ_edge · (border mass − centre mass) / (W·H·B).
  It penalises mask mass on the border and rewards it in the centre, so it
  can be negative. The sums run over every channel of the mask passed in; the
  CGN's aux['mask'] repeats one map to 3 channels, which triples the value
  relative to the 1-channel map (folded into λ_edge). The same b is used on
  both axes (the images are square).

  Args:
    mask: [B, H, W, C] mask in [0, 1].
    weight: λ_edge.
    border_frac: border width as a fraction of W (1/5 in [BG]).

  Returns:
    scalar loss.
  """
  b, h, w, _ = mask.shape
  border = int(w * border_frac)
  m = mask.astype(jnp.float32)
  centre = m[:, border:h - border, border:w - border, :]
  return weight * (jnp.sum(m) - 2.0 * jnp.sum(centre)) / (w * h * b)


def mask_size_loss(mask: jax.Array, weight: float,
                   interval: tuple[float, float] = (0.1, 0.9)) -> jax.Array:
  """λ · batch mean of max(0, lo − μ) + max(0, μ − hi), μ = a sample's mean mask.

  Upstream `MaskLoss` (ImageNet, SPEC §4.4): keeps the object from vanishing
  or filling the whole image. The hinge has zero gradient inside the
  interval.

  Args:
    mask: [B, H, W, C] clipped mask.
    weight: LAMBDA.MASK (500).
    interval: (lo, hi), upstream [0.1, 0.9].

  Returns:
    scalar loss.
  """
  lo, hi = interval
  mu = jnp.mean(mask.astype(jnp.float32), axis=(1, 2, 3))
  hinge = jnp.maximum(0.0, lo - mu) + jnp.maximum(0.0, mu - hi)
  return weight * jnp.mean(hinge)
