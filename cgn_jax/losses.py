"""MNIST CGN losses (SPEC §2.5), the reproduction's extras (§7.1-7.2) and
[BG]'s edge loss (§8.3), as small pure functions.

Images are NHWC. Generator images are in [-1, 1]. Every weight lives inside
its term, so the generator loss is the plain sum of the returned values, as
upstream (`mnists/train_cgn.py`, `shared/losses.py` of
autonomousvision/counterfactual_generative_networks, commit 335bebd).
"""

from typing import Callable, Sequence

import dm_pix as pix
import jax
import jax.numpy as jnp

from cgn_jax.models import vgg16 as vgg16_lib

STYLE_LAYERS = vgg16_lib.LAYERS  # relu1_2, relu2_2, relu3_3, relu4_3
STYLE_SCALE = 5000.0  # upstream multiplies each style weight as w**2 * 5e3


# ----------------------------------------------------------------- LSGAN ---

def lsgan_generator_loss(d_fake: jax.Array) -> jax.Array:
  """MSE(D(x_gen, y_gen), 1).

  Args:
    d_fake: [B] raw discriminator scores of generated images.

  Returns:
    scalar loss.
  """
  return jnp.mean(jnp.square(d_fake.astype(jnp.float32) - 1.0))


def lsgan_discriminator_loss(d_real: jax.Array,
                             d_fake: jax.Array) -> jax.Array:
  """½·[MSE(D(x_real), 1) + MSE(D(x_gen), 0)].

  Args:
    d_real: [B] scores of real images.
    d_fake: [B] scores of generated images (computed on
      `jax.lax.stop_gradient(x_gen)`, or with G's params held fixed).

  Returns:
    scalar loss.
  """
  real = jnp.mean(jnp.square(d_real.astype(jnp.float32) - 1.0))
  fake = jnp.mean(jnp.square(d_fake.astype(jnp.float32)))
  return 0.5 * (real + fake)


# ------------------------------------------------------------------ mask ---

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


# ----------------------------------------------------------------- style ---

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
    vgg_variables: {'params': ...} (see converters.vgg16.load_vgg16).
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


# ------------------------------------------------------------------ SSIM ---

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


# ---------------------------------------------------------- colour jitter ---

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
