"""The MNIST CGN's inference form (models/cgn.py): CGN(folded=True)."""

import jax
import jax.numpy as jnp
import pytest

from cgn_jax.models import cgn as cgn_lib

METHODS = ("foreground", "background", "shape")


def test_folded_form_matches_the_module_in_eval_mode(model_and_variables):
  model, v = model_and_variables
  folded = model.clone(folded=True)
  u = jax.random.normal(jax.random.PRNGKey(2), (8, model.latent_sz))
  y = jnp.arange(8) % 10

  @jax.jit
  def both(v, u, y):
    fv = cgn_lib.fold_batchnorm(v)
    return {m: jnp.max(jnp.abs(
        folded.apply(fv, u, y, train=False, method=m)
        - model.apply(v, u, y, train=False, method=m))) for m in METHODS}
  err = {m: float(e) for m, e in both(v, u, y).items()}
  assert err["foreground"] <= 1e-5 and err["background"] <= 1e-5, err
  assert err["shape"] <= 1e-4, err  # instance-normed values reach ~10


def test_fold_batchnorm_tree(model_and_variables):
  """Each BatchNorm disappears into the conv before it; nothing else moves."""
  model, v = model_and_variables
  fv = cgn_lib.fold_batchnorm(v)
  assert set(fv) == {"params"}
  p = fv["params"]
  assert "layers_5" not in p["f_shape"] and "layers_10" not in p["f_shape"]
  assert set(p["f_shape"]["layers_4"]) == {"kernel", "bias"}
  assert set(p["f_text1"]) == {"layers_0", "layers_3", "layers_7",
                               "layers_10"}
  # The folded tree is exactly what the inference form declares.
  folded = model.clone(folded=True)
  abstract = jax.eval_shape(
      lambda k: folded.init({"params": k, "noise": k, "shuffle": k},
                            jnp.zeros((2,), jnp.int32), train=False),
      jax.random.PRNGKey(0))
  assert jax.tree.structure(abstract) == jax.tree.structure(fv)
  assert jax.tree.map(lambda a: a.shape, abstract) == jax.tree.map(
      jnp.shape, fv)


def test_folded_form_is_eval_only(model_and_variables):
  model, v = model_and_variables
  folded = model.clone(folded=True)
  u = jnp.zeros((2, model.latent_sz))
  y = jnp.zeros((2,), jnp.int32)
  with pytest.raises(ValueError, match="eval-mode inference form"):
    folded.apply(cgn_lib.fold_batchnorm(v), u, y, train=True, method="shape")


def test_upsample_conv_equals_upsample_then_conv():
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 5, 6, 4))
  k = jax.random.normal(jax.random.PRNGKey(1), (3, 3, 4, 7))
  b = jax.random.normal(jax.random.PRNGKey(2), (7,))
  up = jnp.repeat(jnp.repeat(x, 2, 1), 2, 2)
  ref = jax.lax.conv_general_dilated(
      up, k, (1, 1), ((1, 1), (1, 1)),
      dimension_numbers=("NHWC", "HWIO", "NHWC")) + b
  got = jax.jit(cgn_lib.upsample_conv)(x, k, b)
  assert float(jnp.max(jnp.abs(got - ref))) <= 1e-5
