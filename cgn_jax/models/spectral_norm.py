"""Spectral normalisation with PyTorch `torch.nn.utils.spectral_norm` semantics.

Flax's `nn.SpectralNorm` always runs its power iterations, even with
`update_stats=False`, and keeps no `v` vector, so it cannot reproduce a torch
model in eval mode (NOTES §7, §9, pitfall P2). These layers mirror torch's
hook exactly:

* the un-normalised weight (`weight_orig`) is the `kernel` param;
* `u` (length out) and `v` (length in) live in a separate, non-param
  collection (`'spectral'` by default), like torch's `weight_u`/`weight_v`
  buffers;
* eval (`update=False`): no power iteration; sigma = u^T W v from the stored
  vectors, as torch does in `eval()`;
* train (`update=True`): one power iteration from the stored u,
  v = normalize(W^T u), u = normalize(W v) with `normalize(x) = x /
  max(|x|, eps)`, then sigma = u^T W v; u and v are written back and carry no
  gradient (torch computes them under `no_grad`), while sigma is
  differentiated through W.

Layout: W is the kernel reshaped to (in_features, out), i.e. a Dense kernel
as is and a conv kernel (kh, kw, I, O) flattened over (kh, kw, I). torch
flattens conv weights over (I, kh, kw) instead, so `v` of a conv must be
permuted when converting (`torch_v_to_flax`); `u` needs no change.
"""

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

SPECTRAL = "spectral"
_HIGHEST = jax.lax.Precision.HIGHEST


def _normalize(x, eps):
  """torch.nn.functional.normalize(x, dim=0, eps=eps) for a vector."""
  return x / jnp.maximum(jnp.linalg.norm(x), eps)


def _random_unit(key, n):
  return _normalize(jax.random.normal(key, (n,), jnp.float32), 1e-12)


def torch_v_to_flax(v, weight_shape) -> np.ndarray:
  """Reorders torch's `weight_v` to this module's flattening order.

  Args:
    v: torch `weight_v`, shape (prod(weight_shape[1:]),).
    weight_shape: torch `weight_orig` shape, (O, I) or (O, I, kh, kw).

  Returns:
    v flattened over (kh, kw, I) for a conv, unchanged for a linear layer.
  """
  v = np.asarray(v)
  if len(weight_shape) == 2:
    return v
  _, i, kh, kw = weight_shape
  return v.reshape(i, kh, kw).transpose(1, 2, 0).reshape(-1)


def spectral_normalize(module: nn.Module, kernel, *, eps: float,
                       update: bool, collection: str = SPECTRAL):
  """Returns kernel / sigma, running torch's power iteration if `update`.

  Must be called from inside a compact method of `module`; it declares the
  variables `collection/u` and `collection/v` there.

  Args:
    module: the calling module (owns the u/v variables).
    kernel: float32 kernel, (..., out); all leading axes are W's input axis.
    eps: normalisation epsilon (BigGAN uses 1e-4, torch's default is 1e-12).
    update: train mode: one power iteration and write u, v back.
    collection: variable collection for u and v.

  Returns:
    The normalised kernel, same shape and dtype as `kernel`.
  """
  out = kernel.shape[-1]
  w_mat = kernel.reshape(-1, out)  # (in, out) = torch's W^T
  u_var = module.variable(collection, "u",
                          lambda: _random_unit(module.make_rng("params"), out))
  v_var = module.variable(
      collection, "v",
      lambda: _random_unit(module.make_rng("params"), w_mat.shape[0]))
  u, v = u_var.value, v_var.value
  if update and not module.is_initializing():
    if not module.is_mutable_collection(collection):
      raise ValueError(
          f"spectral norm in train mode updates u and v: call apply(..., "
          f"mutable=['{collection}']) (or pass train=False for inference)")
    w_const = jax.lax.stop_gradient(w_mat)
    v = _normalize(jnp.dot(w_const, u, precision=_HIGHEST), eps)
    u = _normalize(jnp.dot(v, w_const, precision=_HIGHEST), eps)
    u, v = jax.lax.stop_gradient(u), jax.lax.stop_gradient(v)
    u_var.value, v_var.value = u, v
  sigma = jnp.dot(u, jnp.dot(v, w_mat, precision=_HIGHEST), precision=_HIGHEST)
  return kernel / sigma


class SNDense(nn.Module):
  """Spectrally normalised `nn.Linear` (torch semantics, see module doc).

  Attributes:
    features: output size.
    use_bias: add a bias (torch `bias=True`).
    eps: spectral-norm epsilon.
    dtype: compute dtype; the kernel is normalised in float32 first.
    precision: matmul precision of the layer itself.
  """
  features: int
  use_bias: bool = True
  eps: float = 1e-12
  dtype: Any = jnp.float32
  precision: Any = None

  @nn.compact
  def __call__(self, x, *, update: bool = False):
    kernel = self.param("kernel", nn.initializers.lecun_normal(),
                        (x.shape[-1], self.features), jnp.float32)
    kernel = spectral_normalize(self, kernel, eps=self.eps, update=update)
    y = jnp.dot(x.astype(self.dtype), kernel.astype(self.dtype),
                precision=self.precision)
    if self.use_bias:
      bias = self.param("bias", nn.initializers.zeros, (self.features,),
                        jnp.float32)
      y = y + bias.astype(self.dtype)
    return y


class SNConv(nn.Module):
  """Spectrally normalised stride-1 `nn.Conv2d` on NHWC inputs.

  Padding is symmetric `(k - 1) // 2` like the torch layers it mirrors
  (`padding=1` for 3x3, 0 for 1x1).

  Attributes:
    features: output channels.
    kernel_size: (kh, kw).
    use_bias: add a bias.
    eps: spectral-norm epsilon.
    dtype: compute dtype; the kernel is normalised in float32 first.
    precision: convolution precision.
  """
  features: int
  kernel_size: Sequence[int] = (3, 3)
  use_bias: bool = True
  eps: float = 1e-12
  dtype: Any = jnp.float32
  precision: Any = None

  @nn.compact
  def __call__(self, x, *, update: bool = False):
    kh, kw = self.kernel_size
    kernel = self.param("kernel", nn.initializers.lecun_normal(),
                        (kh, kw, x.shape[-1], self.features), jnp.float32)
    kernel = spectral_normalize(self, kernel, eps=self.eps, update=update)
    y = jax.lax.conv_general_dilated(
        x.astype(self.dtype), kernel.astype(self.dtype), (1, 1),
        ((((kh - 1) // 2,) * 2), (((kw - 1) // 2,) * 2)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=self.precision)
    if self.use_bias:
      bias = self.param("bias", nn.initializers.zeros, (self.features,),
                        jnp.float32)
      y = y + bias.astype(self.dtype)
    return y
