"""The CGN composer: x = m ⊙ f + (1 − m) ⊙ b (Sauer & Geiger 2021, Eq. 2).

Shared by the MNIST CGN and the ImageNet CGN. It is a plain function so that
counterfactual generation can compose a fixed mask with many textures.
"""

import jax


def compose(mask: jax.Array, foreground: jax.Array,
            background: jax.Array) -> jax.Array:
  """Alpha-composites a foreground onto a background.

  Args:
    mask: [B, H, W, 1 or C] values in [0, 1] (broadcast over channels).
    foreground: [B, H, W, C].
    background: [B, H, W, C].

  Returns:
    [B, H, W, C] composite `mask * foreground + (1 - mask) * background`.
  """
  return mask * foreground + (1.0 - mask) * background
