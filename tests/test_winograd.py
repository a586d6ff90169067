"""Winograd F(2x2, 3x3) against XLA's direct convolution."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cgn_jax.models import winograd


def _direct(x, kernel):
  return jax.lax.conv_general_dilated(
      x, kernel, (1, 1), ((1, 1), (1, 1)),
      dimension_numbers=("NHWC", "HWIO", "NHWC"),
      precision=jax.lax.Precision.HIGHEST)


@pytest.mark.parametrize("shape", [(2, 8, 8, 16), (3, 5, 7, 4), (1, 1, 1, 3)])
def test_matches_direct_convolution(shape):
  kx, kk = jax.random.split(jax.random.PRNGKey(0))
  x = jax.random.normal(kx, shape)
  kernel = jax.random.normal(kk, (3, 3, shape[-1], 6)) / (3 * shape[-1]**.5)
  got = jax.jit(winograd.conv3x3)(x, winograd.kernel_transform(kernel))
  want = _direct(x, kernel)
  assert got.shape == want.shape == shape[:3] + (6,)
  np.testing.assert_allclose(got, want, atol=2e-6, rtol=0)


def test_gradient_through_the_transforms():
  # Autodiff through conv3x3 (the VJP of a linear map) equals the direct
  # convolution's: the frozen VGG16 uses its own VJP, but the function
  # itself must be differentiable correctly.
  kx, kk = jax.random.split(jax.random.PRNGKey(1))
  x = jax.random.normal(kx, (2, 6, 6, 5))
  kernel = jax.random.normal(kk, (3, 3, 5, 4)) / 4
  u = winograd.kernel_transform(kernel)
  got = jax.grad(lambda a: jnp.sum(winograd.conv3x3(a, u)**2))(x)
  want = jax.grad(lambda a: jnp.sum(_direct(a, kernel)**2))(x)
  np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


def test_shape_errors():
  with pytest.raises(ValueError, match="3x3 HWIO"):
    winograd.kernel_transform(jnp.zeros((5, 5, 3, 4)))
  u = winograd.kernel_transform(jnp.zeros((3, 3, 3, 4)))
  with pytest.raises(ValueError, match="does not fit input"):
    winograd.conv3x3(jnp.zeros((1, 4, 4, 2)), u)
