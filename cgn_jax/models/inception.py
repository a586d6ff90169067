"""Inception-v3 (torchvision's `inception_v3`), eval mode, for the Inception Score.

Module and parameter names mirror torchvision's state dict, so the converter
(`converters/inception_v3.py`) is a rule table:
`Mixed_6b.branch7x7_2.conv.weight` <-> params `Mixed_6b/branch7x7_2/conv/kernel`
(OIHW -> HWIO), `....bn.{weight,bias}` -> `bn/{scale,bias}`,
`....bn.running_{mean,var}` -> batch_stats `bn/{mean,var}`, `fc.*` -> `fc`.

Details that decide parity with torchvision:
- every BasicConv2d is conv (no bias) -> BatchNorm with eps **1e-3** (not
  torch's default 1e-5) -> ReLU; this model is eval-only (running stats);
- max-pools are 3x3 stride 2 without padding (floor mode); the pool branch
  of InceptionA/C/E is `avg_pool2d(3, stride 1, padding 1)` whose zero
  padding counts in the divisor (`count_include_pad=True`, torch's default);
- `transform_input=False` (the Inception Score codes' choice): the network
  sees its input unchanged, so feed images in [-1, 1], the range Google's
  weights were trained on. `transform_input=True` re-maps ImageNet-normalised
  input to that range, as torchvision's pretrained default does.
- AuxLogits (`aux_logits=True`, the layout of the released checkpoint) only
  runs on request (`with_aux=True`, and at init so its parameters exist);
  torchvision skips it in eval mode. Dropout before `fc` is the identity in
  eval mode and is left out.

Input: NHWC [B, 299, 299, 3]. Output: {'pool' [B, 2048] (the pooled
features before `fc`, what FID uses), 'logits' [B, num_classes]} plus
'aux_logits' when asked.
"""

from typing import Any, Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn

BN_EPS = 1e-3       # torchvision BasicConv2d: BatchNorm2d(eps=0.001)
INPUT_SIZE = 299


def _pair(v) -> tuple[int, int]:
  return (v, v) if isinstance(v, int) else tuple(v)


class BasicConv2d(nn.Module):
  """conv (no bias) -> eval BatchNorm (eps 1e-3) -> ReLU, torch padding."""
  features: int
  kernel_size: Any = 1
  stride: Any = 1
  padding: Any = 0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    ph, pw = _pair(self.padding)
    x = nn.Conv(self.features, _pair(self.kernel_size),
                strides=_pair(self.stride), padding=((ph, ph), (pw, pw)),
                use_bias=False, dtype=self.dtype, name="conv")(x)
    x = nn.BatchNorm(use_running_average=True, epsilon=BN_EPS,
                     dtype=self.dtype, name="bn")(x)
    return nn.relu(x)


def _max_pool(x):
  return nn.max_pool(x, (3, 3), strides=(2, 2), padding="VALID")


def _avg_pool_same(x):
  # torch F.avg_pool2d(3, 1, padding=1), count_include_pad=True: sum / 9.
  return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)),
                     count_include_pad=True)


def _cat(xs: Sequence[jax.Array]) -> jax.Array:
  return jnp.concatenate(xs, axis=-1)


class InceptionA(nn.Module):
  pool_features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    c = lambda f, k=1, p=0, **kw: BasicConv2d(f, k, padding=p,
                                              dtype=self.dtype, **kw)
    b1 = c(64, name="branch1x1")(x)
    b5 = c(48, name="branch5x5_1")(x)
    b5 = c(64, 5, 2, name="branch5x5_2")(b5)
    b3 = c(64, name="branch3x3dbl_1")(x)
    b3 = c(96, 3, 1, name="branch3x3dbl_2")(b3)
    b3 = c(96, 3, 1, name="branch3x3dbl_3")(b3)
    bp = c(self.pool_features, name="branch_pool")(_avg_pool_same(x))
    return _cat([b1, b5, b3, bp])


class InceptionB(nn.Module):
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    c = lambda f, k=1, p=0, **kw: BasicConv2d(f, k, padding=p,
                                              dtype=self.dtype, **kw)
    b3 = c(384, 3, stride=2, name="branch3x3")(x)
    bd = c(64, name="branch3x3dbl_1")(x)
    bd = c(96, 3, 1, name="branch3x3dbl_2")(bd)
    bd = c(96, 3, stride=2, name="branch3x3dbl_3")(bd)
    return _cat([b3, bd, _max_pool(x)])


class InceptionC(nn.Module):
  channels_7x7: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    c = lambda f, k=1, p=0, **kw: BasicConv2d(f, k, padding=p,
                                              dtype=self.dtype, **kw)
    c7 = self.channels_7x7
    row, col = ((1, 7), (0, 3)), ((7, 1), (3, 0))
    b1 = c(192, name="branch1x1")(x)
    b7 = c(c7, name="branch7x7_1")(x)
    b7 = c(c7, *row, name="branch7x7_2")(b7)
    b7 = c(192, *col, name="branch7x7_3")(b7)
    bd = c(c7, name="branch7x7dbl_1")(x)
    bd = c(c7, *col, name="branch7x7dbl_2")(bd)
    bd = c(c7, *row, name="branch7x7dbl_3")(bd)
    bd = c(c7, *col, name="branch7x7dbl_4")(bd)
    bd = c(192, *row, name="branch7x7dbl_5")(bd)
    bp = c(192, name="branch_pool")(_avg_pool_same(x))
    return _cat([b1, b7, bd, bp])


class InceptionD(nn.Module):
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    c = lambda f, k=1, p=0, **kw: BasicConv2d(f, k, padding=p,
                                              dtype=self.dtype, **kw)
    b3 = c(192, name="branch3x3_1")(x)
    b3 = c(320, 3, stride=2, name="branch3x3_2")(b3)
    b7 = c(192, name="branch7x7x3_1")(x)
    b7 = c(192, (1, 7), (0, 3), name="branch7x7x3_2")(b7)
    b7 = c(192, (7, 1), (3, 0), name="branch7x7x3_3")(b7)
    b7 = c(192, 3, stride=2, name="branch7x7x3_4")(b7)
    return _cat([b3, b7, _max_pool(x)])


class InceptionE(nn.Module):
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    c = lambda f, k=1, p=0, **kw: BasicConv2d(f, k, padding=p,
                                              dtype=self.dtype, **kw)
    b1 = c(320, name="branch1x1")(x)
    b3 = c(384, name="branch3x3_1")(x)
    b3 = _cat([c(384, (1, 3), (0, 1), name="branch3x3_2a")(b3),
               c(384, (3, 1), (1, 0), name="branch3x3_2b")(b3)])
    bd = c(448, name="branch3x3dbl_1")(x)
    bd = c(384, 3, 1, name="branch3x3dbl_2")(bd)
    bd = _cat([c(384, (1, 3), (0, 1), name="branch3x3dbl_3a")(bd),
               c(384, (3, 1), (1, 0), name="branch3x3dbl_3b")(bd)])
    bp = c(192, name="branch_pool")(_avg_pool_same(x))
    return _cat([b1, b3, bd, bp])


class InceptionAux(nn.Module):
  num_classes: int = 1000
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    x = nn.avg_pool(x, (5, 5), strides=(3, 3), padding="VALID")
    x = BasicConv2d(128, 1, dtype=self.dtype, name="conv0")(x)
    x = BasicConv2d(768, 5, dtype=self.dtype, name="conv1")(x)
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(self.num_classes, dtype=self.dtype, name="fc")(x)


def transform_input(x: jax.Array) -> jax.Array:
  """torchvision's `transform_input`: ImageNet-normalised -> [-1, 1]-ish."""
  mean = jnp.asarray([0.485, 0.456, 0.406], x.dtype)
  std = jnp.asarray([0.229, 0.224, 0.225], x.dtype)
  return x * (std / 0.5) + (mean - 0.5) / 0.5


class InceptionV3(nn.Module):
  """torchvision `Inception3` in eval mode (see the module docstring)."""
  num_classes: int = 1000
  aux_logits: bool = True
  transform_input: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, with_aux: bool = False) -> dict[str, jax.Array]:
    if x.ndim != 4 or x.shape[-1] != 3:
      raise ValueError(f"expected NHWC RGB input [B, 299, 299, 3], got "
                       f"{x.shape}")
    if self.transform_input:
      x = transform_input(x)
    x = x.astype(self.dtype)
    c = lambda f, k, **kw: BasicConv2d(f, k, dtype=self.dtype, **kw)
    x = c(32, 3, stride=2, name="Conv2d_1a_3x3")(x)
    x = c(32, 3, name="Conv2d_2a_3x3")(x)
    x = c(64, 3, padding=1, name="Conv2d_2b_3x3")(x)
    x = _max_pool(x)
    x = c(80, 1, name="Conv2d_3b_1x1")(x)
    x = c(192, 3, name="Conv2d_4a_3x3")(x)
    x = _max_pool(x)
    x = InceptionA(32, self.dtype, name="Mixed_5b")(x)
    x = InceptionA(64, self.dtype, name="Mixed_5c")(x)
    x = InceptionA(64, self.dtype, name="Mixed_5d")(x)
    x = InceptionB(self.dtype, name="Mixed_6a")(x)
    for name, c7 in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160),
                     ("Mixed_6e", 192)):
      x = InceptionC(c7, self.dtype, name=name)(x)
    out = {}
    if self.aux_logits and (with_aux or self.is_initializing()):
      out["aux_logits"] = InceptionAux(
          self.num_classes, self.dtype, name="AuxLogits")(x).astype(
              jnp.float32)
    x = InceptionD(self.dtype, name="Mixed_7a")(x)
    x = InceptionE(self.dtype, name="Mixed_7b")(x)
    x = InceptionE(self.dtype, name="Mixed_7c")(x)
    pool = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
    out["pool"] = pool
    out["logits"] = nn.Dense(self.num_classes, dtype=self.dtype,
                             name="fc")(pool).astype(jnp.float32)
    return out


def init_variables(key, model: InceptionV3 | None = None):
  """Randomly initialised {'params', 'batch_stats'} (flax default inits).

  Initialises at 299x299: AuxLogits needs a 17x17 Mixed_6e map.
  """
  model = model or InceptionV3()
  return model.init(key, jnp.zeros((1, INPUT_SIZE, INPUT_SIZE, 3),
                                   jnp.float32))


def abstract_variables(model: InceptionV3 | None = None):
  """ShapeDtypeStructs of `init_variables` without computing anything."""
  return jax.eval_shape(lambda k: init_variables(k, model),
                        jax.random.PRNGKey(0))
