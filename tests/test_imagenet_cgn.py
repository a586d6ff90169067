"""ImageNet CGN vs one upstream training iteration (reference/cgn_imagenet/).

`cgn_small.pth` (upstream's CGN with BigGAN-deep channel_width 4 and U2NETP)
-> converters.cgn_imagenet -> ImageNetCGN; on the golden u and class, the
train-mode forward (power iteration in f_shape/f_text/f_bg, biggan_gt and
U²-Net in eval mode) must reproduce every output and the spectral-norm u
after the forward, and the eval-mode three-class counterfactual forward of
the saved state must reproduce cf/*. The train-mode forward is the
trainer's `fused_forward`, the eval-mode one the module's `__call__`. Also: the converter's CLI, its errors
(an MNIST CGN, foreign keys) and the truncation check.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cgn_jax.models import imagenet_cgn
from converters import biggan as biggan_convert
from converters import cgn_imagenet as convert
from converters import common

pytestmark = [pytest.mark.torch, pytest.mark.shared,
              pytest.mark.usefixtures("fast_compile")]

TOL = 1e-4


@pytest.fixture(scope="module")
def reference(shared_dir):
  d = shared_dir / "reference" / "cgn_imagenet"
  return dict(path=d / "cgn_small.pth", golden=np.load(d / "golden.npz"),
              state_dict=common.load_torch_state_dict(d / "cgn_small.pth"))


@pytest.fixture(scope="module")
def converted(reference):
  variables, config, variant = convert.convert(reference["state_dict"])
  return dict(variables=variables, config=config, variant=variant,
              model=imagenet_cgn.from_config(config, variant))


@pytest.fixture(scope="module")
def train_forward(reference, converted):
  g, model = reference["golden"], converted["model"]
  y = int(g["y"])
  # The trainer's path (mechanisms in one lax.scan, one U²-Net batch); the
  # module's own __call__ is checked in eval mode by the cf test.
  fn = jax.jit(lambda v, u: imagenet_cgn.fused_forward(model, v, u, y, 1.0,
                                                       train=True))
  out, spectral = fn(converted["variables"], jnp.asarray(g["u"]))
  return jax.device_get(out), jax.device_get(spectral)


def _nchw_to_nhwc(x):
  return np.asarray(x).transpose(0, 2, 3, 1)


def test_converted_structure(converted):
  assert converted["variant"] == "u2netp"
  assert converted["config"]["channel_width"] == 4
  params = converted["variables"]["params"]
  assert sorted(params) == sorted(imagenet_cgn.GENERATORS + ("u2net",))
  trainable, _ = imagenet_cgn.split_trainable(params)
  # 612 trainable tensors in the golden (204 per mechanism).
  assert len(jax.tree.leaves(trainable)) == 612


@pytest.mark.parametrize("name", imagenet_cgn.OUTPUTS)
def test_train_forward_parity(reference, train_forward, name):
  out, _ = train_forward
  ref = _nchw_to_nhwc(reference["golden"][name])
  np.testing.assert_allclose(out[name], ref, rtol=0, atol=TOL)


def test_spectral_u_after_train_forward(reference, train_forward):
  _, spectral = train_forward
  g = reference["golden"]
  keys = [k for k in g.files if k.startswith("sn_u_after/")]
  assert len(keys) == 150
  for key in keys:
    top, *mods, _ = key[len("sn_u_after/"):].split(".")
    node = spectral[top]
    for part in biggan_convert._path(mods):  # pylint: disable=protected-access
      node = node[part]
    np.testing.assert_allclose(node["u"], g[key], rtol=0, atol=TOL,
                               err_msg=key)


def test_counterfactual_forward(reference, converted):
  g, model = reference["golden"], converted["model"]
  ys = tuple(int(y) for y in g["cf/ys"])
  out = jax.jit(lambda v, u: model.apply(v, u, ys, float(g["cf/truncation"])))(
      converted["variables"], jnp.asarray(g["cf/u"]))
  for name in ("x_gt", "mask", "foreground", "background", "x_gen"):
    np.testing.assert_allclose(out[name], _nchw_to_nhwc(g[f"cf/{name}"]),
                               rtol=0, atol=TOL, err_msg=name)


def test_cli_round_trip_with_module_prefix(reference, converted, tmp_path):
  import torch  # pylint: disable=g-import-not-at-top
  from converters import __main__ as cli  # pylint: disable=g-import-not-at-top
  wrapped = {"module." + k: torch.from_numpy(np.array(v))
             for k, v in reference["state_dict"].items()}
  src = tmp_path / "cgn.pth"
  torch.save(wrapped, src)
  assert cli.main(["cgn-imagenet", "--input", str(src), "--output",
                   str(tmp_path / "out")]) == 0
  model, variables = convert.load(tmp_path / "out")
  assert model == converted["model"]
  jax.tree.map(np.testing.assert_array_equal, variables,
               converted["variables"])


def test_mnist_checkpoint_is_named(shared_dir):
  sd = common.load_torch_state_dict(
      shared_dir / "data" / "cgn_upstream" / "cgn_colored_MNIST.pth")
  with pytest.raises(common.ConversionError,
                     match="MNIST CGN.*converters cgn-mnist"):
    convert.convert(sd)


def test_foreign_and_missing_keys(reference):
  sd = dict(reference["state_dict"])
  sd["discriminator.weight"] = np.zeros(3, np.float32)
  with pytest.raises(common.ConversionError, match="discriminator.weight"):
    convert.convert(sd)
  sd = {k: v for k, v in reference["state_dict"].items()
        if not k.startswith("f_bg.")}
  with pytest.raises(common.ConversionError, match=r"f_bg\.\* \(whole"):
    convert.convert(sd)
  sd = dict(reference["state_dict"])
  del sd["f_text.generator.layers.3.conv_1.weight_orig"]
  with pytest.raises(common.ConversionError,
                     match=r"(?s)f_text\.\*.*layers_3.*conv_1"):
    convert.convert(sd)


@pytest.mark.parametrize("truncation", [0.0, -0.5, 1.5])
def test_truncation_out_of_range(converted, truncation):
  with pytest.raises(ValueError, match=r"truncation must be in \(0, 1\]"):
    converted["model"].apply(converted["variables"], jnp.zeros((1, 128)), 0,
                             truncation)
  with pytest.raises(ValueError, match=r"truncation must be in \(0, 1\]"):
    imagenet_cgn.training_draw(jax.random.PRNGKey(0), 2, truncation)


def test_training_draw():
  u, y = imagenet_cgn.training_draw(jax.random.PRNGKey(3), 4, 0.5)
  assert u.shape == (4, 128) and float(jnp.abs(u).max()) <= 1.0
  assert len(set(np.asarray(y).tolist())) == 1  # one class per batch
  _, y = imagenet_cgn.training_draw(jax.random.PRNGKey(3), 64, 1.0,
                                    per_sample=True)
  assert len(set(np.asarray(y).tolist())) > 1
