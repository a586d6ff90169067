"""Losses of cgn_jax.losses on hand-computed inputs (SPEC §2.5, §7, §8.3)."""

import dm_pix as pix
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cgn_jax import losses
from cgn_jax.models import cgn as cgn_lib



pytestmark = pytest.mark.usefixtures("fast_compile")


def test_binary_entropy_in_bits():
  half = jnp.full((2, 4, 4, 3), 0.5)
  assert float(losses.binary_entropy_loss(half, 0.3)) == pytest.approx(0.3)
  p = 0.25
  expected = -p * np.log2(p) - (1 - p) * np.log2(1 - p)
  mask = jnp.full((1, 2, 2, 3), p)
  assert float(losses.binary_entropy_loss(mask, 1.0)) == pytest.approx(
      expected, rel=1e-6)
  # Clamped extremes are finite and near 0 bits.
  ext = jnp.asarray([cgn_lib.MASK_MIN, cgn_lib.MASK_MAX]).reshape(1, 1, 2, 1)
  assert 0 < float(losses.binary_entropy_loss(ext, 1.0)) < 2e-3


def test_lsgan():
  d_fake = jnp.asarray([0.0, 2.0])
  d_real = jnp.asarray([1.0, 0.0])
  # G: mean((0-1)², (2-1)²) = 1.
  assert float(losses.lsgan_generator_loss(d_fake)) == pytest.approx(1.0)
  # D: ½·[mean(0², 1²) + mean(0², 2²)] = ½·(0.5 + 2) = 1.25.
  assert float(losses.lsgan_discriminator_loss(d_real, d_fake)) == (
      pytest.approx(1.25))


def test_gram_on_constant_features():
  a, c = 3.0, 4
  f = jnp.full((2, 5, 7, c), a)
  # Every entry: sum over H·W of a² divided by C·H·W = a²/C.
  np.testing.assert_allclose(losses.gram_matrix(f),
                             np.full((2, c, c), a * a / c), rtol=1e-6)
  f = jnp.zeros((1, 2, 2, 2)).at[0, 0, 0, 0].set(2.0).at[0, 0, 0, 1].set(1.0)
  np.testing.assert_allclose(losses.gram_matrix(f)[0],
                             np.array([[4.0, 2.0], [2.0, 1.0]]) / 8, rtol=1e-6)


def _fake_vgg(calls):
  """A 'VGG' whose tap l is the per-sample constant x[b,0,0,0] with C_l."""
  chans = dict(relu1_2=2, relu2_2=4, relu3_3=8, relu4_3=16)

  def apply(variables, x, *, upto):
    del variables
    calls.append(upto)
    out = {}
    for name, c in chans.items():
      out[name] = jnp.broadcast_to(x[:, :1, :1, :1], (x.shape[0], 2, 2, c))
      if name == upto:
        return out
    raise AssertionError(upto)

  return apply, chans


def test_style_loss_multiplier_and_skipped_layers():
  calls = []
  apply, chans = _fake_vgg(calls)
  gen, tgt = 0.5, -1.0
  x_gen = jnp.full((3, 8, 8, 3), gen)
  x_tgt = jnp.full((3, 8, 8, 3), tgt)
  weights = [0.01, 0.05, 0.0, 0.0]
  terms = losses.style_loss_terms(apply, None, x_gen, x_tgt, weights)
  assert calls == ["relu2_2"]  # VGG stops at the last nonzero weight
  assert set(terms) == {"relu1_2", "relu2_2"}
  for name, w in zip(losses.STYLE_LAYERS, weights):
    if w:
      # Gram entries are a²/C; multiplier w²·5000.
      want = w**2 * 5000 * abs(gen**2 - tgt**2) / chans[name]
      assert float(terms[name]) == pytest.approx(want, rel=1e-5)
  total = losses.style_loss(apply, None, x_gen, x_tgt, weights)
  assert float(total) == pytest.approx(sum(map(float, terms.values())))
  assert float(losses.style_loss(apply, None, x_gen, x_tgt,
                                 [0, 0, 0, 0])) == 0.0
  with pytest.raises(ValueError, match="4 style weights"):
    losses.style_loss(apply, None, x_gen, x_tgt, [0.1])


def test_ssim_loss_value():
  a = jax.random.uniform(jax.random.PRNGKey(0), (2, 16, 16, 3), minval=-1)
  b = jax.random.uniform(jax.random.PRNGKey(1), (2, 16, 16, 3), minval=-1)
  assert float(losses.ssim_loss(a, a, 0.7)) == pytest.approx(0.0, abs=1e-6)
  want = 0.7 * (1 - float(jnp.mean(pix.ssim(a, b, max_val=2.0))))
  assert float(losses.ssim_loss(a, b, 0.7)) == pytest.approx(want, rel=1e-5)


def test_ssim_gradient_reaches_the_generator():
  """The reproduction's SSIM was detached; here λ_ssim changes G's grads."""
  model = cgn_lib.CGN(latent_sz=4, ngf=4, init_type="normal", init_gain=0.1)
  y = jnp.arange(4) % 10
  x_real = jax.random.uniform(jax.random.PRNGKey(2), (4, 32, 32, 3),
                              minval=-1)
  rngs = {"noise": jax.random.PRNGKey(3), "shuffle": jax.random.PRNGKey(4)}

  @jax.jit
  def grads(lam):
    variables = cgn_lib.init_variables(model, jax.random.PRNGKey(5))

    def loss(params):
      (x, aux), _ = model.apply(
          {"params": params, "batch_stats": variables["batch_stats"]}, y,
          train=True, rngs=rngs, mutable=["batch_stats"])
      return (losses.binary_entropy_loss(aux["mask"], 0.3)
              + losses.ssim_loss(x, x_real, lam))

    return jax.grad(loss)(variables["params"])

  g0, g1, g2 = jax.device_get([grads(0.0), grads(1.0), grads(2.0)])
  for mech in ("f_shape", "f_text1", "f_text2"):
    k0 = g0[mech]["layers_0"]["kernel"]
    k1 = g1[mech]["layers_0"]["kernel"]
    k2 = g2[mech]["layers_0"]["kernel"]
    assert np.abs(k1 - k0).max() > 1e-6, mech
    # Linear in λ: the SSIM part doubles with the weight.
    np.testing.assert_allclose(k2 - k0, 2 * (k1 - k0), rtol=1e-3, atol=1e-7)


def test_color_jitter_range_and_identity():
  imgs = jax.random.uniform(jax.random.PRNGKey(6), (6, 8, 8, 3))
  out = jax.jit(losses.color_jitter)(jax.random.PRNGKey(7), imgs)
  assert out.shape == imgs.shape
  assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
  assert not np.allclose(out, imgs, atol=1e-3)
  # Mean change is small at strength 0.1.
  assert float(jnp.abs(out - imgs).mean()) < 0.15

  ident = jax.jit(jax.vmap(lambda im, o: losses.adjust_color(
      im, 1.0, 1.0, 1.0, 0.0, o)))
  orders = jnp.asarray([[0, 1, 2, 3], [3, 2, 1, 0], [2, 0, 3, 1],
                        [1, 3, 0, 2], [0, 2, 1, 3], [3, 0, 1, 2]])
  np.testing.assert_allclose(ident(imgs, orders), imgs, atol=1e-5)


def test_adjust_color_ops():
  img = jnp.asarray([[[0.2, 0.4, 0.6], [0.8, 0.1, 0.3]]])  # 1x2x3
  order = jnp.arange(4)
  bright = losses.adjust_color(img, 2.0, 1.0, 1.0, 0.0, order)
  np.testing.assert_allclose(bright, np.clip(2 * np.asarray(img), 0, 1),
                             atol=1e-6)
  gray = (0.2989 * img[..., 0] + 0.587 * img[..., 1] + 0.114 * img[..., 2])
  desat = losses.adjust_color(img, 1.0, 1.0, 0.0, 0.0, order)
  np.testing.assert_allclose(desat, np.repeat(gray[..., None], 3, -1),
                             atol=1e-6)
  flat = losses.adjust_color(img, 1.0, 0.0, 1.0, 0.0, order)
  np.testing.assert_allclose(flat, np.full(img.shape, gray.mean()),
                             atol=1e-6)
  # A hue shift of 1/3 cycles R -> G -> B for a pure colour.
  red = jnp.asarray([[[1.0, 0.0, 0.0]]])
  np.testing.assert_allclose(
      losses.adjust_color(red, 1.0, 1.0, 1.0, 1 / 3, order), [[[0, 1, 0]]],
      atol=1e-5)


def test_edge_loss():
  b, h, w = 2, 32, 32
  border = w // 5  # 6 px
  ones = jnp.ones((b, h, w, 1))
  centre = (h - 2 * border) * (w - 2 * border)  # 400 px per image
  # (sum − 2·centre) / (W·H·B), per image identical.
  want = (h * w - 2 * centre) / (h * w)
  assert float(losses.edge_loss(ones, 1.0)) == pytest.approx(want)
  only_centre = jnp.zeros((b, h, w, 1)).at[:, border:h - border,
                                           border:w - border].set(1.0)
  assert float(losses.edge_loss(only_centre, 2.0)) == pytest.approx(
      2.0 * (centre - 2 * centre) / (h * w))
  only_border = ones - only_centre
  assert float(losses.edge_loss(only_border, 1.0)) == pytest.approx(
      (h * w - centre) / (h * w))
