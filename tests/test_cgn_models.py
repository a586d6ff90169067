"""MNIST CGN generator, discriminators and initialisers (SPEC §2.1-§2.4)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from cgn_jax.models import cgn as cgn_lib
from cgn_jax.models import composer
from cgn_jax.models import discriminators as disc_lib

pytestmark = pytest.mark.usefixtures("fast_compile")


B = 8


def _n_params(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


@pytest.mark.parametrize("build, expected", [
    (lambda: cgn_lib.init_variables(cgn_lib.CGN(), jax.random.PRNGKey(0)),
     659_992),
    (lambda: disc_lib.init_variables(disc_lib.DiscLin(ndf=512),
                                     jax.random.PRNGKey(0)), 2_104_421),
    (lambda: disc_lib.init_variables(disc_lib.DiscConv(ndf=32),
                                     jax.random.PRNGKey(0)), 413_642),
], ids=["cgn", "disc_linear_ndf512", "disc_conv_ndf32"])
def test_parameter_counts_match_upstream(build, expected):
  assert _n_params(jax.eval_shape(build)["params"]) == expected


def test_cgn_submodule_parameter_counts():
  v = jax.eval_shape(lambda: cgn_lib.init_variables(
      cgn_lib.CGN(), jax.random.PRNGKey(0)))["params"]
  counts = {k: _n_params(t) for k, t in v.items()}
  assert counts == {"label_emb": 100, "f_shape": 194_914,
                    "f_text1": 232_489, "f_text2": 232_489}



@pytest.fixture(scope="module")
def run():
  """Every forward variant the tests look at, from one compiled program."""
  # 'normal' init skips the QR of 'orthogonal' (tested on its own below).
  model = cgn_lib.CGN(init_type="normal", init_gain=0.1)
  y = jnp.asarray([0, 1, 2, 3, 4, 5, 6, 7])
  u = jax.random.normal(jax.random.PRNGKey(6), (B, 32))

  @jax.jit
  def f(key):
    k_i, k_n, k_s = jax.random.split(key, 3)
    variables = cgn_lib.init_variables(model, k_i)
    rngs = {"noise": k_n, "shuffle": k_s}
    normal = model.apply(variables, y, train=False, rngs=rngs)
    cf = model.apply(variables, y, train=False, counterfactual=True,
                     rngs=rngs)
    raw = model.apply(variables, u, y, train=False, method="mechanisms")
    rendered = model.apply(variables, u, y, u, y, u, y, train=False,
                           shuffle=False, method="render")
    _, new_vars = model.apply(variables, y, train=True, rngs=rngs,
                              mutable=["batch_stats"])
    return dict(variables=variables, y=y, normal=normal, cf=cf, raw=raw,
                rendered=rendered, new_vars=new_vars)

  return jax.device_get(f(jax.random.PRNGKey(0)))


def _cyclic_offset(out, x):
  """(dy, dx) with out == roll(x, (-dy, -dx)), or None."""
  h, w = x.shape[:2]
  # x[0, 0] lands at out[-dy, -dx]; the values are distinct floats.
  pos = np.argwhere(out[..., 0] == x[0, 0, 0])
  for r, c in pos:
    dy, dx = (-r) % h, (-c) % w
    if np.array_equal(out, np.roll(x, (-dy, -dx), axis=(0, 1))):
      return dy, dx
  return None


def test_patch_shuffle_is_a_cyclic_shift_and_a_crop_of_the_tiling():
  x = np.asarray(jax.random.normal(jax.random.PRNGKey(1), (16, 32, 32, 3)))
  out, off = jax.jit(lambda a, k: cgn_lib.patch_shuffle(
      a, k, return_offsets=True))(x, jax.random.PRNGKey(2))
  out, off = np.asarray(out), np.asarray(off)
  for b in range(len(x)):
    found = _cyclic_offset(out[b], x[b])
    assert found is not None, f"sample {b} is not a cyclic shift"
    assert found == (off[b, 0] % 32, off[b, 1] % 32)
    # Upstream: tile 2x2, crop 32x32 at (dy, dx).
    tiled = np.tile(x[b], (2, 2, 1))
    np.testing.assert_array_equal(
        out[b], tiled[off[b, 0]:off[b, 0] + 32, off[b, 1]:off[b, 1] + 32])


def test_shuffle_offsets_are_uniform_over_0_to_32():
  n = 33 * 2000
  off = np.asarray(cgn_lib.shuffle_offsets(jax.random.PRNGKey(3), n, 32))
  assert off.min() == 0 and off.max() == 32
  for axis in range(2):
    counts = np.bincount(off[:, axis], minlength=33)
    assert len(counts) == 33
    assert stats.chisquare(counts).pvalue > 1e-3
  # Rows and columns are drawn independently.
  table = np.histogram2d(off[:, 0], off[:, 1], bins=33)[0]
  assert stats.chi2_contingency(table).pvalue > 1e-3


def test_forward_aux_mask_and_shuffled_textures(run):
  x, aux = run["normal"]
  assert set(aux) == set(cgn_lib.AUX_KEYS)
  assert x.shape == (B, 32, 32, 3) and aux["premask"].shape == (B, 32, 32, 1)
  mask = aux["mask"]
  assert mask.min() >= cgn_lib.MASK_MIN and mask.max() <= cgn_lib.MASK_MAX
  np.testing.assert_array_equal(
      mask, np.repeat(np.clip(aux["premask"], 1e-4, 0.9999), 3, -1))
  for raw, shuffled in (("fg_raw", "foreground"), ("bg_raw", "background")):
    for b in range(B):
      assert _cyclic_offset(aux[shuffled][b], aux[raw][b]) is not None
  np.testing.assert_allclose(
      x, composer.compose(aux["mask"], aux["foreground"], aux["background"]),
      atol=1e-6)
  for k in ("y_shape", "y_fg", "y_bg"):
    np.testing.assert_array_equal(aux[k], run["y"])


def test_counterfactual_labels_are_permutations(run):
  y = run["y"]
  (_, aux_n), (x, aux) = run["normal"], run["cf"]
  assert x.shape == (B, 32, 32, 3)
  np.testing.assert_array_equal(aux["y_shape"], y)
  for k in ("y_fg", "y_bg"):
    np.testing.assert_array_equal(np.sort(aux[k]), np.sort(y))
  assert not np.array_equal(aux["y_fg"], aux["y_bg"])
  # Each mechanism gets its own noise: the CF mask differs from normal mode's.
  assert not np.allclose(aux["premask"], aux_n["premask"])


def test_render_with_shared_input_equals_mechanisms(run):
  premask, fg, bg = run["raw"]
  x, aux = run["rendered"]
  np.testing.assert_array_equal(aux["premask"], premask)
  np.testing.assert_array_equal(aux["fg_raw"], fg)
  np.testing.assert_array_equal(aux["foreground"], fg)  # no shuffler
  np.testing.assert_allclose(
      x, composer.compose(cgn_lib.mask_from_premask(premask), fg, bg),
      atol=1e-6)


def test_batchnorm_stats_update_in_train_mode_only(run):
  old = run["variables"]["batch_stats"]
  new = run["new_vars"]["batch_stats"]
  for mech, layer in (("f_shape", "layers_5"), ("f_text1", "layers_4"),
                      ("f_text2", "layers_11")):
    assert not np.allclose(old[mech][layer]["mean"], new[mech][layer]["mean"])
    assert not np.allclose(old[mech][layer]["var"], new[mech][layer]["var"])
  # Eval mode (the `normal` run) needed no mutable collection.
  assert run["normal"][0].shape == (B, 32, 32, 3)


def test_init_statistics_orthogonal_and_batchnorm():
  gain = 0.1
  model = cgn_lib.CGN(init_type="orthogonal", init_gain=gain)
  params = jax.jit(lambda k: cgn_lib.init_variables(model, k))(
      jax.random.PRNGKey(9))["params"]
  dense = np.asarray(params["f_shape"]["layers_0"]["kernel"])  # (42, 4096)
  np.testing.assert_allclose(dense @ dense.T, gain**2 * np.eye(42),
                             atol=1e-5)
  for mech, layer in (("f_shape", "layers_4"), ("f_text1", "layers_3"),
                      ("f_text2", "layers_7"), ("f_shape", "layers_9")):
    k = np.asarray(params[mech][layer]["kernel"])
    mat = k.reshape(-1, k.shape[-1])  # (k·k·in, out): orthonormal columns
    np.testing.assert_allclose(mat.T @ mat, gain**2 * np.eye(k.shape[-1]),
                               atol=1e-5)
  scales = np.concatenate([
      np.asarray(v["scale"]) for m in ("f_shape", "f_text1", "f_text2")
      for v in params[m].values() if "scale" in v])
  assert abs(scales.mean() - 1.0) < 5 * gain / np.sqrt(len(scales))
  assert 0.7 * gain < scales.std() < 1.3 * gain
  biases = [np.asarray(v["bias"]) for m in ("f_shape", "f_text1", "f_text2")
            for v in params[m].values() if "bias" in v]
  assert all(not b.any() for b in biases)
  emb = np.asarray(params["label_emb"]["embedding"])
  assert 0.7 < emb.std() < 1.3  # torch default N(0, 1), not the custom init


def test_normal_init_gain(run):
  params = run["variables"]["params"]  # init_type='normal', gain 0.1
  k = np.asarray(params["f_text1"]["layers_0"]["kernel"])
  assert abs(k.std() - 0.1) < 0.005 and abs(k.mean()) < 0.005


def test_discriminators_forward_and_init():
  x = jax.random.uniform(jax.random.PRNGKey(11), (4, 32, 32, 3), minval=-1)
  y = jnp.arange(4)
  lin = disc_lib.create("linear", ndf=64)
  conv = disc_lib.create("conv", ndf=8)

  @jax.jit
  def f(key):
    k_l, k_c = jax.random.split(key)
    v_lin = disc_lib.init_variables(lin, k_l)
    drop = [lin.apply(v_lin, x, y, train=True, rngs={"dropout": k})
            for k in jax.random.split(key)]
    v_conv = disc_lib.init_variables(conv, k_c)
    out, new = conv.apply(v_conv, x, y, train=True, mutable=["batch_stats"])
    return dict(v_lin=v_lin, drop=drop, ev=lin.apply(v_lin, x, y, train=False),
                v_conv=v_conv, out=out, new=new)

  r = jax.device_get(f(jax.random.PRNGKey(12)))
  w0 = r["v_lin"]["params"]["model_0"]["kernel"]
  bound = 1 / np.sqrt(3082)  # torch default: U(±1/sqrt(fan_in))
  assert np.abs(w0).max() <= bound and np.abs(w0).max() > 0.9 * bound
  b0 = r["v_lin"]["params"]["model_0"]["bias"]
  assert np.abs(b0).max() <= bound and np.abs(b0).max() > 0.5 * bound
  a, b = r["drop"]
  assert a.shape == (4,) and not np.allclose(a, b)  # dropout is active
  assert r["ev"].shape == (4,)

  k = r["v_conv"]["params"]["model_6"]["kernel"]
  assert k.shape == (4, 4, 16, 32) and abs(k.std() - 0.02) < 0.002
  assert r["out"].shape == (4,)
  assert not np.allclose(r["new"]["batch_stats"]["model_1"]["mean"], 0)
  with pytest.raises(ValueError, match="unknown discriminator"):
    disc_lib.create("mlp")
