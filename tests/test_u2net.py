"""U²-Net: torch-exact resize, parity with the PyTorch reference, converter.

The reference is `u2net_fast.model` (the original repository's U2NET /
U2NETP with the original state-dict keys, NOTES §10), with random weights
and randomised BatchNorm affine parameters and running statistics, in eval
mode. Its `_upsample_like` is monkeypatched to choose `align_corners`, so
both CGN's mode (True) and the original repository's (False) are checked.

Coverage of variant x upsampling x size, chosen for the CPU budget (the full
model costs ~10 s per torch forward plus a ~20 s XLA compile per shape):
four cases forming a Latin square (the full U²-Net at 256 with
align_corners, exactly CGN's use, and at 320 with half-pixel upsampling, the
original repository's; U²-Netp at 320 / align_corners and 256 /
half-pixel), plus U²-Netp gradients and all seven outputs at an odd,
non-square size that makes the ceil-mode pools pad.
"""

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
import pytest

from cgn_jax.models import resize
from cgn_jax.models import u2net
from cgn_jax.sample import __main__ as sample_cli
from converters import __main__ as converter_cli
from converters import common
from converters import u2net as converter

pytestmark = [pytest.mark.torch, pytest.mark.usefixtures("fast_compile")]
# Without torch (the test extra) or the reference, the module is skipped.
torch = pytest.importorskip("torch")
F = torch.nn.functional
ref_model = pytest.importorskip("u2net_fast.model")

_TOL = 1e-4  # max-abs error on every output (float32)



@pytest.fixture(scope="module")
def ref():
  return ref_model


_NETS = {}


def _reference_net(ref, variant):
  """A random-weight reference in eval mode, with random BN statistics."""
  if variant not in _NETS:
    torch.manual_seed(0)
    net = {"u2net": ref.U2NET, "u2netp": ref.U2NETP}[variant]()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
      for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
          n = m.num_features
          m.running_mean.copy_(0.1 * torch.randn(n, generator=g))
          m.running_var.copy_(0.5 + torch.rand(n, generator=g))
          m.weight.copy_(0.5 + torch.rand(n, generator=g))
          m.bias.copy_(0.1 * torch.randn(n, generator=g))
    _NETS[variant] = net.eval()
  return _NETS[variant]


def _state_dict(net):
  return {k: v.detach().numpy() for k, v in net.state_dict().items()}


def _patch_upsample(monkeypatch, ref, mode):
  align = mode == resize.ALIGN_CORNERS
  monkeypatch.setattr(ref, "_upsample_like", lambda src, tar: F.interpolate(
      src, size=tar.shape[2:], mode="bilinear", align_corners=align))


# ----------------------------------------------------------------- resize --

@pytest.mark.parametrize("align_corners", [True, False])
def test_resize_matches_torch_interpolate(align_corners):
  rng = np.random.default_rng(0)
  cases = [((5, 7), (16, 9)), ((10, 10), (320, 320)), ((33, 17), (8, 40)),
           ((37, 91), (64, 23)), ((2, 2), (255, 257)), ((100, 100), (7, 3)),
           ((1, 3), (4, 1)), ((13, 7), (13, 7))]
  for (h, w), size in cases:
    x = rng.standard_normal((2, 3, h, w)).astype(np.float32)
    want = F.interpolate(torch.from_numpy(x), size=size, mode="bilinear",
                         align_corners=align_corners).numpy()
    got = resize.resize_bilinear(x.transpose(0, 2, 3, 1), size,
                                 align_corners=align_corners)
    err = np.abs(np.asarray(got).transpose(0, 3, 1, 2) - want).max()
    assert err <= 1e-6, ((h, w), size, err)


def test_max_pool_ceil_mode_matches_torch():
  x = np.random.default_rng(0).standard_normal((2, 4, 7, 10), np.float32)
  want = torch.nn.MaxPool2d(2, 2, ceil_mode=True)(torch.from_numpy(x))
  got = u2net.max_pool_ceil(jnp.asarray(x.transpose(0, 2, 3, 1)))
  np.testing.assert_array_equal(np.asarray(got),
                                want.numpy().transpose(0, 2, 3, 1))


# ----------------------------------------------------------------- parity --

def _check_parity(ref, monkeypatch, variant, mode, height, width, seed=0):
  _patch_upsample(monkeypatch, ref, mode)
  net = _reference_net(ref, variant)
  x = np.random.default_rng(seed).uniform(
      -1, 1, (1, 3, height, width)).astype(np.float32)
  with torch.no_grad():
    want = [t.numpy().transpose(0, 2, 3, 1)
            for t in net(torch.from_numpy(x))]
  variables = converter.convert(_state_dict(net), variant)
  model = u2net.U2Net(variant=variant, upsample=mode)
  saliency, aux = jax.jit(model.apply)(variables, x.transpose(0, 2, 3, 1))
  got = [saliency] + aux["side"]
  errors = [float(np.abs(np.asarray(g) - w).max())
            for g, w in zip(got, want)]
  assert len(errors) == 7 and max(errors) <= _TOL, errors
  # The logits (pre-sigmoid) agree as well: sigmoid cannot hide an error.
  logit_err = max(float(np.abs(np.asarray(a) - np.log(w / (1 - w))).max())
                  for a, w in zip(aux["logits"], want))
  assert logit_err <= 10 * _TOL, logit_err
  return errors


# A Latin square over variant x mode x size: each variant meets both modes
# and both sizes, each mode both variants and both sizes.
@pytest.mark.parametrize("variant,mode,size", [
    ("u2net", resize.ALIGN_CORNERS, 256),  # exactly CGN's configuration
    ("u2net", resize.HALF_PIXEL, 320),  # the original repository's
    ("u2netp", resize.ALIGN_CORNERS, 320),
    ("u2netp", resize.HALF_PIXEL, 256),
])
def test_parity_with_reference(ref, monkeypatch, variant, mode, size):
  _check_parity(ref, monkeypatch, variant, mode, size, size)


def test_parameter_counts_match_reference(ref):
  for variant in ("u2net", "u2netp"):
    net = _reference_net(ref, variant)
    want = sum(p.numel() for p in net.parameters())
    shapes = u2net.abstract_variables(variant)
    assert u2net.param_count(shapes) == want, variant
    n_stats = sum(int(np.prod(x.shape))
                  for x in jax.tree.leaves(shapes["batch_stats"]))
    assert n_stats == sum(b.numel() for n, b in net.named_buffers()
                          if "running" in n)
  assert u2net.param_count(u2net.abstract_variables("u2net")) == 44_009_869


def test_input_gradients_match_torch(ref, monkeypatch):
  """d(weighted sum of all seven maps)/d(image), at an odd size."""
  mode = resize.ALIGN_CORNERS  # CGN back-propagates through this mode
  _patch_upsample(monkeypatch, ref, mode)
  net = _reference_net(ref, "u2netp")
  h, w = 44, 60  # 44 -> 22, 11, 6, 3, 2; 60 -> 30, 15, 8: ceil pools pad
  rng = np.random.default_rng(3)
  x = rng.uniform(-1, 1, (1, 3, h, w)).astype(np.float32)
  weights = rng.standard_normal((7, 1, 1, h, w)).astype(np.float32)

  xt = torch.from_numpy(x).requires_grad_(True)
  outs = net(xt)
  loss = sum((o * torch.from_numpy(wt)).sum() for o, wt in zip(outs, weights))
  loss.backward()
  want = xt.grad.numpy().transpose(0, 2, 3, 1)

  variables = converter.convert(_state_dict(net), "u2netp")
  model = u2net.U2Net(variant="u2netp", upsample=mode)
  wj = weights.transpose(0, 1, 3, 4, 2)

  def loss_fn(images):
    saliency, aux = model.apply(variables, images)
    maps = [saliency] + aux["side"]
    return sum((o * wt).sum() for o, wt in zip(maps, wj)), maps

  (_, maps), got = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(
      jnp.asarray(x.transpose(0, 2, 3, 1)))
  # The forward maps at this odd size agree too.
  for m, o in zip(maps, outs):
    err = np.abs(np.asarray(m) - o.detach().numpy().transpose(0, 2, 3, 1))
    assert err.max() <= _TOL, err.max()
  got = np.asarray(got)
  assert np.isfinite(got).all()
  scale = np.abs(want).max()
  assert scale > 0
  assert np.abs(got - want).max() <= 1e-4 * scale, (
      np.abs(got - want).max(), scale)


# -------------------------------------------------------------- converter --

def test_converter_lists_missing_unexpected_and_misshaped_keys(ref):
  sd = _state_dict(_reference_net(ref, "u2netp"))
  sd.pop("stage3.rebnconv2.bn_s1.running_var")
  sd.pop("side4.bias")
  sd["stage9.conv.weight"] = np.zeros((1,), np.float32)
  sd["outconv.weight"] = np.zeros((1, 7, 1, 1), np.float32)
  with pytest.raises(common.ConversionError) as e:
    converter.convert(sd, "u2netp")
  msg = str(e.value)
  for part in ("missing keys (2)", "stage3.rebnconv2.bn_s1.running_var",
               "side4.bias", "unexpected keys (1)", "stage9.conv.weight",
               "mis-shaped keys (1)",
               "outconv.weight: checkpoint (1, 7, 1, 1) vs model (1, 6, 1, 1)"):
    assert part in msg, (part, msg)


def test_converter_names_the_other_variant(ref):
  sd = _state_dict(_reference_net(ref, "u2netp"))
  with pytest.raises(common.ConversionError,
                     match="this is a u2netp checkpoint.*--variant u2netp"):
    converter.convert(sd, "u2net")


@pytest.fixture(scope="module")
def converted_legacy(ref, tmp_path_factory):
  """u2netp saved in torch's legacy format with a DataParallel prefix."""
  tmp = tmp_path_factory.mktemp("u2net")
  net = _reference_net(ref, "u2netp")
  sd = {"module." + k: v for k, v in net.state_dict().items()}
  pth = tmp / "u2netp_legacy.pth"
  torch.save(sd, pth, _use_new_zipfile_serialization=False)
  with open(pth, "rb") as f:
    assert f.read(2) != b"PK"  # really not the zip format
  out = tmp / "converted"
  argv = ["u2net", "--input", str(pth), "--variant", "u2netp", "--output",
          str(out)]
  assert converter_cli.main(argv) == 0
  return net, out


def test_legacy_format_converts_and_loads(converted_legacy):
  net, out = converted_legacy
  variant, variables = converter.load(out)
  assert variant == "u2netp"
  want = converter.convert(_state_dict(net), "u2netp")
  flat_got = jax.tree_util.tree_leaves_with_path(variables)
  flat_want = dict(jax.tree_util.tree_leaves_with_path(want))
  assert len(flat_got) == len(flat_want)
  for path, value in flat_got:
    np.testing.assert_array_equal(np.asarray(value), flat_want[path])


def test_sample_cli_writes_mask_at_original_size(converted_legacy, tmp_path):
  _, weights = converted_legacy
  rgb = np.random.default_rng(0).integers(0, 256, (45, 70, 3), np.uint8)
  Image.fromarray(rgb).save(tmp_path / "in.png")
  out = tmp_path / "mask.png"
  argv = ["u2net", "--weights", str(weights), "--image",
          str(tmp_path / "in.png"), "--size", "32", "--out", str(out)]
  assert sample_cli.main(argv) == 0
  with Image.open(out) as im:
    assert im.mode == "L" and im.size == (70, 45)
    mask = np.asarray(im)
  # 'original' preprocessing min-max normalises the map (normPRED); the
  # resize back to 70x45 smooths the extremes a little.
  assert int(mask.max()) - int(mask.min()) >= 128
