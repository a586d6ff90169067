"""The ImageNet CGN's texture loss: a style loss against a patch grid (SPEC §4.4).

Upstream (`PercLossText` and `get_sampled_patches` in `shared/losses.py`):
from the detached x_gt and the detached mask,
  1. bicubic-resize both from 256 to 128 (torch, `align_corners=False`);
  2. score every 15x15 window at stride 1 (114² of them at 128²) by its mean
     mask value and keep the 100 best;
  3. draw 36 of those 100 uniformly with replacement;
  4. cut the 36 windows out of the resized x_gt and tile them row-major into
     a 6x6 grid (90x90, no padding), then bicubic-resize it back to 256;
  5. loss = style loss (weights LAMBDA.TEXT = [0, 5, 5, 0]) between the
     foreground and that grid.
Only the foreground carries gradient. A window is named by its row-major
index r * 114 + c into the grid of window positions (upstream's `unfold`
order), so tests can inject upstream's draws.
"""

import functools
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from cgn_jax.losses import style

PATCH = 15  # upstream patch_sz [15, 15] (odd already, so not enlarged)
SAMPLE = 100  # sample_sz: the best-scoring windows kept
N_UP = 6  # the grid is N_UP x N_UP patches
WORK_SIZE = 128  # get_sampled_patches' fixed working resolution
_CUBIC_A = -0.75  # torch's bicubic kernel parameter


# -------------------------------------------------------- torch's bicubic ---

def _cubic_weights(t: np.ndarray) -> np.ndarray:
  """torch's get_cubic_upsample_coefficients (A = -0.75), in float32."""
  a = np.float32(_CUBIC_A)
  one = np.float32(1)

  def conv1(x):  # |x| <= 1
    return ((a + 2) * x - (a + 3)) * x * x + one

  def conv2(x):  # 1 < |x| < 2
    return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

  t = t.astype(np.float32)
  return np.stack([conv2(t + one), conv1(t), conv1(one - t),
                   conv2((one - t) + one)], axis=-1).astype(np.float32)


@functools.lru_cache(maxsize=None)
def bicubic_taps(in_size: int, out_size: int):
  """torch's bicubic (align_corners=False) taps along one axis.

  Per output index d: src = (d + 0.5) * in / out - 0.5 (float32 scale, not
  clamped at 0 for cubic), i = floor(src) (capped at in - 1), t = src - i in
  [0, 1], and the four source indices i - 1 .. i + 2 clamped to the edge.

  Args:
    in_size: input length.
    out_size: output length.

  Returns:
    (idx int32 [out, 4], w float32 [out, 4]) numpy constants.
  """
  if in_size < 1 or out_size < 1:
    raise ValueError(f"cannot resize {in_size} -> {out_size}")
  scale = np.float32(in_size) / np.float32(out_size)
  dst = np.arange(out_size, dtype=np.float64)
  src = (np.float64(scale) * (dst + 0.5) - 0.5).astype(np.float32)
  i0 = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
  t = np.clip(src - i0.astype(np.float32), 0, 1)
  idx = np.clip(i0[:, None] + np.arange(-1, 3)[None, :], 0, in_size - 1)
  return idx.astype(np.int32), _cubic_weights(t)


def _resize_axis(x, axis: int, out_size: int):
  idx, w = bicubic_taps(x.shape[axis], out_size)
  shape = [1] * x.ndim
  shape[axis] = out_size
  out = None
  # Four gathers and a weighted sum in torch's tap order (no matmul, so no
  # TF32 on GPUs).
  for j in range(4):
    term = jnp.take(x, jnp.asarray(idx[:, j]), axis=axis) * jnp.asarray(
        w[:, j]).reshape(shape)
    out = term if out is None else out + term
  return out


def resize_bicubic(x: jax.Array, size: Sequence[int]) -> jax.Array:
  """`F.interpolate(x, size, mode='bicubic', align_corners=False)`, NHWC.

  No antialiasing (torch's default), so downsampling aliases like upstream.
  Width is interpolated first, then height, as torch's CPU kernel nests
  them.

  Args:
    x: [B, H, W, C].
    size: (out_h, out_w).

  Returns:
    [B, out_h, out_w, C] float32.
  """
  out_h, out_w = (int(s) for s in size)
  x = x.astype(jnp.float32)
  return _resize_axis(_resize_axis(x, 2, out_w), 1, out_h)


# --------------------------------------------------------------- windows ---

def window_means(mask: jax.Array, patch: int = PATCH) -> jax.Array:
  """Mean of every patch x patch window at stride 1, without padding.

  Args:
    mask: [B, H, W, C] (upstream averages over the channels too).
    patch: window size.

  Returns:
    [B, (H - patch + 1) * (W - patch + 1)] float32, row-major over window
    positions (upstream's `unfold` order).
  """
  b, h, w, c = mask.shape
  if h < patch or w < patch:
    raise ValueError(f"a {patch}x{patch} window does not fit a {h}x{w} mask")
  s = jax.lax.reduce_window(mask.astype(jnp.float32), 0.0, jax.lax.add,
                            (1, patch, patch, c), (1, 1, 1, 1), "VALID")
  return s.reshape(b, -1) / (patch * patch * c)


def top_windows(mask_small: jax.Array, patch: int = PATCH,
                sample_size: int = SAMPLE) -> jax.Array:
  """The `sample_size` windows with the highest mean mask, per sample.

  Args:
    mask_small: [B, H, W, C] mask at the working resolution (128²).
    patch: window size.
    sample_size: how many to keep (upstream's `argsort(...)[-100:]`).

  Returns:
    [B, sample_size] int32 window indices, best first. Windows whose means
    tie to within float rounding may be ordered (and cut off) differently
    from torch's argsort.
  """
  _, idx = jax.lax.top_k(window_means(mask_small, patch), sample_size)
  return idx.astype(jnp.int32)


def draw_windows(rng: jax.Array, top: jax.Array,
                 n_draws: int = N_UP * N_UP) -> jax.Array:
  """`n_draws` uniform draws with replacement from each row of `top`.

  Args:
    rng: PRNG key.
    top: [B, K] candidate window indices.
    n_draws: draws per sample (36 for a 6x6 grid).

  Returns:
    [B, n_draws] int32 window indices.
  """
  pos = jax.random.randint(rng, (top.shape[0], n_draws), 0, top.shape[1])
  return jnp.take_along_axis(top, pos, axis=1)


def patch_grid(images: jax.Array, windows: jax.Array, patch: int = PATCH,
               n_up: int = N_UP) -> jax.Array:
  """Cuts the windows out of `images` and tiles them row-major (make_grid).

  Args:
    images: [B, H, W, C].
    windows: [B, n_up²] row-major window indices into the
      (H - patch + 1) x (W - patch + 1) grid of window positions.
    patch: window size.
    n_up: patches per grid row and column.

  Returns:
    [B, n_up * patch, n_up * patch, C].
  """
  b, h, w, c = images.shape
  if windows.shape != (b, n_up * n_up):
    raise ValueError(f"need windows of shape {(b, n_up * n_up)}, got "
                     f"{windows.shape}")
  n_cols = w - patch + 1
  rows, cols = windows // n_cols, windows % n_cols

  def cut(img, r, col):
    return jax.lax.dynamic_slice(img, (r, col, jnp.zeros_like(r)),
                                 (patch, patch, c))

  patches = jax.vmap(jax.vmap(cut, (None, 0, 0)))(images, rows, cols)
  patches = patches.reshape(b, n_up, n_up, patch, patch, c)
  return patches.transpose(0, 1, 3, 2, 4, 5).reshape(
      b, n_up * patch, n_up * patch, c)


# ---------------------------------------------------------------- target ---

def texture_target(x_gt: jax.Array, mask: jax.Array, *,
                   rng: jax.Array | None = None,
                   windows: jax.Array | None = None,
                   patch: int = PATCH, sample_size: int = SAMPLE,
                   n_up: int = N_UP) -> tuple[jax.Array, jax.Array]:
  """Upstream's patch-grid target (`get_sampled_patches`), detached.

  Args:
    x_gt: [B, H, W, 3] pseudo ground truth in [-1, 1].
    mask: [B, H, W, 1] mask in [0, 1].
    rng: key for the draws (exactly one of rng and windows).
    windows: [B, n_up²] injected window indices (the golden's draws).
    patch, sample_size, n_up: upstream's 15, 100, 6.

  Returns:
    (target [B, H, W, 3], windows [B, n_up²] int32: the windows used).
  """
  if (rng is None) == (windows is None):
    raise ValueError("texture_target needs exactly one of rng (draw the "
                     "windows) and windows (inject them)")
  x_gt = jax.lax.stop_gradient(x_gt)
  mask = jax.lax.stop_gradient(mask)
  size = x_gt.shape[1:3]
  paint = resize_bicubic(x_gt, (WORK_SIZE, WORK_SIZE))
  if windows is None:
    prob = resize_bicubic(mask, (WORK_SIZE, WORK_SIZE))
    windows = draw_windows(rng, top_windows(prob, patch, sample_size),
                           n_up * n_up)
  windows = jnp.asarray(windows, jnp.int32)
  grid = patch_grid(paint, windows, patch, n_up)
  return jax.lax.stop_gradient(resize_bicubic(grid, size)), windows


def texture_loss(vgg_apply: Callable, vgg_variables, foreground: jax.Array,
                 x_gt: jax.Array, mask: jax.Array,
                 weights: Sequence[float], *, rng: jax.Array | None = None,
                 windows: jax.Array | None = None) -> jax.Array:
  """Style loss (LAMBDA.TEXT weights) of the foreground against the grid.

  Args:
    vgg_apply, vgg_variables: as `style.style_loss_terms`.
    foreground: [B, H, W, 3] f_text's output in [-1, 1] (gets gradient).
    x_gt: [B, H, W, 3] (detached here).
    mask: [B, H, W, 1] (detached here).
    weights: four style weights (upstream [0, 5, 5, 0]); all zero skips
      the target and VGG (returns 0).
    rng / windows: see `texture_target`.

  Returns:
    scalar loss.
  """
  if not any(float(w) for w in weights):
    return jnp.zeros((), jnp.float32)
  target, _ = texture_target(x_gt, mask, rng=rng, windows=windows)
  return style.style_loss(vgg_apply, vgg_variables, foreground, target,
                          weights)
