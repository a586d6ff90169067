"""Stride-2 convolutions with the space-to-depth input gradient."""

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np
import pytest

from cgn_jax.models import strided_conv

_NHWC = ("NHWC", "HWIO", "NHWC")


def _ref(x, w, strides=(2, 2), padding="VALID"):
  return lax.conv_general_dilated(x, w, strides, padding,
                                  dimension_numbers=_NHWC,
                                  precision=lax.Precision.HIGHEST)


def _flax_style(x, w, strides=(2, 2), padding=((0, 0), (0, 0))):
  # How nn.Conv calls its `conv_general_dilated`.
  dn = lax.conv_dimension_numbers(x.shape, w.shape, _NHWC)
  return strided_conv.conv_general_dilated(
      x, w, strides, list(padding), lhs_dilation=(1, 1),
      rhs_dilation=(1, 1), dimension_numbers=dn, feature_group_count=1,
      precision=None)


def test_space_to_depth_round_trip_and_kernel():
  k = jax.random.split(jax.random.PRNGKey(0), 2)
  x = jax.random.normal(k[0], (2, 8, 6, 3))
  w = jax.random.normal(k[1], (4, 4, 3, 5))
  np.testing.assert_array_equal(
      strided_conv.depth_to_space(strided_conv.space_to_depth(x)), x)
  s2d = lax.conv_general_dilated(
      strided_conv.space_to_depth(x), strided_conv.kernel_to_depth(w),
      (1, 1), "VALID", dimension_numbers=_NHWC,
      precision=lax.Precision.HIGHEST)
  np.testing.assert_allclose(s2d, _ref(x, w), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("size,k,cin,cout", [
    (28, 4, 8, 16),  # DiscConv's model_6 layout (even input)
    (13, 4, 16, 16),  # model_9: odd input, the last row/column unused
    (10, 2, 3, 4),
    (11, 6, 2, 3),
])
def test_value_and_gradients_match_lax(size, k, cin, cout):
  keys = jax.random.split(jax.random.PRNGKey(size), 3)
  x = jax.random.normal(keys[0], (2, size, size, cin))
  w = jax.random.normal(keys[1], (k, k, cin, cout)) * 0.1
  y, vjp = jax.vjp(_flax_style, x, w)
  y_ref, vjp_ref = jax.vjp(_ref, x, w)
  np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
  g = jax.random.normal(keys[2], y.shape)
  for got, want in zip(vjp(g), vjp_ref(g)):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_fast_path_only_where_it_applies():
  """Stride-2 VALID even kernels take the custom VJP on CPU; the rest is
  plain lax (and gives lax's result)."""
  x = jnp.ones((1, 9, 9, 2))

  def uses_custom(w, **kw):
    jaxpr = jax.make_jaxpr(lambda x, w: _flax_style(x, w, **kw))(x, w)
    return "custom_vjp_call" in str(jaxpr)

  assert uses_custom(jnp.ones((4, 4, 2, 3))) == (
      jax.default_backend() == "cpu")
  assert not uses_custom(jnp.ones((3, 3, 2, 3)))  # odd kernel
  assert not uses_custom(jnp.ones((4, 4, 2, 3)), strides=(1, 1))
  assert not uses_custom(jnp.ones((4, 4, 2, 3)),
                         padding=((1, 1), (1, 1)))
  w = jax.random.normal(jax.random.PRNGKey(1), (4, 4, 2, 3))
  np.testing.assert_allclose(
      _flax_style(x, w, padding=((1, 1), (1, 1))),
      _ref(x, w, padding=((1, 1), (1, 1))), rtol=1e-5, atol=1e-5)
