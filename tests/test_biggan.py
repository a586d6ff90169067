"""BigGAN-deep port vs pytorch-pretrained-biggan (the parity reference).

Randomly initialised torch models (with perturbed BN statistics, u/v and
gamma so that every converted tensor matters) -> converters.biggan -> the
same images and per-block features; exact parameter counts and key coverage
of the full 256 model; torch-semantics spectral norm in train mode; the
converter's errors; the convert and sample command lines.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cgn_jax.models import biggan
from cgn_jax.models import spectral_norm as sn
from converters import biggan as convert_biggan
from converters import common

torch = pytest.importorskip("torch")
ppb = pytest.importorskip("pytorch_pretrained_biggan")

pytestmark = [pytest.mark.torch, pytest.mark.usefixtures("fast_compile")]



def _torch_model(config, seed=0):
  """A package BigGAN whose every buffer holds non-default values."""
  torch.manual_seed(seed)
  model = ppb.BigGAN(ppb.BigGANConfig(**config))
  with torch.no_grad():
    for m in model.modules():
      if isinstance(m, ppb.model.BigGANBatchNorm):
        m.running_means.normal_(0, 0.3)
        m.running_vars.uniform_(0.5, 2.0)
      if isinstance(m, ppb.model.SelfAttn):
        m.gamma.fill_(0.7)
    for name, p in model.named_parameters():
      if name.endswith("bias"):
        p.normal_(0, 0.1)
    model.generator.bn.weight.uniform_(0.5, 1.5)  # torch.Tensor(): garbage
    # One power iteration from the random u, as the package's TF->torch
    # converter ran for the released weights (convert_tf_to_pytorch.py).
    for m in model.modules():
      if hasattr(m, "weight_u"):
        w = m.weight_orig.reshape(m.weight_orig.shape[0], -1)
        m.weight_v.copy_(torch.nn.functional.normalize(
            w.t() @ m.weight_u, dim=0, eps=1e-4))
        m.weight_u.copy_(torch.nn.functional.normalize(
            w @ m.weight_v, dim=0, eps=1e-4))
  return model.eval()


def _state_dict(model):
  return {k: v.numpy() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def tiny():
  config = biggan.reduced_config("biggan-deep-128", channel_width=8)
  model = _torch_model(config)
  state_dict = _state_dict(model)
  abstract = convert_biggan.abstract_variables(config)
  return dict(config=config, torch=model, state_dict=state_dict,
              abstract=abstract,
              variables=convert_biggan.convert(state_dict, config, abstract))


@pytest.fixture(scope="module")
def full_256():
  config = biggan.get_config("biggan-deep-256")
  model = _torch_model(config)
  return dict(config=config, torch=model, state_dict=_state_dict(model),
              abstract=convert_biggan.abstract_variables(config))


def _inputs(config, seed=1):
  rng = np.random.default_rng(seed)
  z = (0.5 * rng.standard_normal((2, config["z_dim"]))).astype(np.float32)
  y = np.zeros((2, config["num_classes"]), np.float32)
  y[0, 3] = 1
  y[1, [5, 9]] = 0.5  # a soft class mix, as CGN's interpolations use
  return z, y


# 0.4 and 1.0: stored slots; 0.305: between slots (the swapped weights).
# The float-error slots (0.14, 0.58) are checked on one layer below, where a
# compile costs nothing.
@pytest.mark.parametrize("truncation", [0.4, 1.0, 0.305])
def test_reduced_model_matches_torch(tiny, truncation):
  z, y = _inputs(tiny["config"])
  features = {}
  hooks = [layer.register_forward_hook(
      lambda m, i, o, k=k: features.__setitem__(f"layers_{k}", o.numpy()))
           for k, layer in enumerate(tiny["torch"].generator.layers)]
  with torch.no_grad():
    ref = tiny["torch"](torch.from_numpy(z), torch.from_numpy(y), truncation)
  for h in hooks:
    h.remove()
  model = biggan.BigGAN.from_config(tiny["config"])
  image, aux = jax.jit(model.apply, static_argnums=3)(
      tiny["variables"], z, y, truncation)
  ref = ref.numpy().transpose(0, 2, 3, 1)
  assert image.shape == (2, 128, 128, 3)
  assert 0.05 < ref.std() and np.abs(ref).max() < 0.999  # not saturated
  np.testing.assert_array_less(np.abs(np.asarray(image) - ref).max(), 1e-4)
  assert len(features) == 11
  for name, feat in features.items():
    feat = feat.transpose(0, 2, 3, 1)
    err = np.abs(np.asarray(aux[name]) - feat).max()
    assert err <= 1e-5 * max(1.0, np.abs(feat).max()), (name, err)


def test_bn_stat_weights():
  assert biggan.bn_stat_weights(0.4, 51) == ((20, 1.0),)
  # The package's swapped interpolation weights ...
  (k0, w0), (k1, w1) = biggan.bn_stat_weights(0.305, 51)
  assert (k0, k1) == (15, 16) and math.isclose(w0, 0.25, abs_tol=1e-9)
  (k0, w0), (k1, w1) = biggan.bn_stat_weights(0.305, 51, "exact")
  assert (k0, k1) == (15, 16) and math.isclose(w0, 0.75, abs_tol=1e-9)
  # ... and float error at exact slots (SPEC §10.17).
  (k0, w0), (k1, w1) = biggan.bn_stat_weights(0.58, 51)
  assert k0 == 28 and w0 > 1 - 1e-12
  assert biggan.bn_stat_weights(0.58, 51, "exact") == ((29, 1.0),)
  with pytest.raises(ValueError, match="bn_interpolation"):
    biggan.bn_stat_weights(0.5, 51, "linear")


@pytest.mark.parametrize("truncation", [0.14, 0.305, 0.58, 1.0])
def test_conditional_bn_modes(truncation):
  torch.manual_seed(0)
  layer = ppb.model.BigGANBatchNorm(6, 10, n_stats=51, eps=1e-4).eval()
  with torch.no_grad():
    layer.running_means.normal_()
    layer.running_vars.uniform_(0.5, 2)
  x = torch.randn(3, 6, 4, 5)
  cond = torch.randn(3, 10)
  with torch.no_grad():
    ref = layer(x, truncation, cond).numpy().transpose(0, 2, 3, 1)
  sd = {k: v.numpy() for k, v in layer.state_dict().items()}
  variables = {}
  for key, value in sd.items():
    collection, path, array = convert_biggan.map_key(key, value, sd)
    node = variables.setdefault(collection, {})
    for part in path[:-1]:
      node = node.setdefault(part, {})
    node[path[-1]] = array
  xj, cj = x.numpy().transpose(0, 2, 3, 1), cond.numpy()
  out = biggan.BigGANBatchNorm(51, 1e-4).apply(variables, xj, truncation, cj)
  np.testing.assert_allclose(out, ref, atol=1e-5, rtol=0)
  # 'exact': true linear interpolation over truncation * 50.
  exact = biggan.BigGANBatchNorm(51, 1e-4, bn_interpolation="exact").apply(
      variables, xj, truncation, cj)
  pos = truncation * 50
  k = min(int(math.floor(pos + 1e-9)), 49)
  f = pos - k
  mean = (1 - f) * sd["running_means"][k] + f * sd["running_means"][k + 1]
  var = (1 - f) * sd["running_vars"][k] + f * sd["running_vars"][k + 1]
  with torch.no_grad():
    scale = 1 + layer.scale(cond).numpy()[:, None, None]
    offset = layer.offset(cond).numpy()[:, None, None]
  want = (xj - mean) / np.sqrt(var + 1e-4) * scale + offset
  np.testing.assert_allclose(exact, want, atol=1e-5, rtol=0)


def test_full_256_param_count_and_keys(full_256):
  n_torch = sum(p.numel() for p in full_256["torch"].parameters())
  assert abs(n_torch / 1e6 - 55.88) < 0.005  # NOTES §10
  abstract = full_256["abstract"]
  assert sum(x.size for x in jax.tree.leaves(abstract["params"])) == n_torch
  # convert() is strict (checked against `abstract`): every state-dict entry
  # becomes exactly one leaf, none is dropped or left over.
  variables = convert_biggan.convert(full_256["state_dict"], "biggan-deep-256",
                                     abstract)
  n_flax = sum(x.size for x in jax.tree.leaves(variables["params"]))
  assert n_flax == n_torch
  assert len(jax.tree.leaves(variables)) == len(full_256["state_dict"]) == 602
  assert (variables["params"]["generator"]["layers_8"]["gamma"].shape
          == (1,))


def test_wrong_config_names_the_right_one(full_256):
  with pytest.raises(common.ConversionError,
                     match="--config biggan-deep-256"):
    convert_biggan.convert(full_256["state_dict"], "biggan-deep-128")


def test_reduced_checkpoint_with_full_config(tiny):
  with pytest.raises(common.ConversionError, match="--config-json"):
    convert_biggan.convert(tiny["state_dict"], "biggan-deep-128")


def test_extra_missing_and_misshaped_keys(tiny):
  sd = dict(tiny["state_dict"])
  sd["generator.extra.weight2"] = np.zeros(3, np.float32)
  with pytest.raises(common.ConversionError, match="generator.extra.weight2"):
    convert_biggan.convert(sd, tiny["config"], tiny["abstract"])
  sd = dict(tiny["state_dict"])
  del sd["generator.layers.2.conv_1.bias"]
  with pytest.raises(common.ConversionError,
                     match=r"missing keys \(1\).*layers_2.*conv_1.*bias"):
    convert_biggan.convert(sd, tiny["config"], tiny["abstract"])
  sd = dict(tiny["state_dict"])
  sd["generator.layers.2.conv_1.bias"] = np.zeros(5, np.float32)
  with pytest.raises(common.ConversionError, match="mis-shaped"):
    convert_biggan.convert(sd, tiny["config"], tiny["abstract"])


@pytest.mark.parametrize("kind", ["conv3x3", "linear"])
def test_spectral_norm_train_step_matches_torch(kind):
  torch.manual_seed(0)
  if kind == "conv3x3":
    layer = torch.nn.Conv2d(5, 7, 3, padding=1)
    x = torch.randn(2, 5, 6, 6)
    module = sn.SNConv(7, (3, 3), eps=1e-4)
  else:
    layer = torch.nn.Linear(9, 4)
    x = torch.randn(3, 9)
    module = sn.SNDense(4, eps=1e-4)
  layer = torch.nn.utils.spectral_norm(layer, eps=1e-4)
  sd = {k: v.numpy().copy() for k, v in layer.state_dict().items()}
  variables = {"params": {}, "spectral": {}}
  for key, value in sd.items():
    collection, path, array = convert_biggan.map_key(key, value, sd)
    variables[collection][path[-1]] = jnp.asarray(array)
  xj = x.numpy().transpose(0, 2, 3, 1) if x.ndim == 4 else x.numpy()

  layer.train()
  y = layer(x)
  y.sum().backward()

  def loss(params):
    out, state = module.apply({**variables, "params": params}, xj,
                              update=True, mutable=["spectral"])
    return out.sum(), (out, state)

  grads, (out, state) = jax.grad(loss, has_aux=True)(variables["params"])
  ref = y.detach().numpy()
  ref = ref.transpose(0, 2, 3, 1) if ref.ndim == 4 else ref
  np.testing.assert_allclose(out, ref, atol=1e-5, rtol=0)
  np.testing.assert_allclose(state["spectral"]["u"], layer.weight_u.numpy(),
                             atol=1e-5, rtol=0)
  v = sn.torch_v_to_flax(layer.weight_v.numpy(), sd["weight_orig"].shape)
  np.testing.assert_allclose(state["spectral"]["v"], v, atol=1e-5, rtol=0)
  assert np.abs(state["spectral"]["u"] - sd["weight_u"]).max() > 1e-3
  g = layer.weight_orig.grad.numpy()
  g = g.T if g.ndim == 2 else g.transpose(2, 3, 1, 0)
  np.testing.assert_allclose(grads["kernel"], g, atol=1e-5, rtol=0)
  # Eval mode: stored u, v are used as they are, and nothing is written.
  layer.eval()
  with torch.no_grad():
    ref = layer(x).numpy()
  ref = ref.transpose(0, 2, 3, 1) if ref.ndim == 4 else ref
  new = {**variables, "spectral": state["spectral"]}
  np.testing.assert_allclose(module.apply(new, xj), ref, atol=1e-5, rtol=0)
  with pytest.raises(ValueError, match="mutable"):
    module.apply(new, xj, update=True)


@pytest.mark.slow
def test_full_256_matches_torch(full_256):
  z, y = _inputs(full_256["config"])
  z, y = z[:1], y[:1]
  with torch.no_grad():
    ref = full_256["torch"](torch.from_numpy(z), torch.from_numpy(y), 0.4)
  ref = ref.numpy().transpose(0, 2, 3, 1)
  variables = convert_biggan.convert(full_256["state_dict"], "biggan-deep-256",
                                     full_256["abstract"])
  model = biggan.BigGAN.from_config("biggan-deep-256")
  image, _ = jax.jit(model.apply, static_argnums=3)(variables, z, y, 0.4)
  assert image.shape == (1, 256, 256, 3) and 0.05 < ref.std()
  np.testing.assert_array_less(np.abs(np.asarray(image) - ref).max(), 1e-4)


def test_convert_and_sample_cli(tiny, tmp_path):
  # pylint: disable=g-import-not-at-top
  from PIL import Image
  from cgn_jax.sample import __main__ as sample_main
  from converters import __main__ as convert_main
  # pylint: enable=g-import-not-at-top
  ckpt = tmp_path / "pytorch_model.bin"
  torch.save(tiny["torch"].state_dict(), ckpt)
  config_json = tmp_path / "config.json"
  config_json.write_text(
      ppb.BigGANConfig(**tiny["config"]).to_json_string())
  out = tmp_path / "converted"
  assert convert_main.main(["biggan", "--input", str(ckpt), "--config-json",
                            str(config_json), "--output", str(out)]) == 0
  config, variables = convert_biggan.load(out)
  assert config == tiny["config"]
  jax.tree.map(np.testing.assert_array_equal, variables, tiny["variables"])
  grid = tmp_path / "grid.png"
  assert sample_main.main(["biggan", "--weights", str(out), "--classes", "1",
                           "2", "--n", "2", "--truncation", "0.4",
                           "--out", str(grid)]) == 0
  assert Image.open(grid).size == (2 * 128, 2 * 128)
  with pytest.raises(SystemExit):
    convert_main.main(["biggan", "--input", str(ckpt), "--output", str(out)])
