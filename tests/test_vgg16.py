"""VGG16 features conversion parity against a torch stack (SPEC §2.5)."""

import logging

import jax
import numpy as np
import pytest

from cgn_jax.models import vgg16 as vgg16_lib
from converters import common
from converters import vgg16 as conv_vgg16

pytestmark = pytest.mark.torch

# torchvision's vgg16 cfg 'D'; 'M' is a max-pool.
_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
        512, 512, 512, "M")
_TAPS = {"relu1_2": 3, "relu2_2": 8, "relu3_3": 15, "relu4_3": 22}


def _torch_vgg16():
  """A random torch VGG16 with torchvision's state-dict keys."""
  import torch  # pylint: disable=g-import-not-at-top
  from torch import nn  # pylint: disable=g-import-not-at-top
  torch.manual_seed(0)
  layers, cin = [], 3
  for v in _CFG:
    if v == "M":
      layers.append(nn.MaxPool2d(2, 2))
    else:
      conv = nn.Conv2d(cin, v, 3, padding=1)
      # torchvision's VGG init keeps deep activations O(1), so the 1e-4
      # tolerance is meaningful (torch's default init shrinks them ~30x).
      nn.init.kaiming_normal_(conv.weight, mode="fan_out",
                              nonlinearity="relu")
      nn.init.uniform_(conv.bias, -0.1, 0.1)
      layers += [conv, nn.ReLU(inplace=False)]
      cin = v
  model = nn.Module()
  model.features = nn.Sequential(*layers)
  # A small stand-in for the classifier: its keys must be ignored.
  model.classifier = nn.Sequential(nn.Linear(4, 2))
  return model.eval()


@pytest.fixture(scope="module")
def torch_model():
  return _torch_vgg16()


def test_conversion_parity(torch_model, tmp_path):
  import torch  # pylint: disable=g-import-not-at-top
  path = tmp_path / "vgg16.pth"
  torch.save(torch_model.state_dict(), path)
  out_dir = tmp_path / "vgg16_flax"
  conv_vgg16.run(type("A", (), dict(input=str(path), output=str(out_dir))))
  variables = conv_vgg16.load_vgg16(str(out_dir))

  x = np.random.default_rng(0).uniform(-1, 1, (2, 3, 32, 32)).astype(
      np.float32)
  want = {}
  with torch.no_grad():
    h = torch.from_numpy(x)
    for i, layer in enumerate(torch_model.features):
      h = layer(h)
      for name, idx in _TAPS.items():
        if idx == i:
          want[name] = h.numpy().transpose(0, 2, 3, 1)
  got = jax.jit(lambda v, a: vgg16_lib.VGG16().apply(v, a))(
      variables, x.transpose(0, 2, 3, 1))
  assert set(got) == set(_TAPS)
  for name in _TAPS:
    err = np.abs(np.asarray(got[name]) - want[name]).max()
    assert err <= 1e-4, f"{name}: max-abs {err}"


@pytest.mark.parametrize("winograd_convs", [False, True])
def test_frozen_path_matches_torch(torch_model, tmp_path, winograd_convs):
  """The trainer's path (frozen kernels) vs torch: features and input grad."""
  import torch  # pylint: disable=g-import-not-at-top
  path = tmp_path / "vgg16.pth"
  torch.save(torch_model.state_dict(), path)
  conv_vgg16.run(type("A", (), dict(input=str(path),
                                    output=str(tmp_path / "flax"))))
  params = conv_vgg16.load_vgg16(str(tmp_path / "flax"))["params"]
  frozen = vgg16_lib.frozen_variables(params, winograd_convs)
  # Winograd for every conv but the first (3 input channels).
  assert sum("winograd" in v for v in frozen.values()) == (
      12 if winograd_convs else 0)
  x = np.random.default_rng(1).uniform(-1, 1, (2, 3, 32, 32)).astype(
      np.float32)
  xt = torch.from_numpy(x).requires_grad_(True)
  h, loss, want_feats = xt, 0.0, {}
  for i, layer in enumerate(torch_model.features[:_TAPS["relu4_3"] + 1]):
    h = layer(h)
    if i in _TAPS.values():
      loss = loss + (h**2).mean()
      want_feats[i] = h.detach().numpy().transpose(0, 2, 3, 1)
  loss.backward()

  def jax_loss(x):
    feats = vgg16_lib.VGG16().apply({"params": params, "frozen": frozen}, x,
                                    upto="relu4_3")
    return sum((f**2).mean() for f in feats.values()), feats

  got, feats = jax.jit(jax.grad(jax_loss, has_aux=True))(
      x.transpose(0, 2, 3, 1))
  for name, idx in _TAPS.items():
    err = np.abs(np.asarray(feats[name]) - want_feats[idx]).max()
    assert err <= 1e-4, f"{name}: max-abs {err}"
  want = xt.grad.numpy().transpose(0, 2, 3, 1)
  assert np.abs(np.asarray(got) - want).max() <= 1e-5 * np.abs(want).max()


def test_upto_runs_only_the_needed_layers():
  full = jax.eval_shape(vgg16_lib.init_variables, jax.random.PRNGKey(0))
  # Params of blocks 1-2 only: enough for upto='relu2_2'.
  params = {k: v for k, v in full["params"].items()
            if int(k.split("_")[1]) < 9}
  x = jax.ShapeDtypeStruct((1, 32, 32, 3), np.float32)
  out = jax.eval_shape(lambda p, a: vgg16_lib.VGG16().apply(
      {"params": p}, a, upto="relu2_2"), params, x)
  assert list(out) == ["relu1_2", "relu2_2"]
  assert out["relu2_2"].shape == (1, 16, 16, 128)


def test_strict_keys(torch_model):
  sd = {k: v.numpy() for k, v in torch_model.state_dict().items()}
  conv_vgg16.convert(sd)  # classifier.* is allowed and ignored
  bad = dict(sd)
  del bad["features.28.bias"]
  bad["features.99.weight"] = np.zeros(3, np.float32)
  bad["features.0.weight"] = np.zeros((64, 3, 5, 5), np.float32)
  with pytest.raises(common.ConversionError) as e:
    conv_vgg16.convert(bad)
  msg = str(e.value)
  assert "missing keys (1): features.28.bias" in msg
  assert "unexpected keys (1): features.99.weight" in msg
  assert "features.0.weight: checkpoint (64, 3, 5, 5) vs model (64, 3, 3, 3)" \
      in msg


def test_load_vgg16_modes(tmp_path, caplog):
  with pytest.raises(FileNotFoundError, match="vgg16-397923af.pth"):
    conv_vgg16.load_vgg16(str(tmp_path / "missing"))
  assert conv_vgg16.load_vgg16("none") is None
  with caplog.at_level(logging.WARNING):
    v = conv_vgg16.load_vgg16("random")
  assert "RANDOMLY" in caplog.text
  assert v["params"]["features_28"]["kernel"].shape == (3, 3, 512, 512)


def test_trainer_uses_winograd_on_cpu_only():
  params = jax.eval_shape(vgg16_lib.init_variables,
                          jax.random.PRNGKey(0))["params"]
  params = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), params)
  frozen = vgg16_lib.frozen_variables(params)  # what the trainer loads
  on_cpu = jax.default_backend() == "cpu"
  assert "grad_kernel" in frozen["features_0"]  # 3 input channels: direct
  assert ("winograd" in frozen["features_2"]) == on_cpu
  if on_cpu:  # 64 -> 64 channels, 16 Winograd-domain taps
    assert frozen["features_2"]["winograd"].shape == (16, 64, 64)
