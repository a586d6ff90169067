"""BigGAN-deep generator (Brock et al., 2019): pytorch-pretrained-biggan port.

Mirrors `pytorch_pretrained_biggan/model.py` (package version 0.1.1, the code
the CGN authors copied into `imagenet/models/biggan.py`; SPEC §4.2, NOTES
§11) so that its released `biggan-deep-{128,256,512}` weights convert exactly
(`python -m converters biggan`).

Variable layout (the contract with `converters/biggan.py`; torch key ->
Flax path, with `.N.` -> `/layers_N/`):

  params/embeddings/kernel               embeddings.weight (transposed)
  params/.../kernel, .../bias            *.weight_orig (Dense: .T, conv:
                                         HWIO), *.bias
  spectral/.../u, spectral/.../v         *.weight_u, *.weight_v (conv v
                                         re-flattened over (kh, kw, I))
  batch_stats/.../running_means|vars     BigGANBatchNorm buffers (n_stats, C)
  params/generator/bn/scale|bias         generator.bn.weight|bias
  params/generator/layers_K/gamma        the attention layer's gamma

Behaviour matches the package: conditional BatchNorm never uses batch
statistics (train or eval) but the stored per-truncation statistics; the
only train-mode difference is spectral norm, which then runs one power
iteration and updates `spectral` (pass `mutable=['spectral']`).

Truncation-dependent statistics (`bn_interpolation`):
  'package' (default, for parity): with c, k = modf(truncation / step), the
    package uses c * stats[k] + (1 - c) * stats[k + 1], weights swapped
    w.r.t. linear interpolation (SPEC §10.17). Float error in the division
    then selects a neighbouring slot for some truncations that are multiples
    of the step: 0.14 and 0.28 and 0.56 pick t + 0.02, 0.58 and 0.94 pick
    t - 0.02 (0.3 and 0.4 are exact).
  'exact': round truncation * (n_stats - 1) to a slot when it is within 1e-9
    of one, otherwise (1 - f) * stats[k] + f * stats[k + 1].
"""

import copy
import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from cgn_jax.models import spectral_norm as sn

_F, _T = False, True
_LAYERS_128 = ((_F, 16, 16), (_T, 16, 16), (_F, 16, 16), (_T, 16, 8),
               (_F, 8, 8), (_T, 8, 4), (_F, 4, 4), (_T, 4, 2), (_F, 2, 2),
               (_T, 2, 1))
_LAYERS_256 = ((_F, 16, 16), (_T, 16, 16), (_F, 16, 16), (_T, 16, 8),
               (_F, 8, 8), (_T, 8, 8), (_F, 8, 8), (_T, 8, 4), (_F, 4, 4),
               (_T, 4, 2), (_F, 2, 2), (_T, 2, 1))
_LAYERS_512 = _LAYERS_256 + ((_F, 1, 1), (_T, 1, 1))


def _package_config(output_dim, layers):
  return dict(output_dim=output_dim, z_dim=128, class_embed_dim=128,
              channel_width=128, num_classes=1000, layers=layers,
              attention_layer_position=8, eps=1e-4, n_stats=51)


# The fields of the package's `BigGANConfig`, as in its released
# `biggan-deep-*-config.json` (written from `convert_tf_to_pytorch.py`).
BIGGAN_CONFIGS = {
    "biggan-deep-128": _package_config(128, _LAYERS_128),
    "biggan-deep-256": _package_config(256, _LAYERS_256),
    "biggan-deep-512": _package_config(512, _LAYERS_512),
}
BN_INTERPOLATIONS = ("package", "exact")


def get_config(name_or_config, **overrides) -> dict:
  """A BigGANConfig-style dict from a name, a dict or a package json dict.

  Args:
    name_or_config: a key of BIGGAN_CONFIGS, or a dict with the package's
      BigGANConfig fields (e.g. `json.load` of its config.json).
    **overrides: fields to replace (e.g. `channel_width=8` for tests).

  Returns:
    A new dict with every BigGANConfig field; `layers` as tuples.
  """
  if isinstance(name_or_config, str):
    if name_or_config not in BIGGAN_CONFIGS:
      raise ValueError(f"unknown BigGAN config {name_or_config!r}; choose "
                       f"one of {sorted(BIGGAN_CONFIGS)} or pass a dict")
    config = copy.deepcopy(BIGGAN_CONFIGS[name_or_config])
  else:
    config = dict(_package_config(128, _LAYERS_128), **name_or_config)
  config.update(overrides)
  config["layers"] = tuple(
      (bool(up), int(i), int(o)) for up, i, o in config["layers"])
  return config


def reduced_config(name: str = "biggan-deep-128", channel_width: int = 8,
                   num_classes: int = 1000, z_dim: int = 128) -> dict:
  """A narrow config with the same structure as `name`, for tests."""
  return get_config(name, channel_width=channel_width,
                    num_classes=num_classes, z_dim=z_dim,
                    class_embed_dim=z_dim)


def bn_stat_weights(truncation: float, n_stats: int,
                    mode: str = "package") -> tuple:
  """Which stored BN-stat slots a truncation uses, and their weights.

  Args:
    truncation: static Python float in (0, 1].
    n_stats: number of stored slots (51: a step of 0.02).
    mode: 'package' (the released code's swapped weights) or 'exact'.

  Returns:
    ((slot, weight), ...) with one or two entries.
  """
  if mode == "package":
    coef, start = math.modf(truncation / (1.0 / (n_stats - 1)))
    start = int(start)
    if coef == 0.0:
      return ((start, 1.0),)
    return ((start, coef), (start + 1, 1 - coef))
  if mode == "exact":
    pos = truncation * (n_stats - 1)
    if abs(pos - round(pos)) < 1e-9:
      return ((int(round(pos)), 1.0),)
    k = int(math.floor(pos))
    return ((k, 1 - (pos - k)), (k + 1, pos - k))
  raise ValueError(f"bn_interpolation must be one of {BN_INTERPOLATIONS}, "
                   f"got {mode!r}")


class BigGANBatchNorm(nn.Module):
  """BatchNorm with stored per-truncation statistics (`BigGANBatchNorm`).

  Conditional: (x - mean) / sqrt(var + eps) * (1 + scale(cond)) +
  offset(cond), scale/offset spectral-norm Dense layers without bias.
  Unconditional: the same with learned `scale`/`bias` params.
  """
  n_stats: int = 51
  eps: float = 1e-4
  conditional: bool = True
  bn_interpolation: str = "package"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, truncation, cond=None, *, update=False):
    c = x.shape[-1]
    means = self.variable("batch_stats", "running_means", jnp.zeros,
                          (self.n_stats, c), jnp.float32).value
    variances = self.variable("batch_stats", "running_vars", jnp.ones,
                              (self.n_stats, c), jnp.float32).value
    slots = bn_stat_weights(truncation, self.n_stats, self.bn_interpolation)
    # Same products and sum order as the package (float32 weights).
    mean = sum(means[k] * w for k, w in slots)
    var = sum(variances[k] * w for k, w in slots)
    if self.conditional:
      weight = 1 + sn.SNDense(c, use_bias=False, eps=self.eps,
                              dtype=self.dtype, name="scale")(
                                  cond, update=update)
      bias = sn.SNDense(c, use_bias=False, eps=self.eps, dtype=self.dtype,
                        name="offset")(cond, update=update)
      weight, bias = weight[:, None, None, :], bias[:, None, None, :]
    else:
      weight = self.param("scale", nn.initializers.ones, (c,), jnp.float32)
      bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
    x = x.astype(self.dtype)
    std = jnp.sqrt(var + self.eps)
    if self.conditional:
      return ((x - mean.astype(self.dtype)) / std.astype(self.dtype) * weight
              + bias)
    # torch's eval batch_norm folds the stats into a per-channel affine map.
    a = weight / std
    return x * a.astype(self.dtype) + (bias - mean * a).astype(self.dtype)


def _upsample(x):
  """Nearest x2 (F.interpolate(scale_factor=2)), NHWC."""
  return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


class GenBlock(nn.Module):
  """BigGAN-deep residual bottleneck block (`GenBlock`)."""
  out_size: int
  up_sample: bool
  reduction_factor: int = 4
  n_stats: int = 51
  eps: float = 1e-4
  bn_interpolation: str = "package"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, cond, truncation, *, update=False):
    in_size = x.shape[-1]
    mid = in_size // self.reduction_factor
    x0 = x
    for i, (features, k) in enumerate(
        ((mid, 1), (mid, 3), (mid, 3), (self.out_size, 1))):
      x = BigGANBatchNorm(self.n_stats, self.eps, True, self.bn_interpolation,
                          self.dtype, name=f"bn_{i}")(
                              x, truncation, cond, update=update)
      x = nn.relu(x)
      if i == 1 and self.up_sample:
        x = _upsample(x)
      x = sn.SNConv(features, (k, k), eps=self.eps, dtype=self.dtype,
                    name=f"conv_{i}")(x, update=update)
    if in_size != self.out_size:
      x0 = x0[..., :in_size // 2]  # the package drops, not projects
    if self.up_sample:
      x0 = _upsample(x0)
    return x + x0.astype(x.dtype)


class SelfAttn(nn.Module):
  """SAGAN self-attention with max-pooled keys/values (`SelfAttn`)."""
  eps: float = 1e-4
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, update=False):
    b, h, w, ch = x.shape

    def conv(features, name):
      return sn.SNConv(features, (1, 1), use_bias=False, eps=self.eps,
                       dtype=self.dtype, name=name)

    def pool(y):
      return nn.max_pool(y, (2, 2), (2, 2)).reshape(b, h * w // 4, -1)

    theta = conv(ch // 8, "snconv1x1_theta")(x, update=update)
    phi = pool(conv(ch // 8, "snconv1x1_phi")(x, update=update))
    g = pool(conv(ch // 2, "snconv1x1_g")(x, update=update))
    logits = jnp.einsum("bqc,bkc->bqk", theta.reshape(b, h * w, -1), phi)
    attn = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
    attn_g = jnp.einsum("bqk,bkc->bqc", attn.astype(self.dtype), g)
    o = conv(ch, "snconv1x1_o_conv")(attn_g.reshape(b, h, w, ch // 2),
                                     update=update)
    gamma = self.param("gamma", nn.initializers.zeros, (1,), jnp.float32)
    return x.astype(self.dtype) + gamma.astype(self.dtype) * o


class Generator(nn.Module):
  """BigGAN-deep `Generator`: cond (B, 2 z_dim) -> NHWC image and features."""
  channel_width: int = 128
  layers: Sequence[tuple] = _LAYERS_256
  attention_layer_position: int = 8
  n_stats: int = 51
  eps: float = 1e-4
  bn_interpolation: str = "package"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, cond, truncation, *, update=False):
    ch = self.channel_width
    feats = {}
    z = sn.SNDense(4 * 4 * 16 * ch, eps=self.eps, dtype=self.dtype,
                   name="gen_z")(cond, update=update)
    # The package views gen_z as (B, 4, 4, C) (TF layout), i.e. NHWC already.
    z = z.reshape(-1, 4, 4, 16 * ch)
    feats["gen_z"] = z
    idx = 0
    for i, (up, _, out) in enumerate(self.layers):
      if i == self.attention_layer_position:
        z = SelfAttn(self.eps, self.dtype, name=f"layers_{idx}")(
            z, update=update)
        feats[f"layers_{idx}"] = z
        idx += 1
      z = GenBlock(ch * out, bool(up), n_stats=self.n_stats, eps=self.eps,
                   bn_interpolation=self.bn_interpolation, dtype=self.dtype,
                   name=f"layers_{idx}")(z, cond, truncation, update=update)
      feats[f"layers_{idx}"] = z
      idx += 1
    z = BigGANBatchNorm(self.n_stats, self.eps, False, self.bn_interpolation,
                        self.dtype, name="bn")(z, truncation)
    z = nn.relu(z)
    z = sn.SNConv(ch, (3, 3), eps=self.eps, dtype=self.dtype,
                  name="conv_to_rgb")(z, update=update)
    logits = z[..., :3].astype(jnp.float32)
    feats["logits"] = logits
    return jnp.tanh(logits), feats


class BigGAN(nn.Module):
  """BigGAN-deep (`BigGAN`): (z, class vector) -> (image NHWC in [-1, 1], aux).

  Build one from a config with `BigGAN.from_config('biggan-deep-256')`.

  Attributes:
    z_dim: noise size; the class embedding has the same size.
    channel_width: ch; block widths are ch * the `layers` multipliers.
    num_classes: size of the (soft) one-hot class vector.
    layers: ((up_sample, in_mult, out_mult), ...) per GenBlock.
    attention_layer_position: index in `layers` before which SelfAttn sits.
    n_stats: stored BN-stat slots over truncation in [0, 1].
    eps: BatchNorm and spectral-norm epsilon.
    bn_interpolation: 'package' (default, parity) or 'exact'; see module doc.
    dtype: compute dtype (params, stats and u/v stay float32).
  """
  z_dim: int = 128
  channel_width: int = 128
  num_classes: int = 1000
  layers: Sequence[tuple] = _LAYERS_256
  attention_layer_position: int = 8
  n_stats: int = 51
  eps: float = 1e-4
  bn_interpolation: str = "package"
  dtype: Any = jnp.float32

  @classmethod
  def from_config(cls, name_or_config, **kwargs) -> "BigGAN":
    """The model of a BIGGAN_CONFIGS name or BigGANConfig-style dict.

    Args:
      name_or_config: see `get_config`.
      **kwargs: module options that are not config fields (`dtype`,
        `bn_interpolation`).
    """
    c = get_config(name_or_config)
    return cls(z_dim=c["z_dim"], channel_width=c["channel_width"],
               num_classes=c["num_classes"], layers=c["layers"],
               attention_layer_position=c["attention_layer_position"],
               n_stats=c["n_stats"], eps=c["eps"], **kwargs)

  @nn.compact
  def __call__(self, z, class_vector, truncation: float, *,
               train: bool = False):
    """Generates images.

    Args:
      z: [B, z_dim] noise (the package samples truncation * TruncNormal(-2,
        2)).
      class_vector: [B, num_classes] (soft) one-hot, or [B] int labels.
      truncation: static Python float in (0, 1]; selects the BN statistics.
      train: run spectral norm's power iteration and update `spectral`
        (needs `mutable=['spectral']`), as torch's `train()` mode does.

    Returns:
      (image [B, H, W, 3] float32 in [-1, 1], aux) where aux holds `cond`
      ([B, 2 z_dim]), `gen_z`, every `layers_i` output, and `logits` (the
      pre-tanh image).
    """
    if not isinstance(truncation, (int, float)):
      raise TypeError("truncation must be a static Python float (it picks "
                      f"stored BN statistics), got {type(truncation)}")
    if not 0 < truncation <= 1:
      raise ValueError(f"truncation must be in (0, 1], got {truncation}")
    if jnp.issubdtype(class_vector.dtype, jnp.integer):
      class_vector = jax.nn.one_hot(class_vector, self.num_classes)
    embed = nn.Dense(self.z_dim, use_bias=False, dtype=self.dtype,
                     param_dtype=jnp.float32, name="embeddings")(
                         class_vector.astype(jnp.float32))
    cond = jnp.concatenate([z.astype(self.dtype), embed], axis=-1)
    image, feats = Generator(
        self.channel_width, tuple(self.layers), self.attention_layer_position,
        self.n_stats, self.eps, self.bn_interpolation, self.dtype,
        name="generator")(cond, float(truncation), update=train)
    return image, {"cond": cond, **feats}


def random_variables(model: BigGAN, seed: int = 0) -> dict:
  """Random variables of `model`, without compiling `model.init`.

  For benchmarks and smoke runs: `jax.jit(model.init)` of a BigGAN-deep
  compiles for minutes on CPU (hundreds of RNG calls in one program). Here
  the shapes come from `jax.eval_shape`, the values from numpy, and one
  `device_put` moves them to the default device. Kernels are N(0, 1/fan_in),
  u and v random unit vectors, biases and gamma zero, BN scales and
  variances one, means zero.

  Args:
    model: a BigGAN module.
    seed: numpy seed.

  Returns:
    {'params', 'spectral', 'batch_stats'} with the shapes of `model.init`.
  """
  abstract = jax.eval_shape(lambda: model.init(
      jax.random.PRNGKey(0), jnp.zeros((1, model.z_dim)),
      jnp.zeros((1, model.num_classes)), 1.0))
  rng = np.random.default_rng(seed)

  def make(path, leaf):
    name = getattr(path[-1], "key", "")
    if name in ("kernel", "u", "v"):
      x = rng.standard_normal(leaf.shape, np.float32)
      if name == "kernel":
        return x / np.float32(math.sqrt(math.prod(leaf.shape[:-1])))
      return x / np.linalg.norm(x)
    if name in ("scale", "running_vars"):
      return np.ones(leaf.shape, np.float32)
    return np.zeros(leaf.shape, np.float32)

  return jax.device_put(jax.tree_util.tree_map_with_path(make, abstract))
