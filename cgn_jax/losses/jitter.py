"""torchvision-equivalent colour jitter for real training images (SPEC §7.2)."""

import dm_pix as pix
import jax
import jax.numpy as jnp


def _grayscale(img):
  # torchvision rgb_to_grayscale weights.
  return (0.2989 * img[..., 0] + 0.587 * img[..., 1]
          + 0.114 * img[..., 2])[..., None]


def _blend(img, other, factor):
  return jnp.clip(factor * img + (1.0 - factor) * other, 0.0, 1.0)


def adjust_color(image: jax.Array, brightness: jax.Array, contrast: jax.Array,
                 saturation: jax.Array, hue: jax.Array,
                 order: jax.Array) -> jax.Array:
  """torchvision's tensor brightness/contrast/saturation/hue, in `order`.

  Args:
    image: [H, W, 3] in [0, 1].
    brightness, contrast, saturation: scalar factors (1 = identity).
    hue: scalar hue shift in [-0.5, 0.5] (0 = identity).
    order: [4] int permutation of (0 brightness, 1 contrast, 2 saturation,
      3 hue), the order in which they are applied.

  Returns:
    [H, W, 3] in [0, 1].
  """

  def adj_brightness(x):
    return _blend(x, jnp.zeros_like(x), brightness)

  def adj_contrast(x):
    return _blend(x, jnp.mean(_grayscale(x)), contrast)

  def adj_saturation(x):
    return _blend(x, _grayscale(x), saturation)

  def adj_hue(x):
    hsv = pix.rgb_to_hsv(x)
    h = jnp.mod(hsv[..., :1] + hue, 1.0)
    return jnp.clip(pix.hsv_to_rgb(jnp.concatenate([h, hsv[..., 1:]], -1)),
                    0.0, 1.0)

  ops = (adj_brightness, adj_contrast, adj_saturation, adj_hue)
  for i in range(4):
    image = jax.lax.switch(order[i], ops, image)
  return image


def color_jitter(rng: jax.Array, images: jax.Array, brightness: float = 0.1,
                 contrast: float = 0.1, saturation: float = 0.1,
                 hue: float = 0.1) -> jax.Array:
  """ColorJitter(0.1, 0.1, 0.1, 0.1) per image, jittable (SPEC §7.2).

  Each image draws brightness/contrast/saturation factors from
  U[1 − b, 1 + b], a hue shift from U[−h, h], and a random order of the four
  ops, like torchvision's `ColorJitter.get_params`.

  Apply it to REAL TRAINING images in [0, 1], BEFORE the (0.5, 0.5)
  normalisation. The reproduction ([FA] `dataloader_augment.py`) applied it
  after Normalize, where torchvision's clamp to [0, 1] zeroes every negative
  value (half the dynamic range), and to the test sets as well (SPEC §10
  item 8); do neither.

  Args:
    rng: PRNG key.
    images: [B, H, W, 3] in [0, 1].
    brightness, contrast, saturation, hue: jitter strengths.

  Returns:
    [B, H, W, 3] in [0, 1].
  """
  n = images.shape[0]
  k_b, k_c, k_s, k_h, k_o = jax.random.split(rng, 5)

  def factor(key, s):
    return jax.random.uniform(key, (n,), minval=max(0.0, 1.0 - s),
                              maxval=1.0 + s)

  b, c, s = factor(k_b, brightness), factor(k_c, contrast), factor(
      k_s, saturation)
  h = jax.random.uniform(k_h, (n,), minval=-hue, maxval=hue)
  order = jax.vmap(lambda k: jax.random.permutation(k, 4))(
      jax.random.split(k_o, n))
  return jax.vmap(adjust_color)(images.astype(jnp.float32), b, c, s, h, order)
