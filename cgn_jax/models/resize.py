"""Bilinear resizing that matches `torch.nn.functional.interpolate` exactly.

`jax.image.resize` implements half-pixel bilinear only (and antialiases when
downsampling), so it cannot reproduce `align_corners=True`, which CGN's copy
of U²-Net uses (NOTES §9, P3: max error 0.78). This module recomputes torch's
CPU/GPU kernel: per output index, the source coordinate is

  align_corners=True:   src = dst * (in - 1) / (out - 1)   (0 if out == 1)
  align_corners=False:  src = max((dst + 0.5) * in / out - 0.5, 0)

evaluated in float32 like torch, then the two neighbours floor(src) and
min(floor(src) + 1, in - 1) are blended with weight src - floor(src). The
indices and weights depend only on static shapes, so they are numpy
constants and the resize is two gathers and two lerps (separable), which is
differentiable and cheap on every backend. Gathers (not interpolation
matrices) keep the result exact on GPUs, where float32 matmuls may run in
TF32.
"""

import functools

import jax.numpy as jnp
import numpy as np

# Mode names used across the package (U²-Net's `upsample` field, the CLIs).
ALIGN_CORNERS = "align_corners"
HALF_PIXEL = "half_pixel"
MODES = (ALIGN_CORNERS, HALF_PIXEL)


@functools.lru_cache(maxsize=None)
def source_indices(in_size: int, out_size: int, align_corners: bool):
  """torch's neighbour indices and blend weight along one axis.

  Args:
    in_size: input length along the axis.
    out_size: output length.
    align_corners: torch's flag of the same name.

  Returns:
    (i0, i1, lam): int32 [out_size] indices of the lower and upper neighbour
    and float32 [out_size] weight of the upper one.
  """
  if in_size < 1 or out_size < 1:
    raise ValueError(f"cannot resize {in_size} -> {out_size}")
  dst = np.arange(out_size, dtype=np.float64)
  # The scale is a float32 in torch; the source coordinate is then formed
  # with one rounding (the compiler fuses multiply and add into an FMA), which
  # float64 arithmetic rounded once to float32 reproduces. Rounding twice
  # moves `src` by an ulp and the output by up to ~4e-6.
  if align_corners:
    scale = (np.float32(in_size - 1) / np.float32(out_size - 1)
             if out_size > 1 else np.float32(0))
    src = (np.float64(scale) * dst).astype(np.float32)
  else:
    scale = np.float32(in_size) / np.float32(out_size)
    src = (np.float64(scale) * (dst + 0.5) - 0.5).astype(np.float32)
    src = np.maximum(src, np.float32(0))
  i0 = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
  lam = np.clip(src - i0.astype(np.float32), 0, 1).astype(np.float32)
  i1 = np.minimum(i0 + 1, in_size - 1)
  return i0.astype(np.int32), i1.astype(np.int32), lam


def _resize_axis(x, axis: int, out_size: int, align_corners: bool):
  in_size = x.shape[axis]
  if in_size == out_size:
    # torch copies the input in this case for both modes (scale is exactly 1).
    return x
  i0, i1, lam = source_indices(in_size, out_size, align_corners)
  shape = [1] * x.ndim
  shape[axis] = out_size
  lam = jnp.asarray(lam.reshape(shape), x.dtype)
  lo = jnp.take(x, i0, axis=axis)
  hi = jnp.take(x, i1, axis=axis)
  return (1 - lam) * lo + lam * hi


def resize_bilinear(x, size, *, align_corners: bool):
  """Bilinear resize of NHWC maps, as torch's `F.interpolate(mode='bilinear')`.

  Args:
    x: [B, H, W, C] array (any float dtype; computed in that dtype).
    size: (out_h, out_w).
    align_corners: torch's flag (True: CGN's U²-Net; False: torch's default
      and the original U²-Net repository's `F.upsample`).

  Returns:
    [B, out_h, out_w, C] array.
  """
  if x.ndim != 4:
    raise ValueError(f"expected NHWC input, got shape {x.shape}")
  out_h, out_w = (int(s) for s in size)
  x = _resize_axis(x, 1, out_h, align_corners)
  return _resize_axis(x, 2, out_w, align_corners)


def resize_like(x, target_hw, mode: str):
  """Resizes `x` to the spatial size `target_hw` with a named mode.

  Args:
    x: [B, H, W, C].
    target_hw: (H', W').
    mode: 'align_corners' or 'half_pixel' (= align_corners=False).

  Returns:
    [B, H', W', C].
  """
  if mode not in MODES:
    raise ValueError(f"unknown upsampling mode {mode!r}; use one of {MODES}")
  return resize_bilinear(x, target_hw, align_corners=mode == ALIGN_CORNERS)
