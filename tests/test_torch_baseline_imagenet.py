"""The PyTorch baseline of upstream's ImageNet iteration is upstream's iteration.

benchmarks/torch_baseline_imagenet.py re-creates upstream's CGN and losses
from pytorch-pretrained-biggan, u2net-fast and a hand-built VGG16. Loaded
with the golden's `cgn_small.pth` and VGG16 formula weights, it must
reproduce the golden's outputs and its six loss values (the texture windows
injected), so the timed code is the code upstream runs.
"""


import numpy as np
import pytest

pytestmark = [pytest.mark.torch, pytest.mark.shared]

torch = pytest.importorskip("torch")
tbi = pytest.importorskip("benchmarks.torch_baseline_imagenet")


@pytest.fixture(autouse=True, scope="module")
def _two_threads():
  n = torch.get_num_threads()
  torch.set_num_threads(min(n, 2))
  yield
  torch.set_num_threads(n)


def _perceptual(style, formula_weights):
  loss = tbi.tb.PerceptualLoss(style_wgts=style)
  shapes = [(k, tuple(v.shape)) for k, v in loss.m_feat.state_dict().items()]
  loss.m_feat.load_state_dict({
      k: torch.from_numpy(v) for k, v in formula_weights(shapes,
                                                         1602).items()})
  return loss


def _small_cgn(d, batch, truncation):
  cgn = tbi.CGN(batch, truncation, channel_width=4, u2net_variant="U2NETP")
  state = torch.load(d / "cgn_small.pth", map_location="cpu")
  # The wrapper that returns only sigmoid(d0) holds U²-Net as `.net`.
  cgn.load_state_dict({k.replace("u2net.", "u2net.net.", 1): v
                       for k, v in state.items()})
  return cgn


def test_reproduces_the_golden_iteration(shared_dir, formula_weights):
  d = shared_dir / "reference" / "cgn_imagenet"
  g = np.load(d / "golden.npz")
  cgn = _small_cgn(d, 2, 1.0)
  cgn.train()
  text = tbi.PercLossText(style_wgts=tbi.LAMBDA["TEXT"])
  text.loss = _perceptual(tbi.LAMBDA["TEXT"], formula_weights)
  perc = _perceptual(tbi.LAMBDA["PERC"], formula_weights)
  y = torch.nn.functional.one_hot(torch.full((2,), int(g["y"])), 1000)
  with torch.no_grad():
    x_gt, mask, premask, fg, bg, bg_mask = cgn(
        (torch.from_numpy(g["u"]), y.float(), 1.0))
    x_gen = mask * fg + (1 - mask) * bg
    for name, t in dict(x_gt=x_gt, mask=mask, premask=premask, foreground=fg,
                        background=bg, background_mask=bg_mask,
                        x_gen=x_gen).items():
      np.testing.assert_allclose(t.numpy(), g[name], rtol=0, atol=1e-5,
                                 err_msg=name)
    losses = tbi.generator_losses(perc, text, x_gt, mask, fg, bg_mask, x_gen,
                                  windows=g["texture_windows"])
  for name, value in losses.items():
    assert float(value) == pytest.approx(float(g[f"loss_{name}"]),
                                         rel=1e-5), name
  # Upstream's trainable tensors: 204 per mechanism.
  assert sum(1 for p in cgn.parameters() if p.requires_grad) == 612



def test_generate_loop_runs_upstreams_three_class_forward(shared_dir,
                                                          tmp_path):
  """`cgn(ys=...)` (what generate_data.py calls) gives the golden's cf/*."""
  tgi = pytest.importorskip("benchmarks.torch_generate_imagenet")
  d = shared_dir / "reference" / "cgn_imagenet"
  g = np.load(d / "golden.npz")
  cgn = _small_cgn(d, 2, 0.5).eval()
  cgn.get_noise_vec = lambda: torch.from_numpy(g["cf/u"])
  with torch.no_grad():
    x_gt, mask, _, fg, bg, _ = cgn(ys=[int(y) for y in g["cf/ys"]])
  for name, t in dict(x_gt=x_gt, mask=mask, foreground=fg, background=bg,
                      x_gen=mask * fg + (1 - mask) * bg).items():
    np.testing.assert_allclose(t.numpy(), g[f"cf/{name}"], rtol=0,
                               atol=1e-5, err_msg=name)
  cgn = _small_cgn(d, 1, 0.5).eval()
  tgi.generate(cgn, tmp_path, 2)
  rows = (tmp_path / "labels.csv").read_text().splitlines()
  assert [r.split(",")[0] for r in rows] == ["bench_0000000", "bench_0000001"]
  assert len(list((tmp_path / "ims").glob("*_x_gen.jpg"))) == 2
