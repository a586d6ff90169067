"""U²-Net and U²-Netp (Qin et al., Pattern Recognition 2020) in Flax linen.

A port of `U2NET` / `U2NETP` from xuebinqin/U-2-Net `model/u2net.py` (the
file CGN copies as `imagenet/models/u2net.py`, SPEC §4.3). Submodule names
mirror the PyTorch attribute names, so the released state dicts map one to
one (see `converters/u2net.py`):

  stage1.rebnconvin.conv_s1.weight  ->  params/stage1/rebnconvin/conv_s1/kernel
  stage1.rebnconvin.bn_s1.weight    ->  params/stage1/rebnconvin/bn_s1/scale
  stage1.rebnconvin.bn_s1.running_* ->  batch_stats/stage1/rebnconvin/bn_s1/
                                        {mean,var}

Two details differ between the users of these weights and are fields here:
- `upsample`: CGN's copy resizes with `align_corners=True`
  ('align_corners', the default); the original repository calls
  `F.upsample(mode='bilinear')`, i.e. `align_corners=False` ('half_pixel').
  Both are torch-exact (cgn_jax/models/resize.py, NOTES P3).
- preprocessing: see `saliency_mask` (CGN) and `preprocess_original`.

Max-pooling uses torch's `ceil_mode=True`: odd maps are padded at the bottom
and right with -inf before a 2x2/2 VALID pool (NOTES P4). Convolutions use
explicit symmetric padding equal to the dilation.

BatchNorm runs on its running statistics by default (`train=False`), as in
CGN, which keeps U²-Net frozen in eval mode while gradients flow through it
to the generators. With `train=True` it normalises with batch statistics
and updates `batch_stats` (flax momentum 0.9 = torch momentum 0.1; note
that flax stores the biased batch variance where torch stores the unbiased
one, so training is not bit-compatible with torch).
"""

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from cgn_jax.models import resize

Dtype = Any

# (block, in, mid, out) for stage1..stage6, then stage5d..stage1d, as in the
# reference constructors (linen infers `in`; it documents the concat widths).
VARIANTS = {
    "u2net": dict(
        encoder=(("RSU7", 3, 32, 64), ("RSU6", 64, 32, 128),
                 ("RSU5", 128, 64, 256), ("RSU4", 256, 128, 512),
                 ("RSU4F", 512, 256, 512), ("RSU4F", 512, 256, 512)),
        decoder=(("RSU4F", 1024, 256, 512), ("RSU4", 1024, 128, 256),
                 ("RSU5", 512, 64, 128), ("RSU6", 256, 32, 64),
                 ("RSU7", 128, 16, 64))),
    "u2netp": dict(
        encoder=(("RSU7", 3, 16, 64), ("RSU6", 64, 16, 64),
                 ("RSU5", 64, 16, 64), ("RSU4", 64, 16, 64),
                 ("RSU4F", 64, 16, 64), ("RSU4F", 64, 16, 64)),
        decoder=(("RSU4F", 128, 16, 64), ("RSU4", 128, 16, 64),
                 ("RSU5", 128, 16, 64), ("RSU6", 128, 16, 64),
                 ("RSU7", 128, 16, 64))),
}

# ImageNet statistics of the original repository's `ToTensorLab(flag=0)`.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def max_pool_ceil(x):
  """torch `MaxPool2d(2, stride=2, ceil_mode=True)` on NHWC input."""
  pad_h, pad_w = x.shape[1] % 2, x.shape[2] % 2
  # -inf padding can never win a window that holds at least one real value.
  return nn.max_pool(x, (2, 2), strides=(2, 2),
                     padding=((0, pad_h), (0, pad_w)))


class REBNCONV(nn.Module):
  """3x3 conv (dilation d, padding d, with bias) -> BatchNorm -> ReLU."""
  out_ch: int
  dirate: int = 1
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    d = self.dirate
    x = nn.Conv(self.out_ch, (3, 3), padding=((d, d), (d, d)),
                kernel_dilation=(d, d), dtype=self.dtype,
                param_dtype=self.param_dtype, name="conv_s1")(x)
    # torch BatchNorm2d defaults: eps 1e-5, momentum 0.1 (flax 0.9).
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9,
                     epsilon=1e-5, dtype=self.dtype,
                     param_dtype=self.param_dtype, name="bn_s1")(x)
    return nn.relu(x)


class RSU(nn.Module):
  """Residual U-block RSU-L (L = `height` in 4..7) with pooled levels.

  Encoder convs 1..L-1 with a ceil-mode max-pool after each but the last,
  a dilation-2 bottom conv L, and decoder convs (L-1)d..1d that each take
  [deeper, skip] channel-concatenated and are upsampled to the next skip.
  """
  height: int
  mid_ch: int
  out_ch: int
  upsample: str = resize.ALIGN_CORNERS
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    conv = functools.partial(REBNCONV, dtype=self.dtype,
                             param_dtype=self.param_dtype)
    n = self.height
    hxin = conv(self.out_ch, name="rebnconvin")(x, train=train)
    skips = []
    hx = hxin
    for i in range(1, n):
      if i > 1:
        hx = max_pool_ceil(hx)
      hx = conv(self.mid_ch, name=f"rebnconv{i}")(hx, train=train)
      skips.append(hx)
    hx = conv(self.mid_ch, dirate=2, name=f"rebnconv{n}")(hx, train=train)
    for i in range(n - 1, 0, -1):
      skip = skips[i - 1]
      if hx.shape[1:3] != skip.shape[1:3]:
        hx = resize.resize_like(hx, skip.shape[1:3], self.upsample)
      out = self.out_ch if i == 1 else self.mid_ch
      hx = conv(out, name=f"rebnconv{i}d")(
          jnp.concatenate([hx, skip], axis=-1), train=train)
    return hx + hxin


class RSU4F(nn.Module):
  """RSU-4F: no pooling; dilations 1, 2, 4, 8 down and 4, 2, 1 up."""
  mid_ch: int
  out_ch: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    conv = functools.partial(REBNCONV, dtype=self.dtype,
                             param_dtype=self.param_dtype)
    hxin = conv(self.out_ch, name="rebnconvin")(x, train=train)
    hx1 = conv(self.mid_ch, 1, name="rebnconv1")(hxin, train=train)
    hx2 = conv(self.mid_ch, 2, name="rebnconv2")(hx1, train=train)
    hx3 = conv(self.mid_ch, 4, name="rebnconv3")(hx2, train=train)
    hx4 = conv(self.mid_ch, 8, name="rebnconv4")(hx3, train=train)
    cat = functools.partial(jnp.concatenate, axis=-1)
    hx3d = conv(self.mid_ch, 4, name="rebnconv3d")(cat([hx4, hx3]),
                                                   train=train)
    hx2d = conv(self.mid_ch, 2, name="rebnconv2d")(cat([hx3d, hx2]),
                                                   train=train)
    hx1d = conv(self.out_ch, 1, name="rebnconv1d")(cat([hx2d, hx1]),
                                                   train=train)
    return hx1d + hxin


class U2Net(nn.Module):
  """U²-Net ('u2net', 44.0M params) or U²-Netp ('u2netp', 1.13M).

  Attributes:
    variant: 'u2net' (full, used by CGN) or 'u2netp' (small).
    upsample: 'align_corners' (CGN's copy) or 'half_pixel' (the original
      repository, torch align_corners=False).
    dtype: compute dtype (e.g. jnp.bfloat16); outputs are float32.
    param_dtype: parameter dtype.
  """
  variant: str = "u2net"
  upsample: str = resize.ALIGN_CORNERS
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def _block(self, spec, name):
    kind, _, mid, out = spec
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype, name=name)
    if kind == "RSU4F":
      return RSU4F(mid, out, **kw)
    return RSU(int(kind[3:]), mid, out, upsample=self.upsample, **kw)

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    """Saliency of a batch of images.

    Args:
      x: [B, H, W, 3] images, preprocessed by the caller (see
        `saliency_mask` and `preprocess_original`). Any H, W >= 1.
      train: use batch statistics in BatchNorm and update `batch_stats`
        (then call `apply(..., mutable=['batch_stats'])`).

    Returns:
      (saliency, aux): saliency = sigmoid(d0), [B, H, W, 1] float32, the
      fused map; aux = {'logits': [d0, d1, ..., d6], 'side': [sigmoid(d1),
      ..., sigmoid(d6)]}, each [B, H, W, 1] float32 (d1..d6 are the side
      outputs upsampled to full size, d0 the 1x1 fusion of them).
    """
    if self.variant not in VARIANTS:
      raise ValueError(f"unknown U²-Net variant {self.variant!r}; use one of "
                       f"{sorted(VARIANTS)}")
    if self.upsample not in resize.MODES:
      raise ValueError(f"unknown upsample mode {self.upsample!r}; use one of "
                       f"{resize.MODES}")
    if x.ndim != 4 or x.shape[-1] != 3:
      raise ValueError(f"expected [B, H, W, 3] images, got {x.shape}")
    cfg = VARIANTS[self.variant]
    up = functools.partial(resize.resize_like, mode=self.upsample)
    x = x.astype(self.dtype)

    enc = []
    hx = x
    for i, spec in enumerate(cfg["encoder"], start=1):
      if i > 1:
        hx = max_pool_ceil(hx)
      hx = self._block(spec, f"stage{i}")(hx, train=train)
      enc.append(hx)

    # Decoder: stage{k}d takes [upsampled deeper output, encoder stage k].
    dec = {6: enc[5]}
    hx = enc[5]
    for k, spec in zip(range(5, 0, -1), cfg["decoder"]):
      skip = enc[k - 1]
      hx = up(hx, skip.shape[1:3])
      hx = self._block(spec, f"stage{k}d")(
          jnp.concatenate([hx, skip], axis=-1), train=train)
      dec[k] = hx

    conv = functools.partial(nn.Conv, 1, dtype=self.dtype,
                             param_dtype=self.param_dtype)
    size = x.shape[1:3]
    sides = []
    for k in range(1, 7):
      d = conv((3, 3), padding=((1, 1), (1, 1)), name=f"side{k}")(dec[k])
      sides.append(d if k == 1 else up(d, size))
    d0 = conv((1, 1), padding="VALID", name="outconv")(
        jnp.concatenate(sides, axis=-1))
    logits = [t.astype(jnp.float32) for t in [d0] + sides]
    aux = {"logits": logits, "side": [jax.nn.sigmoid(t) for t in logits[1:]]}
    return jax.nn.sigmoid(logits[0]), aux


@functools.lru_cache(maxsize=None)
def abstract_variables(variant: str = "u2net"):
  """Shapes of a variant's float32 variables (ShapeDtypeStructs).

  Traced, never computed; cached, so callers must not mutate the result.
  """
  model = U2Net(variant=variant)
  return jax.eval_shape(model.init, jax.random.key(0),
                        jax.ShapeDtypeStruct((1, 8, 8, 3), jnp.float32))


def init_variables(rng=0, variant: str = "u2net"):
  """Random {'params', 'batch_stats'} with PyTorch's default initialisation.

  Conv kernels and biases ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (torch's
  `Conv2d.reset_parameters`), BatchNorm scale 1, bias 0, mean 0, var 1.
  Drawn with numpy: `U2Net.init` on the full model is slow to trace and
  compile on a CPU (minutes), and U²-Net is only ever used pretrained; random
  weights serve tests and benchmarks.

  Args:
    rng: a jax PRNG key or an int seed.
    variant: 'u2net' or 'u2netp'.

  Returns:
    The variables dict (float32 jax arrays).
  """
  if not isinstance(rng, int):
    rng = int(jax.random.randint(rng, (), 0, np.iinfo(np.int32).max))
  rng = np.random.default_rng(rng)

  def fill(tree):
    out = {}
    for name, sub in tree.items():
      if isinstance(sub, dict) or not hasattr(sub, "shape"):
        out[name] = fill(sub)
        continue
      shape = sub.shape
      if "kernel" in tree:  # a conv: kernel and bias share torch's bound
        bound = 1.0 / np.sqrt(np.prod(tree["kernel"].shape[:-1]))
        value = rng.uniform(-bound, bound, shape)
      elif name in ("scale", "var"):
        value = np.ones(shape)
      else:  # BatchNorm bias and running mean
        value = np.zeros(shape)
      out[name] = jnp.asarray(value, jnp.float32)
    return out

  abstract = abstract_variables(variant)
  return {c: fill(dict(t)) for c, t in abstract.items()}


def saliency_mask(variables, images, *, variant: str = "u2net",
                  upsample: str = resize.ALIGN_CORNERS,
                  dtype: Dtype = jnp.float32):
  """CGN's use of U²-Net: saliency of raw [-1, 1] images (SPEC §4.1).

  CGN feeds the BigGAN output (256x256, in [-1, 1]) straight into the full
  U²-Net with `align_corners=True` upsampling: no resize to 320, no ImageNet
  normalisation, eval-mode BatchNorm. The result is sigmoid(d0); CGN then
  clamps the shape mask to [1e-4, 0.9999], which is left to the caller.
  Differentiable with respect to `images`.

  For a photograph, the original repository's preprocessing gives better
  masks: see `preprocess_original` (used by `python -m cgn_jax.sample u2net`).

  Args:
    variables: {'params', 'batch_stats'} (converted weights).
    images: [B, H, W, 3] in [-1, 1] (any size; CGN uses 256x256).
    variant: 'u2net' (CGN) or 'u2netp'.
    upsample: 'align_corners' (CGN) or 'half_pixel' (original repository).
    dtype: compute dtype.

  Returns:
    [B, H, W, 1] float32 saliency in [0, 1].
  """
  model = U2Net(variant=variant, upsample=upsample, dtype=dtype)
  saliency, _ = model.apply(variables, images)
  return saliency


def preprocess_original(images, size: int = 320):
  """The original U²-Net test-time preprocessing, for [0, 1] RGB images.

  xuebinqin/U-2-Net `u2net_test.py` resizes to 320x320 (`RescaleT`), divides
  by the image's maximum and normalises with the ImageNet mean and std
  (`ToTensorLab(flag=0)`). The resize here is antialiased bilinear, close to
  the repository's skimage resize.

  Args:
    images: [B, H, W, 3] floats in [0, 1].
    size: square target size (320 in the original repository).

  Returns:
    [B, size, size, 3] float32, ready for `U2Net(upsample='half_pixel')`.
  """
  images = jnp.asarray(images, jnp.float32)
  b, _, _, c = images.shape
  images = jax.image.resize(images, (b, size, size, c), "linear",
                            antialias=True)
  peak = jnp.max(images, axis=(1, 2, 3), keepdims=True)
  images = images / jnp.maximum(peak, 1e-8)
  mean = jnp.asarray(IMAGENET_MEAN, jnp.float32)
  std = jnp.asarray(IMAGENET_STD, jnp.float32)
  return (images - mean) / std


def param_count(variables) -> int:
  """Number of trainable parameters (the 'params' collection only)."""
  return sum(int(x.size) for x in jax.tree.leaves(variables["params"]))

