"""Checks the PyTorch baseline of benchmarks/torch_baseline.py.

The baseline times the upstream training loop, so what matters is that it
builds the upstream models (exact parameter counts), that the shuffler is a
random crop of the 2x2 tiling, and that one iteration trains.
"""

import pytest

pytestmark = pytest.mark.torch

torch = pytest.importorskip("torch")

# The project's own code: an import error is a failure, never a skip.
from benchmarks import torch_baseline as tb  # pylint: disable=g-import-not-at-top,wrong-import-position


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
  # Two intra-op threads on a busy 2-core box spin against each other and
  # run ~15x slower; the checks here do not depend on the thread count.
  n = torch.get_num_threads()
  torch.set_num_threads(1)
  yield
  torch.set_num_threads(n)


def _n_params(module):
  return sum(p.numel() for p in module.parameters() if p.requires_grad)


def test_parameter_counts_match_upstream():
  # Counts verified against the released checkpoints / upstream modules.
  assert _n_params(tb.CGN()) == 659_992
  assert _n_params(tb.DiscLin(10, 512)) == 2_104_421
  assert _n_params(tb.DiscConv(10, 32)) == 413_642
  # torchvision's vgg16().features, all 13 convs.
  assert sum(p.numel() for p in tb.vgg16_features().parameters()) == (
      14_714_688)


def test_perceptual_hooks_sit_before_the_first_four_pools():
  perc = tb.PerceptualLoss(style_wgts=[1.0, 1.0, 1.0, 1.0])
  # pylint: disable-next=protected-access
  feats = perc._features(torch.zeros(1, 3, 32, 32))
  assert [tuple(f.shape[1:]) for f in feats] == [
      (64, 32, 32), (128, 16, 16), (256, 8, 8), (512, 4, 4)]
  assert not any(p.requires_grad for p in perc.parameters())


def test_shuffler_is_a_cyclic_roll_per_sample():
  torch.manual_seed(0)
  x = torch.randn(8, 3, 32, 32)
  out = tb.CGN().shuffler(x)
  assert out.shape == x.shape
  for i in range(len(x)):
    assert any(torch.equal(out[i], torch.roll(x[i], (-dy, -dx), (1, 2)))
               for dy in range(32) for dx in range(32)), i


@pytest.mark.parametrize("config", ["colored", "wildlife"])
def test_one_iteration_trains_at_batch_2(config):
  torch.manual_seed(0)
  step, models = tb.build_cgn_step(config, 2, torch.device("cpu"))
  before_g = [p.detach().clone() for p in models["cgn"].parameters()]
  before_d = [p.detach().clone() for p in models["disc"].parameters()]
  loss_g, loss_d = step()
  assert torch.isfinite(loss_g) and torch.isfinite(loss_d)
  assert any(not torch.equal(a, b) for a, b in
             zip(before_g, models["cgn"].parameters()))
  assert any(not torch.equal(a, b) for a, b in
             zip(before_d, models["disc"].parameters()))


def test_classifier_step_trains():
  torch.manual_seed(0)
  step, model = tb.build_classifier_step(4, torch.device("cpu"))
  # 6 (BN) + 2,432 + 9,248 + 18,496 + 36,928 + 650 (SPEC §3.2: ~67.8k).
  assert _n_params(model) == 67_760
  before = [p.detach().clone() for p in model.parameters()]
  assert torch.isfinite(step())
  assert all(not torch.equal(a, b) for a, b in
             zip(before, model.parameters()))


@pytest.mark.shared
def test_upstream_loader_renders_what_the_jax_pipeline_renders(mnist_dir):
  """Same variant semantics as cgn_jax.data.variants (SPEC §1.2-1.3)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from cgn_jax import paths  # pylint: disable=g-import-not-at-top
  from cgn_jax.data import variants  # pylint: disable=g-import-not-at-top
  dc = tb.UpstreamTrainSet("double_colored", str(mnist_dir))
  x, y = dc[0]
  assert x.shape == (3, 32, 32) and y == int(dc.labels[0])
  bg = (variants.DC_PALETTE[y] - 0.5) / 0.5
  corner = x[:, 0, 0].numpy()  # MNIST corners are background
  assert np.abs(corner - bg).max() < 0.1  # colour noise std 0.01 (x2)
  textures = paths.textures_dir()
  if not textures.is_dir():
    pytest.skip("no Wildlife textures")
  w = tb.UpstreamTrainSet("wildlife", str(mnist_dir), str(textures))
  assert len(w) == len(dc) == 50_000  # upstream: MNIST train[:50000]
  x, y = w[0]
  # The background is a 32x32 window of the label's padded background
  # texture, scaled to [-1, 1]; MNIST's 4x4 corners are background.
  tex = (w.textures["background"][y].float().numpy() / 255 - 0.5) / 0.5
  corner = x[:, :4, :4].numpy()
  hits = [(i, j) for i in range(tex.shape[1] - 31)
          for j in range(tex.shape[2] - 31)
          if np.array_equal(tex[:, i:i + 4, j:j + 4], corner)]
  assert hits, "background is not a crop of the label's texture"
  loader = tb.upstream_loader("wildlife", 4, str(mnist_dir), str(textures),
                              workers=0)
  xb, yb = next(iter(loader))
  assert xb.shape == (4, 3, 32, 32) and yb.shape == (4,)
  assert float(xb.min()) >= -1 and float(xb.max()) <= 1
