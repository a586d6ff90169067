"""PyTorch re-creation of the upstream MNIST CGN training loop, for timing.

This is a same-machine baseline for the JAX benchmarks ("x times PyTorch on
the same GPU/CPU"). It mirrors the authors' code (SPEC §2 and §3.2), quirks
included, because the point is to time what upstream does:

* the generator draws its noise u on the host and copies it to the device,
  and the random crop of the patch shuffler builds its indices on the host;
* the perceptual loss runs the *whole* VGG16 `features` stack (through
  pool5) on both the real and the generated batch, with forward hooks at
  relu1_2/2_2/3_3/4_3, and computes all four content (weight 0) and style
  terms whatever the weights are;
* the progress-bar message formats the five losses every step (a device
  sync each), and the classifier step counts correct predictions with
  `.item()`. `--no-logging` drops both.

Data loading is not timed: the real batch is random and already on the
device. VGG16 is randomly initialised (torchvision is not a dependency),
which changes no shape or FLOP. The file is not named bench_* so the JAX
harness does not discover it; it imports only torch, numpy and stdlib.

Usage:
  python benchmarks/torch_baseline.py --device cuda --batch 16 64 \
      --steps 50 --json torch_baseline.json
"""

import argparse
import json
import statistics
import sys
import time

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

# Per-config values from the released yamls (SPEC §2.6).
CONFIGS = {
    "colored": dict(ndf=512, disc="linear", init_type="orthogonal",
                    init_gain=0.1, lambda_mask=0.1,
                    perc=[0.05, 0.1, 0.01, 0.0]),
    "double_colored": dict(ndf=512, disc="linear", init_type="orthogonal",
                           init_gain=0.2, lambda_mask=0.3,
                           perc=[0.0, 0.05, 0.0, 0.05]),
    "wildlife": dict(ndf=32, disc="conv", init_type="normal",
                     init_gain=0.03, lambda_mask=0.3,
                     perc=[0.01, 0.05, 0.0, 0.01]),
}
LR = 2e-4
BETAS = (0.5, 0.999)
N_CLASSES = 10
CLASSIFIER_BATCH = 64


# ---------------------------------------------------------------------------
# Initialisation (pix2pix `init_net`, SPEC §2.2).


def init_net(net, init_type="normal", init_gain=0.02):
  """Applies the upstream pix2pix initialiser in place.

  Args:
    net: the module tree to initialise.
    init_type: 'normal', 'xavier', 'kaiming' or 'orthogonal'.
    init_gain: std / gain of the scheme; also the std of BN2d weights.

  Returns:
    `net`.
  """
  def init_func(m):
    name = m.__class__.__name__
    if hasattr(m, "weight") and ("Conv" in name or "Linear" in name):
      if init_type == "normal":
        nn.init.normal_(m.weight.data, 0.0, init_gain)
      elif init_type == "xavier":
        nn.init.xavier_normal_(m.weight.data, gain=init_gain)
      elif init_type == "kaiming":
        nn.init.kaiming_normal_(m.weight.data, a=0, mode="fan_in")
      elif init_type == "orthogonal":
        nn.init.orthogonal_(m.weight.data, gain=init_gain)
      else:
        raise ValueError(f"unknown init_type {init_type!r}; use normal, "
                         "xavier, kaiming or orthogonal")
      if getattr(m, "bias", None) is not None:
        nn.init.constant_(m.bias.data, 0.0)
    elif "BatchNorm2d" in name:
      nn.init.normal_(m.weight.data, 1.0, init_gain)
      nn.init.constant_(m.bias.data, 0.0)

  net.apply(init_func)
  return net


# ---------------------------------------------------------------------------
# Generator (SPEC §2.1).


class Reshape(nn.Module):
  """`x.view(shape)`; occupies a Sequential slot like upstream's."""

  def __init__(self, *shape):
    super().__init__()
    self.shape = shape

  def forward(self, x):
    return x.view(self.shape)


def _upsample_block(cin, cout):
  return [
      nn.Upsample(scale_factor=2),
      nn.Conv2d(cin, cout, 3, stride=1, padding=1, bias=False),
      nn.BatchNorm2d(cout),
      nn.LeakyReLU(0.2, inplace=True),
  ]


def _instance_norm(c):
  return nn.InstanceNorm2d(c, affine=False, track_running_stats=False)


def _shape_layers(cin, cout, ngf, init_sz):
  return [
      nn.Linear(cin, ngf * 2 * init_sz ** 2),
      Reshape(-1, ngf * 2, init_sz, init_sz),
      _instance_norm(ngf * 2),
      *_upsample_block(ngf * 2, ngf),
      _instance_norm(ngf),
      *_upsample_block(ngf, cout),
      _instance_norm(cout),
  ]


def _texture_layers(cin, cout, ngf, init_sz):
  return [
      nn.Linear(cin, ngf * 2 * init_sz ** 2),
      Reshape(-1, ngf * 2, init_sz, init_sz),
      *_upsample_block(ngf * 2, ngf * 2),
      *_upsample_block(ngf * 2, ngf),
      nn.Conv2d(ngf, cout, 3, stride=1, padding=1),
      nn.BatchNorm2d(cout),
      nn.Tanh(),
  ]


class Patch2Image(nn.Module):
  """Tiles a patch n_up x n_up times."""

  def __init__(self, patch_sz, n_up):
    super().__init__()
    self.patch_sz = patch_sz
    self.n_up = n_up

  def forward(self, x):
    x = torch.cat([x] * self.n_up, -1)
    return torch.cat([x] * self.n_up, -2)


def _choose_rand_patches(x, patch_sz, dim, idx=None):
  # Upstream's helper: the indices are drawn on the host, and indexing with
  # a slice between the two advanced indices moves the batch axis first, so
  # the first call transposes H and W and the second transposes them back.
  batch_sz = x.shape[0]
  patches = x.unfold(dim, patch_sz, 1)
  if idx is None:
    idx = torch.randint(0, patches.shape[2], (batch_sz,))
  return patches[torch.arange(batch_sz), :, idx, :]


class RandomCrop(nn.Module):
  """Per-sample random crop, exactly as upstream (two calls on axis 2).

  The first call's index is the crop's row offset h, the second's its column
  offset w (the first call leaves H and W transposed). `offsets` = (h, w),
  two (B,) int64 tensors, replaces the random draws (parity tests).
  """

  def __init__(self, crop_sz):
    super().__init__()
    self.crop_sz = crop_sz

  def forward(self, x, offsets=None):
    h, w = offsets if offsets is not None else (None, None)
    x = _choose_rand_patches(x, self.crop_sz, 2, h)
    return _choose_rand_patches(x, self.crop_sz, 2, w)


class CGN(nn.Module):
  """The upstream MNIST CGN generator (659,992 trainable floats)."""

  def __init__(self, n_classes=10, latent_sz=32, ngf=32,
               init_type="orthogonal", init_gain=0.1, img_sz=32):
    super().__init__()
    self.latent_sz = latent_sz
    self.label_emb = nn.Embedding(n_classes, n_classes)
    init_sz = img_sz // 4
    inp_dim = latent_sz + n_classes
    self.f_shape = nn.Sequential(*_shape_layers(inp_dim, 1, ngf, init_sz))
    self.f_text1 = nn.Sequential(*_texture_layers(inp_dim, 3, ngf, init_sz))
    self.f_text2 = nn.Sequential(*_texture_layers(inp_dim, 3, ngf, init_sz))
    self.shuffler = nn.Sequential(Patch2Image(img_sz, 2), RandomCrop(img_sz))
    init_net(self, init_type=init_type, init_gain=init_gain)

  def get_inp(self, ys, u=None):
    # Upstream draws u on the host and copies it over.
    if u is None:
      u = torch.normal(0, 1, (len(ys), self.latent_sz))
    return torch.cat([u.to(ys.device), self.label_emb(ys)], -1)

  def forward(self, ys, u=None, crops=None):
    """Normal (training) mode.

    Args:
      ys: (B,) int64 labels on the model's device.
      u: optional (B, latent_sz) noise instead of a fresh draw.
      crops: optional shuffler offsets instead of fresh draws:
        ((h_fg, w_fg), (h_bg, w_bg)), (B,) int64 tensors each.

    Returns:
      (mask (B,3,32,32), foreground, background).
    """
    inp = self.get_inp(ys, u)
    mask = self.f_shape(inp)
    mask = torch.clamp(mask, 0.0001, 0.9999).repeat(1, 3, 1, 1)
    tile, crop = self.shuffler
    c_fg, c_bg = crops if crops is not None else (None, None)
    foreground = crop(tile(self.f_text1(inp)), c_fg)
    background = crop(tile(self.f_text2(inp)), c_bg)
    return mask, foreground, background


# ---------------------------------------------------------------------------
# Discriminators (SPEC §2.4).


class DiscLin(nn.Module):
  """Linear conditional discriminator; default PyTorch init."""

  def __init__(self, n_classes, ndf, img_shape=(3, 32, 32)):
    super().__init__()
    self.label_embedding = nn.Embedding(n_classes, n_classes)
    self.model = nn.Sequential(
        nn.Linear(n_classes + int(np.prod(img_shape)), ndf),
        nn.LeakyReLU(0.2, inplace=True),
        nn.Linear(ndf, ndf),
        nn.Dropout(0.4),
        nn.LeakyReLU(0.2, inplace=True),
        nn.Linear(ndf, ndf),
        nn.Dropout(0.4),
        nn.LeakyReLU(0.2, inplace=True),
        nn.Linear(ndf, 1),
    )

  def forward(self, img, labels):
    d_in = torch.cat((img.view(img.size(0), -1),
                      self.label_embedding(labels)), -1)
    return self.model(d_in).squeeze()


class DiscConv(nn.Module):
  """Convolutional conditional discriminator; init_net normal 0.02."""

  def __init__(self, n_classes, ndf):
    super().__init__()
    self.label_embedding = nn.Embedding(n_classes, 1)

    def block(cin, cout, ks, st):
      return [nn.Conv2d(cin, cout, ks, stride=st, padding=0, bias=False),
              nn.BatchNorm2d(cout),
              nn.LeakyReLU(0.2, True)]

    self.model = nn.Sequential(
        *block(4, ndf, 3, 1),
        *block(ndf, ndf * 2, 3, 1),
        *block(ndf * 2, ndf * 4, 4, 2),
        *block(ndf * 4, ndf * 4, 4, 2),
        nn.AvgPool2d(3),
        nn.Conv2d(ndf * 4, 1, kernel_size=1, stride=1, padding=0,
                  bias=False),
    )
    init_net(self)

  def forward(self, ims, labels):
    emb = self.label_embedding(labels).reshape(-1, 1, 1, 1)
    emb = emb.repeat(1, 1, *ims.shape[-2:])
    return self.model(torch.cat([ims, emb], 1)).squeeze()


# ---------------------------------------------------------------------------
# Losses (SPEC §2.5).


def vgg16_features():
  """torchvision's `vgg16().features` layer for layer (same indices).

  Returns:
    nn.Sequential of 31 modules, randomly initialised like torchvision.
  """
  cfg = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M",
         512, 512, 512, "M", 512, 512, 512, "M"]
  layers, cin = [], 3
  for v in cfg:
    if v == "M":
      layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
    else:
      conv = nn.Conv2d(cin, v, kernel_size=3, padding=1)
      nn.init.kaiming_normal_(conv.weight, mode="fan_out",
                              nonlinearity="relu")
      nn.init.constant_(conv.bias, 0)
      layers += [conv, nn.ReLU(inplace=True)]
      cin = v
  return nn.Sequential(*layers)


def _gram_matrix(x):
  n, c, h, w = x.size()
  x = x.view(n, c, -1)
  return (x @ x.transpose(1, 2)) / (c * h * w)


class PerceptualLoss(nn.Module):
  """Upstream `PerceptualLoss`: frozen VGG16 features, hooks before pools."""

  def __init__(self, cont_wgts=(0, 0, 0, 0), style_wgts=(0, 0, 0, 0)):
    super().__init__()
    self.m_feat = vgg16_features().eval()
    for p in self.m_feat.parameters():
      p.requires_grad = False
    blocks = [i - 1 for i, m in enumerate(self.m_feat)
              if isinstance(m, nn.MaxPool2d)][:4]  # 3, 8, 15, 22
    self.cont_wgts = list(cont_wgts)
    self.style_wgts = list(style_wgts)
    self._stored = [None] * len(blocks)
    for k, i in enumerate(blocks):
      self.m_feat[i].register_forward_hook(self._make_hook(k))

  def _make_hook(self, k):
    def hook(module, inputs, output):
      del module, inputs
      self._stored[k] = output
    return hook

  def _features(self, x, clone=False):
    self.m_feat(x)  # the whole stack, through pool5, as upstream
    return [o.clone() if clone else o for o in self._stored]

  def forward(self, x_rec, x):
    out_feat = self._features(x, clone=True)
    in_feat = self._features(x_rec)
    losses = [F.l1_loss(a, b) * w
              for a, b, w in zip(in_feat, out_feat, self.cont_wgts)]
    losses += [F.l1_loss(_gram_matrix(a), _gram_matrix(b)) * w ** 2 * 5e3
               for a, b, w in zip(in_feat, out_feat, self.style_wgts)]
    return sum(losses)


class BinaryLoss(nn.Module):
  """λ · mean binary entropy (bits) of the mask."""

  def __init__(self, loss_weight):
    super().__init__()
    self.loss_weight = loss_weight

  def forward(self, mask):
    p = mask
    ent = -p * torch.log2(p) - (1 - p) * torch.log2(1 - p)
    return self.loss_weight * ent.mean()


# ---------------------------------------------------------------------------
# Training iterations.


def build_cgn_step(config, batch, device, logging=True, loader=None):
  """Builds the models and returns a one-iteration closure.

  Args:
    config: a key of CONFIGS.
    batch: images per iteration.
    device: torch.device.
    logging: format the five losses each step like upstream's progress bar
      (five device syncs).
    loader: an iterable of (images, labels) real batches (`upstream_loader`)
      that each iteration draws from and copies to the device, as upstream's
      loop does; None: one random batch already on the device.

  Returns:
    (step, models) where step() runs one G step then one D step
    (`cgn_iteration`) and models is a dict of the cgn, the discriminator,
    the losses and the two Adams.
  """
  if config not in CONFIGS:
    raise ValueError(f"unknown config {config!r}; choose from "
                     f"{sorted(CONFIGS)}")
  c = CONFIGS[config]
  cgn = CGN(n_classes=N_CLASSES, latent_sz=32, ngf=32,
            init_type=c["init_type"], init_gain=c["init_gain"])
  disc_cls = DiscLin if c["disc"] == "linear" else DiscConv
  disc = disc_cls(n_classes=N_CLASSES, ndf=c["ndf"])
  l_adv = nn.MSELoss()
  l_binary = BinaryLoss(c["lambda_mask"])
  l_perc = PerceptualLoss(style_wgts=c["perc"])
  opt_g = torch.optim.Adam(cgn.parameters(), lr=LR, betas=BETAS)
  opt_d = torch.optim.Adam(disc.parameters(), lr=LR, betas=BETAS)
  cgn, disc, l_perc = cgn.to(device), disc.to(device), l_perc.to(device)

  # The "real" batch, already on the device (loading is not timed).
  x_gt = torch.rand(batch, 3, 32, 32, device=device) * 2 - 1
  y_gt = torch.randint(N_CLASSES, (batch,), device=device)
  messages = []
  batches = _forever(loader) if loader is not None else None

  models = {"cgn": cgn, "disc": disc, "perc": l_perc, "binary": l_binary,
            "adv": l_adv, "opt_g": opt_g, "opt_d": opt_d}

  def step():
    nonlocal x_gt, y_gt
    if batches is not None:
      x_gt, y_gt = (t.to(device) for t in next(batches))
    y_gen = torch.randint(N_CLASSES, (len(y_gt),)).to(device)
    out = cgn_iteration(models, x_gt, y_gt, y_gen)
    if logging:
      msg = "".join(f"[{k}: {out[f'loss_d_{k}']:.3f}]"
                    for k in ("real", "fake"))
      msg += "".join(f"[{k}: {out[f'loss_g_{k}']:.3f}]"
                     for k in ("adv", "binary", "perc"))
      messages[:] = [msg]
    return out["loss_g"], out["loss_d"]

  return step, models


def cgn_iteration(models, x_gt, y_gt, y_gen, u=None, crops=None):
  """One upstream `fit()` iteration: a G step, then a D step.

  Line for line `mnists/train_cgn.py` (upstream's `Optimizers.zero_grad`
  and `.step(..., False)` are the two Adams' `zero_grad` and `step`).

  Args:
    models: the dict of `build_cgn_step` (cgn, disc, perc, binary, adv,
      opt_g, opt_d).
    x_gt: (B, 3, 32, 32) real images in [-1, 1]; y_gt: (B,) labels.
    y_gen: (B,) generated labels (upstream: torch.randint in the loop).
    u: optional (B, latent) noise; crops: optional shuffler offsets (see
      `CGN.forward`); None draws them as upstream.

  Returns:
    dict of the outputs (mask, foreground, background, x_gen, validity,
    validity_real, validity_fake) and the loss tensors loss_g_adv,
    loss_g_binary, loss_g_perc, loss_g, loss_d_real, loss_d_fake, loss_d.
  """
  cgn, disc, opt_g, opt_d = (models[k] for k in
                             ("cgn", "disc", "opt_g", "opt_d"))
  l_adv = models["adv"]
  valid = torch.ones(len(y_gt),).to(x_gt.device)
  fake = torch.zeros(len(y_gt),).to(x_gt.device)

  # Generator.
  opt_g.zero_grad()
  mask, foreground, background = cgn(y_gen, u=u, crops=crops)
  x_gen = mask * foreground + (1 - mask) * background
  validity = disc(x_gen, y_gen)
  losses_g = {"adv": l_adv(validity, valid),
              "binary": models["binary"](mask),
              "perc": models["perc"](x_gen, x_gt)}
  loss_g = sum(losses_g.values())
  loss_g.backward()
  opt_g.step()

  # Discriminator.
  opt_d.zero_grad()
  validity_real = disc(x_gt, y_gt)
  validity_fake = disc(x_gen.detach(), y_gen)
  losses_d = {"real": l_adv(validity_real, valid),
              "fake": l_adv(validity_fake, fake)}
  loss_d = sum(losses_d.values()) / 2
  loss_d.backward()
  opt_d.step()

  out = dict(mask=mask, foreground=foreground, background=background,
             x_gen=x_gen, validity=validity, validity_real=validity_real,
             validity_fake=validity_fake, loss_g=loss_g, loss_d=loss_d)
  out.update({f"loss_g_{k}": v for k, v in losses_g.items()})
  out.update({f"loss_d_{k}": v for k, v in losses_d.items()})
  return out


# ---------------------------------------------------------------------------
# Upstream's on-the-fly training data (SPEC §1.2-1.4), for end-to-end timing.

DC_PALETTE = [(0, 100, 0), (0, 0, 139), (176, 48, 96), (255, 69, 0),
              (255, 255, 0), (222, 184, 135), (0, 255, 0), (0, 255, 255),
              (255, 0, 255), (100, 149, 237)]


def _read_idx(path):
  import gzip  # pylint: disable=g-import-not-at-top
  with gzip.open(path, "rb") as f:
    data = f.read()
  ndim = data[3]
  shape = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big")
           for i in range(ndim)]
  return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(shape)


class UpstreamTrainSet(torch.utils.data.Dataset):
  """Double-colored or Wildlife MNIST train images rendered per access.

  As upstream's datasets: MNIST train[:50000]; the digit is resized 28->32
  (nearest) and binarised (> 0.1); double-colored draws both colours from the label with
  N(0, 0.01^2) noise per channel; wildlife crops 32x32 from the label's
  textures (resized to 150x150 nearest, reflect-padded by 3) with a fresh
  random offset per access. Returns ([3, 32, 32] in [-1, 1], label).
  """

  def __init__(self, variant, mnist_dir, textures_dir=None):
    import os  # pylint: disable=g-import-not-at-top
    self.variant = variant
    # Upstream trains on MNIST train[:50000] (train[50000:] is its test set).
    self.digits = torch.from_numpy(_read_idx(
        os.path.join(mnist_dir, "train-images-idx3-ubyte.gz"))[:50_000].copy())
    self.labels = torch.from_numpy(_read_idx(
        os.path.join(mnist_dir, "train-labels-idx1-ubyte.gz"))[:50_000].astype(
            np.int64))
    if variant == "wildlife":
      from PIL import Image  # pylint: disable=g-import-not-at-top
      self.textures = {}
      for sub in ("object", "background"):
        names = sorted(os.listdir(os.path.join(textures_dir, sub)))
        self.textures[sub] = [
            torch.from_numpy(np.pad(np.asarray(Image.open(
                os.path.join(textures_dir, sub, n)).convert("RGB").resize(
                    (150, 150), Image.NEAREST)), ((3, 3), (3, 3), (0, 0)),
                                    mode="reflect").copy()).permute(2, 0, 1)
            for n in names]
    elif variant != "double_colored":
      raise ValueError(f"no upstream loader for {variant!r}")

  def __len__(self):
    return len(self.labels)

  def _crop(self, sub, y):
    t = self.textures[sub][y]
    i, j = np.random.randint(0, t.shape[1] - 32 + 1, 2)
    return (t[:, i:i + 32, j:j + 32].float() / 255 - 0.5) / 0.5

  def __getitem__(self, idx):
    y = int(self.labels[idx])
    digit = self.digits[idx].float()[None, None] / 255
    mask = (F.interpolate(digit, size=32)[0] > 0.1).float()  # [1, 32, 32]
    if self.variant == "double_colored":
      colors = []
      for k in (y, (y + 4) % 10):  # background, then object
        c = torch.tensor(DC_PALETTE[k], dtype=torch.float32)[:, None, None]
        colors.append(c / 255 + 0.01 * torch.randn(3, 1, 1))
      bg, fg = colors
      x = (mask * fg + (1 - mask) * bg - 0.5) / 0.5
    else:
      x = mask * self._crop("object", y) + (1 - mask) * self._crop(
          "background", y)
    return x, y


def upstream_loader(variant, batch, mnist_dir, textures_dir=None,
                    workers=12):
  """Upstream's train loader: shuffled, `workers` processes (its yaml: 12)."""
  return torch.utils.data.DataLoader(
      UpstreamTrainSet(variant, mnist_dir, textures_dir), batch_size=batch,
      shuffle=True, num_workers=workers, drop_last=True,
      persistent_workers=workers > 0)


def _forever(loader):
  while True:
    yield from loader


class CNN(nn.Module):
  """The upstream MNIST classifier (SPEC §3.2)."""

  def __init__(self, num_classes=10):
    super().__init__()
    self.model = nn.Sequential(
        nn.BatchNorm2d(3),
        nn.Conv2d(3, 32, kernel_size=5, stride=1, padding=2),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
        nn.Conv2d(32, 32, kernel_size=3, stride=1, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(32, 64, kernel_size=3, stride=2, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(64, 64, kernel_size=3, stride=1, padding=1),
        nn.ReLU(inplace=True),
        nn.AvgPool2d(7),
        nn.Flatten(),
    )
    self.cls = nn.Sequential(nn.Linear(64, num_classes),
                             nn.LogSoftmax(dim=1))

  def forward(self, x):
    return self.cls(self.model(x))


def build_classifier_step(batch, device, logging=True):
  """Returns a closure running one upstream classifier training step.

  Args:
    batch: images per step (upstream: 64).
    device: torch.device.
    logging: count correct predictions with `.item()` like upstream.

  Returns:
    (step, model).
  """
  model = CNN().to(device).train()
  opt = torch.optim.Adadelta(model.parameters(), lr=1.0)
  data = torch.rand(batch, 3, 32, 32, device=device) * 2 - 1
  target = torch.randint(10, (batch,), device=device)
  correct = [0]

  def step():
    opt.zero_grad()
    output = model(data)
    loss = F.nll_loss(output, target)
    loss.backward()
    opt.step()
    if logging:
      pred = output.argmax(dim=1, keepdim=True)
      correct[0] += pred.eq(target.view_as(pred)).sum().item()
    return loss

  return step, model


# ---------------------------------------------------------------------------
# Timing.


def _time(step, device, steps, warmup):
  sync = (torch.cuda.synchronize if device.type == "cuda"
          else (lambda: None))
  for _ in range(warmup):
    step()
  sync()
  times = []
  for _ in range(steps):
    sync()
    t0 = time.perf_counter()
    step()
    sync()
    times.append(time.perf_counter() - t0)
  return times


def _record(name, device, batch, times, extra):
  median = statistics.median(times)
  return {
      "name": name,
      "backend": f"torch-{device.type}",
      "device": (torch.cuda.get_device_name(device)
                 if device.type == "cuda" else "cpu"),
      "batch": batch,
      "repeats": len(times),
      "median_s": median,
      "min_s": min(times),
      "max_s": max(times),
      "it_per_s": 1.0 / median,
      "img_per_s": batch / median,
      "torch_version": torch.__version__,
      "num_threads": torch.get_num_threads(),
      **extra,
  }


def main(argv=None):
  """Command line; prints one JSON record per (config, batch)."""
  parser = argparse.ArgumentParser(
      description="Times the upstream PyTorch MNIST CGN training iteration "
      "(G step + D step) and the classifier step.")
  parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
  parser.add_argument("--batch", type=int, nargs="+", default=[16, 64])
  parser.add_argument("--configs", nargs="+", default=list(CONFIGS),
                      choices=list(CONFIGS))
  parser.add_argument("--steps", type=int, default=50,
                      help="timed iterations per benchmark")
  parser.add_argument("--warmup", type=int, default=3,
                      help="untimed iterations first")
  parser.add_argument("--no-classifier", action="store_true")
  parser.add_argument("--no-logging", action="store_true",
                      help="skip upstream's per-step loss formatting syncs")
  parser.add_argument("--threads", type=int, default=None,
                      help="torch.set_num_threads (default: torch's own)")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument(
      "--end-to-end", action="store_true",
      help="also time double_colored and wildlife at batch 16 with the real "
      "batch drawn from upstream's on-the-fly loader (needs MNIST in "
      "CGN_MNIST_DIR and the textures in CGN_TEXTURES_DIR)")
  parser.add_argument("--workers", type=int, default=12,
                      help="loader processes for --end-to-end (upstream: 12)")
  parser.add_argument("--json", metavar="FILE", help="write all records here")
  args = parser.parse_args(argv)

  if args.device == "cuda" and not torch.cuda.is_available():
    parser.error("--device cuda but torch.cuda.is_available() is False; "
                 "install a CUDA build of torch or use --device cpu")
  if args.steps < 1:
    parser.error("--steps must be >= 1")
  device = torch.device(args.device)
  if args.threads is not None:
    torch.set_num_threads(args.threads)
  torch.manual_seed(args.seed)
  logging = not args.no_logging

  jobs = [(f"torch_cgn_mnist_train/{c}/b{b}",
           lambda c=c, b=b: build_cgn_step(c, b, device, logging)[0], b,
           {"config": c})
          for c in args.configs for b in args.batch]
  if not args.no_classifier:
    jobs.append((f"torch_classifier_train/b{CLASSIFIER_BATCH}",
                 lambda: build_classifier_step(CLASSIFIER_BATCH, device,
                                               logging)[0],
                 CLASSIFIER_BATCH, {}))
  if args.end_to_end:
    import os  # pylint: disable=g-import-not-at-top
    mnist_dir = os.environ.get("CGN_MNIST_DIR", "../shared/data/mnist")
    textures_dir = os.environ.get(
        "CGN_TEXTURES_DIR", "../shared/data/cgn_upstream/textures")
    for c in ("double_colored", "wildlife"):
      jobs.append((
          f"torch_cgn_mnist_epoch/{c}",
          lambda c=c: build_cgn_step(c, 16, device, logging, loader=(
              upstream_loader(c, 16, mnist_dir, textures_dir,
                              args.workers)))[0],
          16, {"config": c, "loader_workers": args.workers}))
  records = []
  for name, build, batch, extra in jobs:
    times = _time(build(), device, args.steps, args.warmup)
    rec = _record(name, device, batch, times,
                  {"logging": logging, **extra})
    records.append(rec)
    print(json.dumps(rec), flush=True)
    if args.json:  # rewrite after each record so a crash keeps the rest
      with open(args.json, "w") as f:
        json.dump(records, f, indent=1)
    if device.type == "cuda":
      torch.cuda.empty_cache()
  return 0


if __name__ == "__main__":
  sys.exit(main())
