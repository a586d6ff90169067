"""`python -m cgn_jax.sample u2net`: the saliency mask of one image.

  python -m converters u2net --input u2net.pth --output weights/u2net
  python -m cgn_jax.sample u2net --weights weights/u2net --image cat.jpg \
      --out cat_mask.png

writes an 8-bit grayscale PNG at the input's original size. Two
preprocessing recipes are offered:

- `--preprocess original` (default): the U²-Net repository's test-time
  recipe, which the released weights were trained for: resize to 320x320,
  divide by the maximum, ImageNet mean/std, `align_corners=False`
  upsampling, and min-max normalisation of the output (`normPRED`). Best
  masks for photographs.
- `--preprocess cgn`: what CGN does inside its ImageNet model (SPEC §4.1):
  the image in [-1, 1] at 256x256 (`--size`), no normalisation,
  `align_corners=True` upsampling, the raw sigmoid(d0) as the mask.
"""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from cgn_jax.models import resize
from cgn_jax.models import u2net
from cgn_jax.models import u2net_weights

_DEFAULTS = {  # preprocess -> (size, upsample)
    "original": (320, resize.HALF_PIXEL),
    "cgn": (256, resize.ALIGN_CORNERS),
}


def add_arguments(parser):
  parser.add_argument("--weights", required=True,
                      help="converted weights (python -m converters u2net)")
  parser.add_argument("--image", required=True, help="input image file")
  parser.add_argument("--out", required=True, help="output mask (.png)")
  parser.add_argument("--preprocess", choices=sorted(_DEFAULTS),
                      default="original",
                      help="'original': the U²-Net repository's recipe "
                      "(best for photos); 'cgn': CGN's raw [-1, 1] input")
  parser.add_argument("--size", type=int, default=None,
                      help="network input size (default 320 for original, "
                      "256 for cgn)")
  parser.add_argument("--upsample", choices=resize.MODES, default=None,
                      help="U²-Net's internal upsampling (default "
                      "half_pixel for original, align_corners for cgn)")
  parser.add_argument("--dtype", choices=("float32", "bfloat16"),
                      default="float32", help="compute dtype")


def predict(variables, variant, image, *, preprocess="original", size=None,
            upsample=None, dtype=jnp.float32):
  """Saliency of one RGB image, at the network's input size.

  Args:
    variables: converted {'params', 'batch_stats'}.
    variant: 'u2net' or 'u2netp'.
    image: [H, W, 3] uint8 RGB.
    preprocess: 'original' or 'cgn' (see the module docstring).
    size: network input size; None for the recipe's default.
    upsample: 'align_corners' or 'half_pixel'; None for the recipe's default.
    dtype: compute dtype.

  Returns:
    [size, size] float32 mask in [0, 1].
  """
  default_size, default_up = _DEFAULTS[preprocess]
  size = size or default_size
  model = u2net.U2Net(variant=variant, upsample=upsample or default_up,
                      dtype=dtype)
  x = jnp.asarray(image, jnp.float32)[None] / 255.0
  if preprocess == "original":
    x = u2net.preprocess_original(x, size)
  else:
    x = jax.image.resize(x, (1, size, size, 3), "linear", antialias=True)
    x = x * 2.0 - 1.0
  saliency, _ = jax.jit(model.apply)(variables, x)
  mask = saliency[0, :, :, 0]
  if preprocess == "original":  # normPRED in u2net_test.py
    lo, hi = jnp.min(mask), jnp.max(mask)
    mask = (mask - lo) / jnp.maximum(hi - lo, 1e-8)
  return np.asarray(mask, np.float32)


def run(args):
  # pylint: disable=g-import-not-at-top
  from PIL import Image
  variant, variables = u2net_weights.load(args.weights)
  path = pathlib.Path(args.image)
  if not path.is_file():
    raise FileNotFoundError(f"image {path} does not exist")
  with Image.open(path) as im:
    image = np.asarray(im.convert("RGB"))
  h, w = image.shape[:2]
  mask = predict(variables, variant, image, preprocess=args.preprocess,
                 size=args.size, upsample=args.upsample,
                 dtype=jnp.dtype(args.dtype))
  # Resize the float map (not 8-bit values) back to the original size.
  mask = Image.fromarray(mask)  # float32 -> mode F
  mask = mask.resize((w, h), Image.Resampling.BILINEAR)
  mask = np.clip(np.rint(np.asarray(mask) * 255.0), 0, 255).astype(np.uint8)
  out = pathlib.Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(mask).save(out)  # uint8 [H, W] -> mode L
  print(f"{variant} mask of {path} ({w}x{h}, {args.preprocess} "
        f"preprocessing) -> {out}")
  return 0
