"""The MNIST Counterfactual Generative Network (SPEC §2.1-§2.3).

Mirrors `mnists/models/cgn.py` of autonomousvision/
counterfactual_generative_networks (commit 335bebd). Submodule and parameter
names follow the PyTorch state dict so that `converters/cgn_mnist.py` is a
short rule table: `f_shape.4.weight` <-> `f_shape/layers_4/kernel`, i.e. each
layer is named after its index in the upstream `nn.Sequential` (parameter-free
layers keep their index but own no variables).

Layout: NHWC. Upstream reshapes the Dense(42 -> 4096) output channels-first
to (64, 8, 8); here it is reshaped to (8, 8, 64) and the converter permutes the
Dense columns accordingly.

Variables: `params` and `batch_stats` (BatchNorm running statistics). RNG
streams: `noise` (the latent u and, in counterfactual mode, the label
permutations) and `shuffle` (the patch shuffler's offsets).

Inference form: `CGN(folded=True)` is the same model in eval mode with two
exact rewrites that halve its work (generation is conv-bound):
  * every BatchNorm (always the layer right after its conv, index i + 1)
    uses its running statistics, an affine map folded into the conv's
    kernel and bias by `fold_batchnorm(variables)`;
  * "nearest upsample x2, then 3x3 conv (padding 1)" is computed as four
    2x2 convs on the low-resolution input, one per output phase
    (`upsample_conv`): 16 instead of 36 multiply-adds per input pixel.
`CGN(folded=True).apply(fold_batchnorm(v), ..., train=False)` equals
`CGN().apply(v, ..., train=False)` to float rounding (tests/
test_cgn_inference.py); generation (`cgn_jax/counterfactuals/mnist.py`)
uses it.
"""

from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from cgn_jax.models import batchnorm
from cgn_jax.models import composer
from cgn_jax.models import initializers

MASK_MIN = 1e-4
MASK_MAX = 0.9999
_LEAK = 0.2
_EPS = 1e-5
_SAME = ((1, 1), (1, 1))
# Flax momentum is the decay of the running average: 1 - torch's 0.1.
_BN_MOMENTUM = 0.9

AUX_KEYS = ("mask", "foreground", "background", "premask", "fg_raw",
            "bg_raw", "y_shape", "y_fg", "y_bg")


def instance_norm(x: jax.Array, eps: float = _EPS) -> jax.Array:
  """torch InstanceNorm2d (no affine, no running stats) on NHWC input.

  Normalises each sample and channel over H, W with the biased variance.
  Computed in float32 because the shape mask's values reach ~12.
  """
  dtype = x.dtype
  x = x.astype(jnp.float32)
  mean = jnp.mean(x, axis=(1, 2), keepdims=True)
  var = jnp.mean(jnp.square(x - mean), axis=(1, 2), keepdims=True)
  return ((x - mean) * jax.lax.rsqrt(var + eps)).astype(dtype)


def upsample_nearest(x: jax.Array, factor: int = 2) -> jax.Array:
  """torch `nn.Upsample(scale_factor=2)` (nearest) on NHWC input."""
  return jnp.repeat(jnp.repeat(x, factor, axis=1), factor, axis=2)


def mask_from_premask(premask: jax.Array, channels: int = 3) -> jax.Array:
  """Clamps the raw shape output to [1e-4, 0.9999] and repeats it to RGB.

  There is no sigmoid upstream: gradients vanish wherever the instance-normed
  map lies outside the interval (SPEC §10 item 2). Kept for parity.

  Args:
    premask: [B, H, W, 1] raw `f_shape` output.
    channels: number of output channels.

  Returns:
    [B, H, W, channels] mask.
  """
  mask = jnp.clip(premask, MASK_MIN, MASK_MAX)
  return jnp.repeat(mask, channels, axis=-1)


def shuffle_offsets(rng: jax.Array, batch: int, size: int) -> jax.Array:
  """Per-sample crop offsets (dy, dx), each uniform over {0, ..., size}.

  Upstream tiles the texture 2x2 and takes a RandomCrop(size), whose offsets
  have size + 1 possible values (offset `size` equals offset 0).
  """
  return jax.random.randint(rng, (batch, 2), 0, size + 1)


def patch_shuffle(x: jax.Array, rng: jax.Array,
                  return_offsets: bool = False):
  """The upstream patch shuffler: Patch2Image(size, 2) + RandomCrop(size).

  A random crop of the 2x2 tiling at offset (dy, dx) is the cyclic shift
  `out[h, w] = x[(h + dy) % H, (w + dx) % W]` = `roll(x, (-dy, -dx))`, done
  here as one gather for the whole batch (no Python loop).

  Args:
    x: [B, H, W, C] textures (H == W).
    rng: PRNG key for the offsets.
    return_offsets: also return the [B, 2] offsets (dy, dx).

  Returns:
    [B, H, W, C] shifted textures (and the offsets if requested).
  """
  b, h, w, _ = x.shape
  offsets = shuffle_offsets(rng, b, h)
  rows = (jnp.arange(h)[None, :] + offsets[:, :1]) % h  # [B, H]
  cols = (jnp.arange(w)[None, :] + offsets[:, 1:]) % w  # [B, W]
  out = jnp.take_along_axis(x, rows[:, :, None, None], axis=1)
  out = jnp.take_along_axis(out, cols[:, None, :, None], axis=2)
  return (out, offsets) if return_offsets else out


# ------------------------------------------------------- inference form --


def _phase_taps(kernel, axis):
  """The two 2-tap kernels of a 3-tap kernel seen through x2 nearest upsampling.

  Output row 2i reads upsampled rows 2i-1, 2i, 2i+1 = input rows i-1, i, i
  (taps w0, w1 + w2); output row 2i+1 reads input rows i, i, i+1
  (taps w0 + w1, w2).
  """
  k0, k1, k2 = jnp.split(kernel, 3, axis=axis)
  return (jnp.concatenate([k0, k1 + k2], axis),
          jnp.concatenate([k0 + k1, k2], axis))


def _conv(x, kernel, padding):
  return jax.lax.conv_general_dilated(
      x, kernel.astype(x.dtype), (1, 1), padding,
      dimension_numbers=("NHWC", "HWIO", "NHWC"))


def upsample_conv(x: jax.Array, kernel: jax.Array,
                  bias: jax.Array) -> jax.Array:
  """conv3x3(pad 1)(nearest_upsample_x2(x)) + bias, without upsampling.

  Args:
    x: [B, H, W, Cin].
    kernel: [3, 3, Cin, Cout] HWIO.
    bias: [Cout].

  Returns:
    [B, 2H, 2W, Cout].
  """
  rows = []
  for a, ka in enumerate(_phase_taps(kernel, 0)):
    cols = [_conv(x, kab, ((1 - a, a), (1 - b, b)))
            for b, kab in enumerate(_phase_taps(ka, 1))]
    rows.append(jnp.stack(cols, axis=3))      # [B, H, W, 2 (b), C]
  out = jnp.stack(rows, axis=2)               # [B, H, 2 (a), W, 2 (b), C]
  n, h, _, w, _, c = out.shape
  return out.reshape(n, 2 * h, 2 * w, c) + bias.astype(out.dtype)


def _fold_bn(kernel, bias, params, stats):
  """Folds eval-mode BatchNorm into the conv before it: (kernel, bias)."""
  s = params["scale"] * jax.lax.rsqrt(stats["var"] + _EPS)
  b = 0.0 if bias is None else bias
  return kernel * s, (b - stats["mean"]) * s + params["bias"]


def fold_batchnorm(variables) -> dict:
  """`CGN` variables -> `CGN(folded=True)` variables ({'params'} only).

  Every BatchNorm `layers_{i}` of a mechanism (those with `batch_stats`)
  follows its conv `layers_{i-1}`; the pair becomes one conv with a folded
  kernel and bias, stored under the conv's name.
  """
  params = dict(variables["params"])
  for mech, stats in variables.get("batch_stats", {}).items():
    p = dict(params[mech])
    for bn in stats:
      conv = f"layers_{int(bn.split('_')[1]) - 1}"
      kernel, bias = _fold_bn(p[conv]["kernel"], p[conv].get("bias"),
                              p.pop(bn), stats[bn])
      p[conv] = {"kernel": kernel, "bias": bias}
    params[mech] = p
  return {"params": params}


class FoldedConv(nn.Module):
  """A conv with BatchNorm folded in; `upsample` fuses the x2 upsampling."""
  features: int
  upsample: bool
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    kernel = self.param("kernel", nn.initializers.lecun_normal(),
                        (3, 3, x.shape[-1], self.features))
    bias = self.param("bias", nn.initializers.zeros, (self.features,))
    x = x.astype(self.dtype)
    if self.upsample:
      return upsample_conv(x, kernel, bias)
    return _conv(x, kernel, _SAME) + bias.astype(x.dtype)


# ----------------------------------------------------------------- model --


class _Mechanism(nn.Module):
  """Shared fields of the three mechanisms."""
  ngf: int = 32
  init_sz: int = 8
  init_type: str = "orthogonal"
  init_gain: float = 0.1
  dtype: Any = jnp.float32
  folded: bool = False

  def _conv_bn(self, x, features, index, train, *, upsample,
               use_bias=False):
    """[upsample x2 ->] conv `layers_{index}` -> BatchNorm `layers_{i+1}`."""
    if self.folded:
      if train:
        raise ValueError("CGN(folded=True) is the eval-mode inference form; "
                         "train with CGN()")
      return FoldedConv(features, upsample, self.dtype,
                        name=f"layers_{index}")(x)
    if upsample:
      x = upsample_nearest(x)
    x = self._conv(x, features, f"layers_{index}", use_bias)
    return self._bn(x, train, f"layers_{index + 1}")

  def _dense(self, x, name):
    # Reshaped to NHWC (init_sz, init_sz, 2·ngf); the converter permutes the
    # columns of upstream's channels-first reshape.
    c = 2 * self.ngf
    x = nn.Dense(c * self.init_sz**2, dtype=self.dtype,
                 kernel_init=initializers.kernel_init(self.init_type,
                                                      self.init_gain),
                 bias_init=nn.initializers.zeros, name=name)(x)
    return x.reshape(x.shape[0], self.init_sz, self.init_sz, c)

  def _conv(self, x, features, name, use_bias=False):
    return nn.Conv(features, (3, 3), padding=((1, 1), (1, 1)),
                   use_bias=use_bias, dtype=self.dtype,
                   kernel_init=initializers.kernel_init(self.init_type,
                                                        self.init_gain),
                   bias_init=nn.initializers.zeros, name=name)(x)

  def _bn(self, x, train, name):
    return batchnorm.BatchNorm(
        use_running_average=not train, momentum=_BN_MOMENTUM, epsilon=_EPS,
        dtype=self.dtype,
        scale_init=initializers.batchnorm_scale_init(self.init_gain),
        bias_init=nn.initializers.zeros, name=name)(x)


class ShapeMechanism(_Mechanism):
  """`f_shape`: 42-d input -> [B, 32, 32, 1] instance-normed map (no clamp)."""

  @nn.compact
  def __call__(self, x, *, train: bool):
    x = self._dense(x, "layers_0")                       # 0 Linear, 1 Reshape
    x = instance_norm(x)                                 # 2
    # 3 Upsample, 4 Conv, 5 BatchNorm
    x = self._conv_bn(x, self.ngf, 4, train, upsample=True)
    x = nn.leaky_relu(x, _LEAK)                          # 6
    x = instance_norm(x)                                 # 7
    # 8 Upsample, 9 Conv, 10 BatchNorm
    x = self._conv_bn(x, 1, 9, train, upsample=True)
    x = nn.leaky_relu(x, _LEAK)                          # 11
    return instance_norm(x)                              # 12


class TextureMechanism(_Mechanism):
  """`f_text1`/`f_text2`: 42-d input -> [B, 32, 32, 3] tanh texture."""

  @nn.compact
  def __call__(self, x, *, train: bool):
    x = self._dense(x, "layers_0")                       # 0 Linear, 1 Reshape
    # 2 Upsample, 3 Conv, 4 BatchNorm
    x = self._conv_bn(x, 2 * self.ngf, 3, train, upsample=True)
    x = nn.leaky_relu(x, _LEAK)                          # 5
    # 6 Upsample, 7 Conv, 8 BatchNorm
    x = self._conv_bn(x, self.ngf, 7, train, upsample=True)
    x = nn.leaky_relu(x, _LEAK)                          # 9
    # 10 Conv (with bias), 11 BatchNorm
    x = self._conv_bn(x, 3, 10, train, upsample=False, use_bias=True)
    return jnp.tanh(x)                                   # 12


class CGN(nn.Module):
  """The MNIST CGN generator (659,992 parameters at the defaults).

  Attributes:
    n_classes: number of classes (label embedding is n_classes x n_classes).
    latent_sz: size of the noise u.
    ngf: generator width.
    img_sz: output size (32); the mechanisms start at img_sz // 4.
    init_type: 'orthogonal', 'normal', 'xavier' or 'kaiming' (SPEC §2.2).
    init_gain: the init gain (also the std of BatchNorm scales around 1).
    dtype: compute dtype of the convolutions and Dense layers (params stay
      float32; outputs are float32).
    folded: the eval-mode inference form (see the module docstring); its
      variables are `fold_batchnorm(variables)` of the plain model.
  """
  n_classes: int = 10
  latent_sz: int = 32
  ngf: int = 32
  img_sz: int = 32
  init_type: str = "orthogonal"
  init_gain: float = 0.1
  dtype: Any = jnp.float32
  folded: bool = False

  def setup(self):
    kw = dict(ngf=self.ngf, init_sz=self.img_sz // 4,
              init_type=self.init_type, init_gain=self.init_gain,
              dtype=self.dtype, folded=self.folded)
    self.label_emb = nn.Embed(self.n_classes, self.n_classes,
                              embedding_init=initializers.embedding_init())
    self.f_shape = ShapeMechanism(**kw)
    self.f_text1 = TextureMechanism(**kw)   # foreground
    self.f_text2 = TextureMechanism(**kw)   # background

  def _inp(self, u, y):
    # Upstream order: noise first, then the label embedding.
    return jnp.concatenate([u.astype(jnp.float32), self.label_emb(y)], -1)

  def shape(self, u, y, *, train: bool):
    """Raw `f_shape` output [B, H, W, 1] for noise u [B, latent] and y [B]."""
    return self.f_shape(self._inp(u, y), train=train).astype(jnp.float32)

  def foreground(self, u, y, *, train: bool):
    """Raw `f_text1` output [B, H, W, 3] (before the shuffler)."""
    return self.f_text1(self._inp(u, y), train=train).astype(jnp.float32)

  def background(self, u, y, *, train: bool):
    """Raw `f_text2` output [B, H, W, 3] (before the shuffler)."""
    return self.f_text2(self._inp(u, y), train=train).astype(jnp.float32)

  def mechanisms(self, u, y, *, train: bool):
    """All three mechanisms on one shared input (normal mode), raw outputs.

    Args:
      u: [B, latent_sz] noise.
      y: [B] int labels.
      train: batch statistics (and updates) vs running statistics.

    Returns:
      (premask [B,H,W,1], fg_raw [B,H,W,3], bg_raw [B,H,W,3]), before the
      clamp and the shuffler: what the golden parity files hold.
    """
    inp = self._inp(u, y)
    return tuple(m(inp, train=train).astype(jnp.float32)
                 for m in (self.f_shape, self.f_text1, self.f_text2))

  def render(self, u_shape, y_shape, u_fg, y_fg, u_bg, y_bg, *, train: bool,
             shuffle: bool = True):
    """Generates from explicit per-mechanism inputs (counterfactual use).

    The mask comes from (u_shape, y_shape), the foreground from (u_fg, y_fg)
    and the background from (u_bg, y_bg). Needs the 'shuffle' RNG stream when
    `shuffle` is True.

    Returns:
      (x_gen [B,H,W,3], aux) with aux keys `AUX_KEYS`.
    """
    premask = self.shape(u_shape, y_shape, train=train)
    fg_raw = self.foreground(u_fg, y_fg, train=train)
    bg_raw = self.background(u_bg, y_bg, train=train)
    return self._finish(premask, fg_raw, bg_raw, y_shape, y_fg, y_bg,
                        shuffle=shuffle)

  def _finish(self, premask, fg_raw, bg_raw, y_shape, y_fg, y_bg, *, shuffle):
    mask = mask_from_premask(premask)
    fg, bg = fg_raw, bg_raw
    if shuffle:
      k_fg, k_bg = jax.random.split(self.make_rng("shuffle"))
      fg, bg = patch_shuffle(fg_raw, k_fg), patch_shuffle(bg_raw, k_bg)
    x_gen = composer.compose(mask, fg, bg)
    aux = dict(mask=mask, foreground=fg, background=bg, premask=premask,
               fg_raw=fg_raw, bg_raw=bg_raw, y_shape=y_shape, y_fg=y_fg,
               y_bg=y_bg)
    return x_gen, aux

  def __call__(self, y, *, train: bool, counterfactual: bool = False,
               shuffle: bool = True):
    """Samples images for labels y (SPEC §2.3).

    Normal mode: one noise vector and label per sample feed all three
    mechanisms. Counterfactual mode: each mechanism draws its own noise; the
    foreground and background labels are two random permutations of y (the
    batch's own labels, as upstream), the mask keeps y.

    Args:
      y: [B] int labels.
      train: BatchNorm in training mode (batch statistics; pass
        `mutable=['batch_stats']` to apply) or eval mode (running stats).
      counterfactual: counterfactual mode.
      shuffle: run the patch shuffler (upstream always does, eval included).

    Returns:
      (x_gen [B, H, W, 3] in [-1, 1], aux dict with keys `AUX_KEYS`: 'mask'
      [B,H,W,3] (clamped, repeated), 'foreground'/'background' (shuffled),
      'premask' [B,H,W,1] (before the clamp), 'fg_raw'/'bg_raw' (before the
      shuffler), 'y_shape', 'y_fg', 'y_bg' [B]).
    """
    b = y.shape[0]
    key = self.make_rng("noise")
    if not counterfactual:
      u = jax.random.normal(key, (b, self.latent_sz))
      premask, fg_raw, bg_raw = self.mechanisms(u, y, train=train)
      return self._finish(premask, fg_raw, bg_raw, y, y, y, shuffle=shuffle)
    k_u, k_p1, k_p2 = jax.random.split(key, 3)
    u = jax.random.normal(k_u, (3, b, self.latent_sz))
    y_fg = y[jax.random.permutation(k_p1, b)]
    y_bg = y[jax.random.permutation(k_p2, b)]
    return self.render(u[0], y, u[1], y_fg, u[2], y_bg, train=train,
                       shuffle=shuffle)


def init_variables(model: CGN, rng: jax.Array, batch: int = 2):
  """Initial {'params', 'batch_stats'} of `model` (eval-mode trace)."""
  k_p, k_n, k_s = jax.random.split(rng, 3)
  y = jnp.zeros((batch,), jnp.int32)
  return model.init({"params": k_p, "noise": k_n, "shuffle": k_s}, y,
                    train=False)
