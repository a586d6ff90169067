"""The ImageNet Counterfactual Generative Network (SPEC §4.1).

Mirrors `imagenet/models/cgn.py` of autonomousvision/
counterfactual_generative_networks (commit 335bebd): four BigGAN-deep
generators and one U²-Net,

  biggan_gt  frozen, eval mode: the pseudo ground truth x_gt (no gradient);
  f_shape    trainable: premask; mask = clip(U²Net(premask), 1e-4, 0.9999);
  f_text     trainable: foreground (no patch shuffler on ImageNet);
  f_bg       trainable: background; background_mask = U²Net(background);
  u2net      frozen, eval-mode BatchNorm, but differentiable w.r.t. its input,
             so f_shape and f_bg get gradients through it;

  x_gen = mask * foreground + (1 - mask) * background.

Variables (the contract with `converters/cgn_imagenet.py`: the upstream
prefixes `biggan_GT.`, `f_shape.`, `f_text.`, `f_bg.`, `u2net.` become the
top-level submodules below, and inside each the BigGAN / U²-Net layout of
`models/biggan.py` / `models/u2net.py` applies unchanged):

  params/{biggan_gt,f_shape,f_text,f_bg,u2net}/...
  spectral/{biggan_gt,f_shape,f_text,f_bg}/...   spectral-norm u, v
  batch_stats/{biggan_gt,f_shape,f_text,f_bg,u2net}/...

Train mode (`train=True`, `mutable=['spectral']`) is upstream's `cgn.train()`:
the three trainable copies run one spectral-norm power iteration each and
update their u, v; `biggan_gt` and U²-Net stay in eval mode (upstream's
`train()` override). Conditional BatchNorm in BigGAN always uses stored
statistics, so spectral norm is the only train-mode difference.

Call forms (upstream's `forward(inp=None, ys=None)`):
  1. training draw: `u, y = training_draw(key, batch, truncation)` draws one
     class for the whole batch (upstream) and truncated-normal noise, then
     `model.apply(variables, u, y, truncation, train=True, ...)`;
  2. three classes: `model.apply(variables, u, (y_shape, y_text, y_bg), t)`
     with one shared noise u (counterfactuals);
  3. explicit: `model.apply(variables, u, y_vec, t)` where `y_vec` may be a
     soft one-hot [B, 1000] (class interpolation: the class embedding is
     linear in it).
"""

from typing import Any

from flax.core import FrozenDict
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from cgn_jax.models import biggan as biggan_lib
from cgn_jax.models import u2net as u2net_lib

MASK_MIN = 1e-4
MASK_MAX = 0.9999
GENERATORS = ("biggan_gt", "f_shape", "f_text", "f_bg")
MECHANISMS = ("f_shape", "f_text", "f_bg")  # the trainable copies
FROZEN = ("biggan_gt", "u2net")
OUTPUTS = ("x_gt", "premask", "mask", "foreground", "background",
           "background_mask", "x_gen")


def check_truncation(truncation) -> float:
  """Returns truncation as a float, or raises naming the valid range."""
  if not isinstance(truncation, (int, float)) or isinstance(truncation, bool):
    raise TypeError("truncation must be a static Python float in (0, 1] (it "
                    f"selects BigGAN's stored BN statistics), got "
                    f"{type(truncation).__name__}")
  if not 0 < truncation <= 1:
    raise ValueError(
        f"truncation must be in (0, 1], got {truncation}: BigGAN-deep stores "
        "BN statistics for truncations 0..1 only; set truncation to e.g. 1.0 "
        "(training) or 0.5 (counterfactual datasets)")
  return float(truncation)


def sample_noise(key, batch_size: int, truncation: float,
                 z_dim: int = 128) -> jax.Array:
  """u = truncation * TruncNormal(-2, 2), [B, z_dim] (upstream's scipy draw)."""
  truncation = check_truncation(truncation)
  return truncation * jax.random.truncated_normal(
      key, -2.0, 2.0, (batch_size, z_dim), jnp.float32)


def class_vector(y, batch_size: int, num_classes: int = 1000) -> jax.Array:
  """A class (int, [B] labels or a [C] / [B, C] soft vector) -> [B, C]."""
  y = jnp.asarray(y)
  if jnp.issubdtype(y.dtype, jnp.integer):
    y = jax.nn.one_hot(y, num_classes, dtype=jnp.float32)
  y = y.astype(jnp.float32)
  if y.shape[-1] != num_classes:
    raise ValueError(f"class vectors need {num_classes} entries, got shape "
                     f"{y.shape}")
  return jnp.broadcast_to(y, (batch_size, num_classes))


def training_draw(key, batch_size: int, truncation: float, *,
                  per_sample: bool = False, num_classes: int = 1000,
                  z_dim: int = 128):
  """The inputs of one training forward (upstream's `cgn()` with no args).

  Args:
    key: PRNG key.
    batch_size: B.
    truncation: in (0, 1].
    per_sample: draw a class per sample instead of upstream's one class for
      the whole batch (SPEC §10 item 21; identical at B = 1).
    num_classes: class count.
    z_dim: noise size.

  Returns:
    (u [B, z_dim], labels [B] int32): the same u and class go to all four
    generators.
  """
  k_y, k_u = jax.random.split(key)
  shape = (batch_size,) if per_sample else ()
  labels = jax.random.randint(k_y, shape, 0, num_classes, jnp.int32)
  labels = jnp.broadcast_to(labels, (batch_size,))
  return sample_noise(k_u, batch_size, truncation, z_dim), labels


def compose(mask, foreground, background):
  """x_gen = mask * foreground + (1 - mask) * background."""
  return mask * foreground + (1.0 - mask) * background


def mechanism_classes(ys, batch_size: int, num_classes: int):
  """One class or a (shape, texture, background) triple -> three [B, C]."""
  if isinstance(ys, (list, tuple)):
    if len(ys) != 3:
      raise ValueError("pass one class or three (shape, texture, "
                       f"background), got {len(ys)}")
    return tuple(class_vector(y, batch_size, num_classes) for y in ys)
  y = class_vector(ys, batch_size, num_classes)
  return y, y, y


def _outputs(x_gt, premask, mask, foreground, background, background_mask):
  return {"x_gt": jax.lax.stop_gradient(x_gt), "premask": premask,
          "mask": mask, "foreground": foreground, "background": background,
          "background_mask": background_mask,
          "x_gen": compose(mask, foreground, background)}


class ImageNetCGN(nn.Module):
  """Four BigGAN-deep generators and a U²-Net (see the module docstring).

  Attributes:
    biggan: a `biggan.BIGGAN_CONFIGS` name or a BigGANConfig-style mapping
      (a `flax.core.FrozenDict`, so the module stays hashable), e.g.
      `biggan.reduced_config('biggan-deep-256', channel_width=4)`.
    u2net_variant: 'u2net' (upstream) or 'u2netp' (tests, smoke runs).
    bn_interpolation: BigGAN's truncation-statistics rule ('package' for
      parity, 'exact'; see models/biggan.py).
    dtype: compute dtype (parameters and returned images stay float32).
    remat: in `fused_forward`, rematerialise each trainable generator and
      the U²-Net pass in the backward pass (less memory, about one more
      forward of compute).
  """
  biggan: Any = "biggan-deep-256"
  u2net_variant: str = "u2net"
  bn_interpolation: str = "package"
  dtype: Any = jnp.float32
  remat: bool = False

  @property
  def biggan_config(self) -> dict:
    return biggan_lib.get_config(
        self.biggan if isinstance(self.biggan, str) else dict(self.biggan))

  @property
  def num_classes(self) -> int:
    return self.biggan_config["num_classes"]

  @property
  def z_dim(self) -> int:
    return self.biggan_config["z_dim"]

  def setup(self):
    for name in GENERATORS:
      setattr(self, name, biggan_module(self))
    self.u2net = u2net_module(self)

  def _saliency(self, images):
    saliency, _ = self.u2net(images)  # eval-mode BatchNorm
    return saliency.astype(jnp.float32)

  def __call__(self, u, ys, truncation: float, *, train: bool = False):
    """Generates x_gt and the counterfactual composition.

    Args:
      u: [B, z_dim] noise, shared by the four generators.
      ys: the class of all three mechanisms (int, [B] labels or a (soft)
        one-hot [B, C]), or a sequence (shape, texture, background) of
        three such classes (x_gt uses the shape class, as upstream).
      truncation: static Python float in (0, 1].
      train: upstream's train mode: the trainable copies run spectral
        norm's power iteration (call with `mutable=['spectral']`).

    Returns:
      {x_gt, premask, foreground, background, x_gen: [B, H, W, 3] in [-1, 1];
       mask (clipped), background_mask: [B, H, W, 1]}, float32 NHWC. x_gt
      carries no gradient.
    """
    truncation = check_truncation(truncation)
    y_shape, y_text, y_bg = mechanism_classes(ys, u.shape[0],
                                              self.num_classes)

    x_gt, _ = self.biggan_gt(u, y_shape, truncation, train=False)
    premask, _ = self.f_shape(u, y_shape, truncation, train=train)
    foreground, _ = self.f_text(u, y_text, truncation, train=train)
    background, _ = self.f_bg(u, y_bg, truncation, train=train)
    mask = jnp.clip(self._saliency(premask), MASK_MIN, MASK_MAX)
    return _outputs(x_gt, premask, mask, foreground, background,
                    self._saliency(background))


def biggan_module(model) -> biggan_lib.BigGAN:
  """One (unbound) BigGAN-deep of this CGN's configuration."""
  c = model.biggan_config
  return biggan_lib.BigGAN(
      z_dim=c["z_dim"], channel_width=c["channel_width"],
      num_classes=c["num_classes"], layers=c["layers"],
      attention_layer_position=c["attention_layer_position"],
      n_stats=c["n_stats"], eps=c["eps"],
      bn_interpolation=model.bn_interpolation, dtype=model.dtype)


def u2net_module(model) -> u2net_lib.U2Net:
  """The (unbound) U²-Net of this CGN."""
  # CGN's copy of U²-Net upsamples with align_corners=True and sees the raw
  # [-1, 1] BigGAN output (SPEC §4.1): no resize, no normalisation.
  return u2net_lib.U2Net(variant=model.u2net_variant, dtype=model.dtype)


def from_config(biggan: Any = "biggan-deep-256", u2net_variant: str = "u2net",
                **kwargs) -> ImageNetCGN:
  """An ImageNetCGN with a hashable BigGAN config (name or mapping)."""
  if not isinstance(biggan, str):
    biggan = FrozenDict(biggan_lib.get_config(dict(biggan)))
  return ImageNetCGN(biggan=biggan, u2net_variant=u2net_variant, **kwargs)


def split_trainable(params) -> tuple[dict, dict]:
  """params -> ({f_shape, f_text, f_bg}, {biggan_gt, u2net})."""
  return ({k: params[k] for k in MECHANISMS},
          {k: params[k] for k in FROZEN})


def abstract_variables(model: ImageNetCGN) -> dict:
  """ShapeDtypeStructs of `model`'s variables (traced, nothing computed)."""
  u = jnp.zeros((1, model.z_dim), jnp.float32)
  return jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), u, 0, 1.0))


def random_variables(model: ImageNetCGN, seed: int = 0) -> dict:
  """Random variables without compiling `model.init` (tests, benchmarks).

  All four BigGANs start from the same random BigGAN (as upstream starts
  them from the same pretrained weights); U²-Net gets torch's default init.
  """
  return assemble(random_biggan_variables(model, seed),
                  u2net_lib.init_variables(seed, model.u2net_variant))


def _settle(params, spectral, eps: float, iterations: int = 3):
  """Power-iterates random u, v until they fit their kernel (numpy)."""
  if "u" in spectral:
    w = np.asarray(params["kernel"], np.float64)
    w = w.reshape(-1, w.shape[-1])  # (in, out), as spectral_norm.py
    u = np.asarray(spectral["u"], np.float64)
    for _ in range(iterations):
      v = w @ u
      v /= max(np.linalg.norm(v), eps)
      u = v @ w
      u /= max(np.linalg.norm(u), eps)
    return {"u": u.astype(np.float32), "v": v.astype(np.float32)}
  return {k: _settle(params[k], spectral[k], eps, iterations)
          for k in spectral}


def random_biggan_variables(model: ImageNetCGN, seed: int = 0) -> dict:
  """A random BigGAN of `model`'s config whose u, v fit its kernels.

  Eval-mode spectral norm divides by u^T W v from the stored vectors;
  independent random u, v make that near zero or negative, and the frozen
  biggan_gt (always eval mode) then overflows to NaN (NOTES P12). A few
  power iterations, as a trained checkpoint has had, settle them.
  """
  gen = biggan_module(model)
  v = jax.device_get(biggan_lib.random_variables(gen, seed))
  v["spectral"] = _settle(v["params"], v["spectral"], gen.eps)
  return jax.tree.map(jnp.asarray, v)


def assemble(biggan_variables, u2net_variables) -> dict:
  """Variables of a CGN whose four BigGANs start from one BigGAN (upstream).

  Each copy gets its own arrays (a jitted update donates its input buffers,
  and one buffer must not back two leaves).
  """
  out = {"params": {}, "spectral": {}, "batch_stats": {}}
  for name in GENERATORS:
    for col in out:
      out[col][name] = jax.tree.map(lambda x: jnp.array(x, copy=True),
                                    biggan_variables[col])
  out["params"]["u2net"] = u2net_variables["params"]
  out["batch_stats"]["u2net"] = u2net_variables["batch_stats"]
  return out


def _sub(variables, name: str) -> dict:
  """The variables of top-level submodule `name`."""
  return {col: tree[name] for col, tree in variables.items() if name in tree}


def fused_forward(model: ImageNetCGN, variables, u, ys, truncation: float, *,
                  train: bool = True):
  """`model.apply(variables, u, ys, truncation, train=train)`, for training.

  The same computation as `ImageNetCGN.__call__` (tested to agree with it
  and with the upstream golden), arranged for training: U²-Net sees premask
  and background as one batch of 2B (eval-mode BatchNorm, so per-sample
  results do not depend on the batch), and the spectral-norm state of the
  three mechanisms comes back as one dict. With `model.remat`, each
  mechanism and the U²-Net pass are rematerialised.

  Args:
    model: the ImageNetCGN (its configuration; it is not bound).
    variables: its {'params', 'spectral', 'batch_stats'}.
    u, ys, truncation: as `ImageNetCGN.__call__`.
    train: run the mechanisms' spectral-norm power iteration.

  Returns:
    (outputs, spectral): the outputs dict of `ImageNetCGN.__call__`, and the
    {f_shape, f_text, f_bg} spectral state after the forward (unchanged
    when not `train`).
  """
  truncation = check_truncation(truncation)
  gen, u2 = biggan_module(model), u2net_module(model)
  batch = u.shape[0]
  y_shape, y_text, y_bg = mechanism_classes(ys, batch, model.num_classes)
  x_gt, _ = gen.apply(_sub(variables, "biggan_gt"), u, y_shape, truncation)

  def mechanism(v, y):
    if not train:
      return gen.apply(v, u, y, truncation)[0], v["spectral"]
    (image, _), mutated = gen.apply(v, u, y, truncation, train=True,
                                    mutable=["spectral"])
    return image, mutated["spectral"]

  def saliency(v, images):
    return u2.apply(v, images)[0].astype(jnp.float32)

  if model.remat:
    mechanism, saliency = jax.checkpoint(mechanism), jax.checkpoint(saliency)
  # Three separate calls, not one `lax.scan` over stacked variables: on
  # XLA:CPU the scanned full-width BigGAN-deep's gradient took 356 s against
  # 6.3 s unrolled (and compiled longer), at batch 1 on 2 cores.
  (premask, s_shape), (foreground, s_text), (background, s_bg) = (
      mechanism(_sub(variables, n), y)
      for n, y in zip(MECHANISMS, (y_shape, y_text, y_bg)))
  sal = saliency(_sub(variables, "u2net"),
                 jnp.concatenate([premask, background]))
  mask = jnp.clip(sal[:batch], MASK_MIN, MASK_MAX)
  outputs = _outputs(x_gt, premask, mask, foreground, background,
                     sal[batch:])
  return outputs, dict(zip(MECHANISMS, (s_shape, s_text, s_bg)))
