"""The ImageNet CGN's generator loss: six terms and their sum (SPEC §4.4).

Upstream `imagenet/train_cgn.py` (commit 335bebd) computes, per iteration,

  l1        ReconstructionLoss('l1', LAMBDA.L1)(x_gen, x_gt)
  perc      PerceptualLoss(style_wgts=LAMBDA.PERC)(x_gen, x_gt)
  binary    BinaryLoss(LAMBDA.BINARY)(mask)
  mask      MaskLoss(LAMBDA.MASK)(mask)
  perc_text PercLossText(style_wgts=LAMBDA.TEXT)(x_gt, mask, foreground)
  bg        BackgroundLoss(LAMBDA.BG)(background_mask)

takes `.mean()` of each and back-propagates their sum. Gradient routing
follows from the graph: x_gt carries no gradient anywhere; the texture
target is built from a detached x_gt and mask; so f_shape is reached by l1,
perc, binary and mask (through U²-Net), f_text by l1, perc and perc_text,
f_bg by l1, perc and bg (through U²-Net).
"""

from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp

from cgn_jax.losses import background
from cgn_jax.losses import mask as mask_lib
from cgn_jax.losses import reconstruction
from cgn_jax.losses import style
from cgn_jax.losses import texture

LAMBDA_KEYS = ("l1", "perc", "binary", "mask", "text", "bg")
# Upstream's LAMBDA defaults (imagenet/config.py), lower-cased.
DEFAULT_LAMBDAS = {"l1": 100.0, "perc": (4.0, 4.0, 4.0, 4.0),
                   "binary": 300.0, "mask": 500.0,
                   "text": (0.0, 5.0, 5.0, 0.0), "bg": 2000.0}
TERMS = ("l1", "perc", "binary", "mask", "perc_text", "bg")
MASK_INTERVAL = (0.1, 0.9)
_OUTPUT_KEYS = ("x_gt", "mask", "foreground", "background_mask", "x_gen")


def _read_lambdas(lambdas: Mapping[str, Any]):
  """Static Python numbers from a dict or ConfigDict, or a clear error."""
  try:
    missing = [k for k in LAMBDA_KEYS if k not in lambdas]
  except TypeError as e:
    raise TypeError(f"lambdas must be a mapping with keys {LAMBDA_KEYS}, got "
                    f"{type(lambdas).__name__}") from e
  if missing:
    raise KeyError(f"loss lambdas are missing {missing}; need all of "
                   f"{LAMBDA_KEYS} (upstream defaults {DEFAULT_LAMBDAS})")
  out = {}
  for k in ("l1", "binary", "mask", "bg"):
    out[k] = float(lambdas[k])
  for k in ("perc", "text"):
    ws = tuple(float(w) for w in lambdas[k])
    if len(ws) != len(style.STYLE_LAYERS):
      raise ValueError(f"lambdas.{k} needs {len(style.STYLE_LAYERS)} style "
                       f"weights ({', '.join(style.STYLE_LAYERS)}), got "
                       f"{list(ws)}")
    out[k] = ws
  return out


def cgn_imagenet_losses(outputs: Mapping[str, jax.Array],
                        vgg_apply: Callable, vgg_variables,
                        lambdas: Mapping[str, Any], *,
                        rng: jax.Array | None = None,
                        texture_windows: jax.Array | None = None,
                        ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The six ImageNet CGN loss terms and their sum (upstream's g_loss).

  Every term is a batch mean with its λ inside, so the total is their plain
  sum. Use `jax.grad(lambda p: cgn_imagenet_losses(model(p), ...)[0])` with
  `has_aux` on the second value for logging.

  Args:
    outputs: the model's intermediates (`ImageNetCGN.__call__`), NHWC
      float32 or bfloat16 (each term computes in float32): 'x_gt',
      'foreground', 'x_gen' [B, H, W, 3] in [-1, 1]; 'mask' (clipped) and
      'background_mask' [B, H, W, 1]. 'premask' and 'background' are not
      read (they reach the losses through mask and x_gen).
    vgg_apply: `VGG16().apply`, called as `vgg_apply(vgg_variables, x,
      upto=name)`; the perceptual and texture losses share it.
    vgg_variables: VGG16 {'params'} (plus the optional 'frozen'
      collection, see models/vgg16.py); None drops both style terms (they
      are reported as 0), like `perceptual.vgg16='none'` on MNIST.
    lambdas: mapping (dict or ml_collections.ConfigDict) with keys
      l1, binary, mask, bg (floats) and perc, text (4 style weights each),
      upstream defaults in `DEFAULT_LAMBDAS`. They are static: a zero λ
      keeps its term at 0, and all-zero style weights skip VGG (the paper's
      Table 1 ablations).
    rng: PRNG key for the texture loss's 36 window draws per sample.
    texture_windows: [B, 36] int window indices to inject instead (row-major
      into the 114x114 grid of 15x15 windows at 128²; the golden's
      `texture_windows`). Exactly one of rng and texture_windows is needed
      while lambdas.text has a nonzero weight.

  Returns:
    (total, metrics): total is the scalar sum of the six terms; metrics maps
    'l1', 'perc', 'binary', 'mask', 'perc_text', 'bg' (upstream's names) to
    the scalar terms, and 'mask_mean' to the batch mean of the mask (a
    diagnostic, not part of the total).
  """
  lam = _read_lambdas(lambdas)
  missing = [k for k in _OUTPUT_KEYS if k not in outputs]
  if missing:
    raise KeyError(f"model outputs lack {missing}; pass the dict that "
                   "ImageNetCGN returns")
  x_gt = jax.lax.stop_gradient(outputs["x_gt"])
  x_gen, mask = outputs["x_gen"], outputs["mask"]
  zero = jnp.zeros((), jnp.float32)
  terms = {"l1": reconstruction.l1_loss(x_gen, x_gt, lam["l1"])}
  if vgg_variables is None:
    terms["perc"] = zero
  else:
    terms["perc"] = style.style_loss(vgg_apply, vgg_variables, x_gen, x_gt,
                                     lam["perc"])
  terms["binary"] = mask_lib.binary_entropy_loss(mask, lam["binary"])
  terms["mask"] = mask_lib.mask_size_loss(mask, lam["mask"], MASK_INTERVAL)
  if vgg_variables is None or not any(lam["text"]):
    terms["perc_text"] = zero
  else:
    if (rng is None) == (texture_windows is None):
      raise ValueError("the texture loss needs exactly one of rng (draw the "
                       "patch windows) and texture_windows (inject them)")
    terms["perc_text"] = texture.texture_loss(
        vgg_apply, vgg_variables, outputs["foreground"], x_gt, mask,
        lam["text"], rng=rng, windows=texture_windows)
  terms["bg"] = background.background_loss(outputs["background_mask"],
                                           lam["bg"])
  total = sum(terms.values(), zero)
  metrics = dict(terms)
  metrics["mask_mean"] = jnp.mean(jax.lax.stop_gradient(mask).astype(
      jnp.float32))
  return total, metrics
