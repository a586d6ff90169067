"""PyTorch re-creation of upstream's ImageNet CGN training iteration, for timing.

The same-machine baseline of the JAX `cgn_imagenet_train` benchmarks. It
mirrors `imagenet/train_cgn.py`, `imagenet/models/cgn.py` and
`shared/losses.py` of autonomousvision/counterfactual_generative_networks
(commit 335bebd; copies in ../shared/reference/upstream_cgn/), quirks
included, because the point is to time what upstream does:

* `cgn()` draws the class with numpy and the noise u with scipy's truncnorm
  on the host, then copies them to the device (as `get_inp`);
* four BigGAN-deep-256 generators (pytorch-pretrained-biggan's model, which
  upstream's `imagenet/models/biggan.py` copies; upstream's forward is the
  same) in `cgn.train()` mode: the three mechanisms run one spectral-norm
  power iteration per forward, biggan_GT and U²-Net stay in eval mode;
  U²-Net (u2net-fast's U2NET, upsampling patched to upstream's
  `align_corners=True`; upstream returns only `sigmoid(d0)`) runs twice;
* the six losses exactly as upstream builds them: `PerceptualLoss` runs the
  whole VGG16 `features` stack (through pool5) on the target and then on the
  input with hooks, content terms of weight 0 included; `PercLossText` has
  its own VGG16 copy and builds the patch grid per image with `unfold`,
  `argsort`, `randint`, `make_grid` (re-created: padding 0 is a plain
  tiling) and two bicubic `F.interpolate`s;
* every loss is `.mean()`ed, summed and back-propagated; the three Adam
  optimisers step every `--batch-acc` iterations (upstream's argparse
  default is 4000, so the micro-step dominates). The sheet/checkpoint saving
  every SAVE_ITER iterations is not timed.

All weights are random (no download: BigGAN, U²-Net and VGG16 have the
released shapes, so FLOPs are the same). `--size smoke` uses BigGAN-deep with
channel_width 4 and U2NETP, the reduced model of the parity golden and of the
JAX trainer's `:smoke` config. It imports only torch, numpy, scipy,
pytorch-pretrained-biggan, u2net-fast and the MNIST baseline's VGG16 (no
torchvision). The file is not named bench_* so the JAX harness does not
discover it.

Usage:
  python -m benchmarks.torch_baseline_imagenet --size full smoke --batch 1 \
      --steps 3 --json torch_baseline_imagenet.json
"""

import argparse
import json
import statistics
import sys
import time

import numpy as np
from scipy.stats import truncnorm
import torch
from torch import nn
import torch.nn.functional as F

try:
  from benchmarks import torch_baseline as tb
except ImportError:  # run as a script from benchmarks/
  import torch_baseline as tb  # pylint: disable=g-import-not-at-top

# upstream imagenet/config.py
LAMBDA = dict(L1=100, PERC=[4, 4, 4, 4], BINARY=300, MASK=500,
              TEXT=[0, 5, 5, 0], BG=2000)
LR = dict(shape=8e-6, texture=3e-5, bg=1e-5)
# upstream's BigGANConfig defaults: BigGAN-deep-256 (12 blocks).
BIGGAN_256_LAYERS = [(False, 16, 16), (True, 16, 16), (False, 16, 16),
                     (True, 16, 8), (False, 8, 8), (True, 8, 8),
                     (False, 8, 8), (True, 8, 4), (False, 4, 4),
                     (True, 4, 2), (False, 2, 2), (True, 2, 1)]
SIZES = {"full": dict(channel_width=128, u2net="U2NET"),
         "smoke": dict(channel_width=4, u2net="U2NETP")}


# ---------------------------------------------------------------------------
# Models (imagenet/models/cgn.py).


def biggan(channel_width):
  """A random BigGAN-deep-256 as upstream's `BigGAN.initialize(None)`."""
  from pytorch_pretrained_biggan import BigGAN, BigGANConfig  # pylint: disable=g-import-not-at-top
  config = BigGANConfig(output_dim=256, z_dim=128, class_embed_dim=128,
                        channel_width=channel_width, num_classes=1000,
                        layers=BIGGAN_256_LAYERS, attention_layer_position=8,
                        eps=1e-4, n_stats=51)
  model = BigGAN(config)
  # The final unconditional BN allocates its affine with torch.Tensor()
  # (uninitialised memory); the released weights overwrite it.
  with torch.no_grad():
    model.generator.bn.weight.fill_(1.0)
    model.generator.bn.bias.zero_()
    # Converge spectral norm's u, v as in released weights: with torch's
    # random start, eval mode (biggan_GT) divides by a sigma near 0 -> NaN.
    for m in model.modules():
      if hasattr(m, "weight_orig"):
        w = m.weight_orig.reshape(m.weight_orig.shape[0], -1)
        u, v = m.weight_u, m.weight_v
        for _ in range(20):
          v.copy_(F.normalize(w.t() @ u, dim=0, eps=1e-4))
          u.copy_(F.normalize(w @ v, dim=0, eps=1e-4))
  return model


def u2net(variant):
  """u2net-fast's U2NET/U2NETP with upstream's interpolation and output."""
  from u2net_fast import model as u2m  # pylint: disable=g-import-not-at-top

  def upsample_like(src, tar):  # upstream imagenet/models/u2net.py
    return F.interpolate(src, size=tar.shape[2:], mode="bilinear",
                         align_corners=True)

  u2m._upsample_like = upsample_like  # pylint: disable=protected-access
  net = getattr(u2m, variant)(3, 1)

  class FirstOutput(nn.Module):
    """Upstream's U2NET.forward returns only sigmoid(d0)."""

    def __init__(self):
      super().__init__()
      self.net = net

    def forward(self, x):
      return self.net(x)[0]

  return FirstOutput()


class CGN(nn.Module):
  """Upstream's ImageNet CGN (imagenet/models/cgn.py), random weights."""

  def __init__(self, batch_sz, truncation=1.0, channel_width=128,
               u2net_variant="U2NET"):
    super().__init__()
    self.dim_u = 128
    self.truncation = truncation
    self.batch_sz = batch_sz
    self.biggan_GT = biggan(channel_width).eval()
    _toggle_grad(self.biggan_GT, False)
    # Upstream loads the same weights into all three; here they share one
    # random init, which changes nothing timed.
    self.f_shape = biggan(channel_width)
    self.f_text = biggan(channel_width)
    self.f_bg = biggan(channel_width)
    self.f_text.load_state_dict(self.f_shape.state_dict())
    self.f_bg.load_state_dict(self.f_shape.state_dict())
    self.u2net = u2net(u2net_variant).eval()
    _toggle_grad(self.u2net, False)

  def train(self, mode=True):
    self.training = mode
    for module in self.children():
      module.train(mode)
    self.biggan_GT.eval()
    self.u2net.eval()
    return self

  def get_device(self):
    return next(self.parameters()).device

  def get_noise_vec(self):
    values = truncnorm.rvs(-2, 2, size=(self.batch_sz, self.dim_u))
    return torch.from_numpy(self.truncation * values.astype(np.float32))

  def get_class_vec(self, y):
    y_vec = y * torch.ones(self.batch_sz).to(torch.int64)
    return F.one_hot(y_vec, 1000).to(torch.float32)

  def get_inp(self, ys=None):
    if ys is None:
      ys = 3 * [np.random.randint(0, 1000)]
    dev = self.get_device()
    u_vec = self.get_noise_vec()
    return tuple((u_vec.to(dev), self.get_class_vec(y).to(dev),
                  self.truncation) for y in ys)

  def forward(self, inp=None, ys=None):
    """Upstream's three call forms: a training draw, `inp`, or `ys`."""
    inp0, inp1, inp2 = self.get_inp(ys) if inp is None else (inp, inp, inp)
    x_gt = self.biggan_GT(*inp0).detach()
    premask = self.f_shape(*inp0)
    mask = torch.clamp(self.u2net(premask), 0.0001, 0.9999)
    foreground = self.f_text(*inp1)
    background = self.f_bg(*inp2)
    background_mask = self.u2net(background)
    return x_gt, mask, premask.detach(), foreground, background, (
        background_mask)


def _toggle_grad(model, on):
  for p in model.parameters():
    p.requires_grad = on


# ---------------------------------------------------------------------------
# Losses (shared/losses.py).


def get_all_patches(ims, patch_sz, pad=False):
  patch_sz = np.array(patch_sz)
  patch_sz += (patch_sz + 1) % 2
  assert not pad  # PercLossText calls it with pad=False
  patches = ims.unfold(2, int(patch_sz[0]), 1).unfold(3, int(patch_sz[1]), 1)
  batch_sz, c, w, h = patches.shape[:4]
  patch_batch = patches.reshape(batch_sz, c, w * h, int(patch_sz[0]),
                                int(patch_sz[1]))
  patch_batch = patch_batch.permute(0, 2, 1, 3, 4)
  return patch_batch.reshape(batch_sz * w * h, c, int(patch_sz[0]),
                             int(patch_sz[1]))


def make_grid_no_padding(patches, nrow):
  """torchvision's make_grid(patches, nrow, padding=0): a row-major tiling."""
  n, c, h, w = patches.shape
  rows = n // nrow
  return patches.reshape(rows, nrow, c, h, w).permute(2, 0, 3, 1, 4).reshape(
      c, rows * h, nrow * w)


def get_sampled_patches(prob_maps, paint, patch_sz, sample_sz, n_up,
                        windows=None):
  """Upstream's patch grid; `windows` [B, n_up²] replaces the draws (tests)."""
  paint_shape = paint.shape[-2:]
  prob_maps = F.interpolate(prob_maps, (128, 128), mode="bicubic",
                            align_corners=False)
  paint = F.interpolate(paint, (128, 128), mode="bicubic",
                        align_corners=False)
  mode_patches = []
  for i, (p, prob) in enumerate(zip(paint, prob_maps)):
    prob_patches = get_all_patches(prob.unsqueeze(0), patch_sz)
    prob_patches_mean = prob_patches.mean((1, 2, 3))
    max_ind = torch.argsort(prob_patches_mean)[-sample_sz:]
    max_ind = max_ind[torch.randint(len(max_ind), (n_up**2,))].squeeze()
    if windows is not None:
      max_ind = torch.as_tensor(windows[i])
    p_patches = get_all_patches(p[None], patch_sz)
    patches = make_grid_no_padding(p_patches[max_ind], n_up)
    patches = F.interpolate(patches[None], paint_shape, mode="bicubic",
                            align_corners=False)
    mode_patches.append(patches)
  return torch.cat(mode_patches)


class PercLossText(nn.Module):

  def __init__(self, style_wgts, patch_sz=(15, 15), sample_sz=100, n_up=6):
    super().__init__()
    self.loss = tb.PerceptualLoss(style_wgts=style_wgts)
    self.patch_sz = list(patch_sz)
    self.sample_sz = sample_sz
    self.n_up = n_up

  def forward(self, ims, mask, paint, windows=None):
    ims, mask = ims.detach(), mask.detach()
    target = get_sampled_patches(mask, ims, self.patch_sz, self.sample_sz,
                                 self.n_up, windows)
    return self.loss(paint, target.detach())


def l1_loss(x_rec, x):
  return LAMBDA["L1"] * F.l1_loss(x_rec, x)


def binary_loss(mask):
  ent = -mask * torch.log2(mask) - (1 - mask) * torch.log2(1 - mask)
  return LAMBDA["BINARY"] * ent.mean()


def mask_loss(mask, interval=(0.1, 0.9)):
  mask_mean = torch.mean(mask, [1, 2, 3])
  zero = torch.zeros(1).to(mask.device)
  return LAMBDA["MASK"] * (torch.max(zero, interval[0] - mask_mean)
                           + torch.max(zero, mask_mean - interval[1]))


def background_loss(mask):
  loss = LAMBDA["BG"] * mask.reshape(mask.shape[0], -1).mean(1)
  return torch.max(torch.zeros_like(loss), loss)


def generator_losses(l_perc, l_text, x_gt, mask, foreground, background_mask,
                     x_gen, windows=None):
  """The loop body of train_cgn.fit(): six losses, each `.mean()`ed."""
  losses = {"l1": l1_loss(x_gen, x_gt), "perc": l_perc(x_gen, x_gt),
            "binary": binary_loss(mask), "mask": mask_loss(mask),
            "perc_text": l_text(x_gt, mask, foreground, windows),
            "bg": background_loss(background_mask)}
  return {k: v.mean() for k, v in losses.items()}


# ---------------------------------------------------------------------------
# One iteration of train_cgn.fit().


def build_step(size, batch, device, batch_acc):
  """Returns (step, cgn): `step()` runs one upstream training iteration."""
  spec = SIZES[size]
  cgn = CGN(batch, 1.0, spec["channel_width"], spec["u2net"]).to(device)
  cgn.train()
  opts = {k: torch.optim.Adam(m.parameters(), lr=LR[k], betas=(0.9, 0.999))
          for k, m in (("shape", cgn.f_shape), ("texture", cgn.f_text),
                       ("bg", cgn.f_bg))}
  l_perc = tb.PerceptualLoss(style_wgts=LAMBDA["PERC"]).to(device)
  l_text = PercLossText(style_wgts=LAMBDA["TEXT"]).to(device)
  counter = [0]

  def step():
    x_gt, mask, _, foreground, background, background_mask = cgn()
    x_gen = mask * foreground + (1 - mask) * background
    losses = generator_losses(l_perc, l_text, x_gt, mask, foreground,
                              background_mask, x_gen)
    g_loss = sum(losses.values())
    g_loss.backward()
    counter[0] += 1
    if counter[0] % batch_acc == 0:
      for opt in opts.values():  # opts.step(['shape', 'bg', 'texture'])
        opt.step()
        opt.zero_grad()
    return losses

  return step, cgn


def _time(step, device, steps, warmup):
  sync = (torch.cuda.synchronize if device.type == "cuda"
          else (lambda: None))
  for _ in range(warmup):
    step()
  sync()
  times, cpu = [], []
  for _ in range(steps):
    sync()
    t0, c0 = time.perf_counter(), time.process_time()
    step()
    sync()
    times.append(time.perf_counter() - t0)
    cpu.append(time.process_time() - c0)
  return times, cpu


def main(argv=None):
  """Command line; prints one JSON record per (size, batch)."""
  parser = argparse.ArgumentParser(
      description="Times upstream's PyTorch ImageNet CGN training iteration "
      "(forward, six losses, backward; Adam every --batch-acc iterations).")
  parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
  parser.add_argument("--size", nargs="+", default=["full", "smoke"],
                      choices=list(SIZES))
  parser.add_argument("--batch", type=int, nargs="+", default=[1])
  parser.add_argument("--steps", type=int, default=3,
                      help="timed iterations per benchmark")
  parser.add_argument("--warmup", type=int, default=1)
  parser.add_argument("--batch-acc", type=int, default=4000,
                      help="iterations per optimiser step (upstream "
                      "argparse default 4000; 1 times a step every "
                      "iteration)")
  parser.add_argument("--threads", type=int, default=None,
                      help="torch.set_num_threads (default: torch's own)")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--json", metavar="FILE", help="write all records here")
  args = parser.parse_args(argv)
  if args.device == "cuda" and not torch.cuda.is_available():
    parser.error("--device cuda but torch.cuda.is_available() is False")
  if args.steps < 1 or args.batch_acc < 1:
    parser.error("--steps and --batch-acc must be >= 1")
  device = torch.device(args.device)
  if args.threads is not None:
    torch.set_num_threads(args.threads)
  torch.manual_seed(args.seed)
  np.random.seed(args.seed)

  records = []
  for size in args.size:
    for batch in args.batch:
      step, cgn = build_step(size, batch, device, args.batch_acc)
      times, cpu = _time(step, device, args.steps, args.warmup)
      median = statistics.median(times)
      rec = {"name": f"torch_cgn_imagenet_train/{size}/b{batch}",
             "backend": f"torch-{device.type}",
             "device": (torch.cuda.get_device_name(device)
                        if device.type == "cuda" else "cpu"),
             "batch": batch, "size": size,
             "channel_width": SIZES[size]["channel_width"],
             "u2net": SIZES[size]["u2net"], "batch_acc": args.batch_acc,
             "repeats": len(times), "median_s": median, "min_s": min(times),
             "max_s": max(times), "it_per_s": 1.0 / median,
             # CPU seconds of all threads: on a shared, oversubscribed
             # machine the wall time also counts the waits for a core.
             "median_cpu_s": statistics.median(cpu),
             "img_per_s": batch / median,
             "trainable_params": sum(p.numel() for p in cgn.parameters()
                                     if p.requires_grad),
             "torch_version": torch.__version__,
             "num_threads": torch.get_num_threads()}
      records.append(rec)
      print(json.dumps(rec), flush=True)
      if args.json:  # rewrite after each record so a crash keeps the rest
        with open(args.json, "w") as f:
          json.dump(records, f, indent=1)
      del step, cgn
  return 0


if __name__ == "__main__":
  sys.exit(main())
