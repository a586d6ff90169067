"""The torch-style BatchNorm with matrix-vector channel sums."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cgn_jax.models import batchnorm


def test_channel_sum_is_the_sum_over_leading_axes():
  x = jax.random.normal(jax.random.PRNGKey(0), (4, 5, 6, 7))
  np.testing.assert_allclose(batchnorm.channel_sum(x), x.sum((0, 1, 2)),
                             rtol=1e-5, atol=1e-5)


def _torch_bn_step(x, scale, bias, running_mean, running_var, g):
  """One torch BatchNorm2d training forward and backward on NHWC arrays."""
  import torch  # pylint: disable=g-import-not-at-top
  bn = torch.nn.BatchNorm2d(x.shape[-1], momentum=0.1, eps=1e-5).double()
  with torch.no_grad():
    bn.weight.copy_(torch.tensor(scale))
    bn.bias.copy_(torch.tensor(bias))
    bn.running_mean.copy_(torch.tensor(running_mean))
    bn.running_var.copy_(torch.tensor(running_var))
  tx = torch.tensor(x.transpose(0, 3, 1, 2), requires_grad=True)
  y = bn(tx)
  y.backward(torch.tensor(g.transpose(0, 3, 1, 2)))
  as_np = lambda t: t.detach().numpy()
  return dict(y=as_np(y).transpose(0, 2, 3, 1),
              dx=as_np(tx.grad).transpose(0, 2, 3, 1),
              dscale=as_np(bn.weight.grad), dbias=as_np(bn.bias.grad),
              mean=as_np(bn.running_mean), var=as_np(bn.running_var))


@pytest.mark.torch
def test_train_step_matches_torch_batchnorm2d():
  """Output, running stats (unbiased var) and all gradients, float64 ref."""
  rng = np.random.default_rng(0)
  c = 6
  x = rng.normal(3.0, 2.0, (4, 5, 5, c))  # offset mean: two-pass variance
  g = rng.normal(size=x.shape)
  scale, bias = rng.normal(1, 0.2, c), rng.normal(0, 0.2, c)
  mean0, var0 = rng.normal(0, 0.1, c), rng.uniform(0.5, 2, c)
  ref = _torch_bn_step(x, scale, bias, mean0, var0, g)

  bn = batchnorm.BatchNorm(use_running_average=False, momentum=0.9)
  variables = {"params": {"scale": jnp.asarray(scale, jnp.float32),
                          "bias": jnp.asarray(bias, jnp.float32)},
               "batch_stats": {"mean": jnp.asarray(mean0, jnp.float32),
                               "var": jnp.asarray(var0, jnp.float32)}}

  def f(params, x):
    return bn.apply({"params": params,
                     "batch_stats": variables["batch_stats"]}, x,
                    mutable=["batch_stats"])

  (y, mut), vjp = jax.vjp(f, variables["params"],
                          jnp.asarray(x, jnp.float32))
  d_params, dx = vjp((jnp.asarray(g, jnp.float32),
                      jax.tree.map(jnp.zeros_like, mut)))
  tol = dict(rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(y, ref["y"], **tol)
  np.testing.assert_allclose(dx, ref["dx"], **tol)
  np.testing.assert_allclose(d_params["scale"], ref["dscale"], **tol)
  np.testing.assert_allclose(d_params["bias"], ref["dbias"], **tol)
  np.testing.assert_allclose(mut["batch_stats"]["mean"], ref["mean"], **tol)
  np.testing.assert_allclose(mut["batch_stats"]["var"], ref["var"], **tol)


def test_gradient_matches_autodiff_of_the_formula():
  """The custom VJP equals autodiff of the plain normalisation, also for
  cotangents on the returned statistics."""
  k = jax.random.split(jax.random.PRNGKey(1), 6)
  x = jax.random.normal(k[0], (3, 4, 4, 5)) * 2 + 1
  scale = jax.random.normal(k[1], (5,))
  bias = jax.random.normal(k[2], (5,))
  cts = (jax.random.normal(k[3], x.shape), jax.random.normal(k[4], (5,)),
         jax.random.normal(k[5], (5,)))

  def plain(x, scale, bias):
    mean = x.mean((0, 1, 2))
    var = jnp.square(x - mean).mean((0, 1, 2))
    y = (x - mean) * jax.lax.rsqrt(var + 1e-5) * scale + bias
    return y, mean, var

  custom = lambda *a: batchnorm.batch_norm_train(*a, 1e-5)
  want = jax.vjp(plain, x, scale, bias)[1](cts)
  got = jax.vjp(custom, x, scale, bias)[1](cts)
  for a, b in zip(got, want):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_eval_mode_uses_running_stats_and_keeps_them():
  bn = batchnorm.BatchNorm(use_running_average=True)
  x = jax.random.normal(jax.random.PRNGKey(2), (2, 3, 3, 4))
  variables = bn.init(jax.random.PRNGKey(0), x)
  stats = {"mean": jnp.full((4,), 0.5), "var": jnp.full((4,), 4.0)}
  y = bn.apply({"params": variables["params"], "batch_stats": stats}, x)
  np.testing.assert_allclose(y, (x - 0.5) / jnp.sqrt(4.0 + 1e-5), rtol=1e-6)


def test_same_variables_as_flax_batchnorm():
  """Drop-in: converters and checkpoints see the same tree."""
  from flax import linen as nn  # pylint: disable=g-import-not-at-top
  x = jnp.zeros((2, 3, 3, 4))
  ours = batchnorm.BatchNorm().init(jax.random.PRNGKey(0), x)
  theirs = nn.BatchNorm(use_running_average=False).init(
      jax.random.PRNGKey(0), x)
  shapes = lambda t: jax.tree.map(lambda a: (a.shape, a.dtype), t)
  assert shapes(ours) == shapes(theirs)


def test_discconv_updates_running_var_with_the_unbiased_variance():
  """The models use this BatchNorm: from a zero running variance, one
  training step leaves torch's 0.1 · unbiased batch variance (flax's biased
  one is n/(n - 1) = 1 + 2.8e-4 off here, beyond the tolerance)."""
  from cgn_jax.models import discriminators  # pylint: disable=g-import-not-at-top
  disc = discriminators.DiscConv(ndf=8)
  k = jax.random.split(jax.random.PRNGKey(3), 2)
  x = jax.random.uniform(k[0], (4, 32, 32, 3), minval=-1, maxval=1)
  y = jnp.arange(4) % 10
  variables = discriminators.init_variables(disc, k[1])
  stats = jax.tree.map(jnp.zeros_like, variables["batch_stats"])
  _, new = disc.apply({"params": variables["params"], "batch_stats": stats},
                      x, y, train=True, mutable=["batch_stats"])
  p = variables["params"]
  plane = jnp.broadcast_to(p["label_embedding"]["embedding"][y][:, None, None],
                           (4, 32, 32, 1))
  h = jax.lax.conv_general_dilated(
      jnp.concatenate([x, plane], -1), p["model_0"]["kernel"], (1, 1),
      "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"),
      precision=jax.lax.Precision.HIGHEST)
  want = 0.1 * np.var(np.asarray(h), axis=(0, 1, 2), ddof=1)
  np.testing.assert_allclose(new["batch_stats"]["model_1"]["var"], want,
                             rtol=1e-5)
