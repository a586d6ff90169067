"""torchvision's ImageNet preprocessing, on the host with PIL and numpy.

The classifier ensemble (SPEC §6.2) is trained and tested on images that
upstream prepares with torchvision's PIL path; to reproduce its numbers the
port must see the same pixels. Every geometric step therefore runs in PIL
exactly as torchvision 0.29 calls it (tests/test_transforms.py matches
`reference/transforms/transforms_golden.npz` level for level):

* eval: `Resize(256)` (shorter side to 256, the longer side truncated as
  torchvision does, PIL bilinear, which antialiases when it shrinks) then
  `CenterCrop(224)` (offsets rounded half to even, zero padding when the image
  is smaller);
* train: `RandomResizedCrop(224, scale=(0.08, 1), ratio=(3/4, 4/3))` with
  torchvision's box drawing (10 tries, then the centre-crop fallback), crop
  first and then resize the crop (PIL's `resize(box=...)` would read pixels
  outside the box and differ at the borders), then a horizontal flip with
  probability 1/2;
* `ToTensor` (/255) and `Normalize` in float32, with ImageNet statistics, or
  the IN-9 statistics of MadryLab's backgrounds challenge (SPEC §6.3).

Images come out as uint8 HWC arrays; `normalize` turns a batch into float32
NHWC. The random draws use a numpy Generator, so they are reproducible under
a seed but are not torch's stream.
"""

import functools
import io
import math
import os
from typing import Sequence

import numpy as np
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# MadryLab backgrounds challenge (IN-9) statistics, used only for IN-9.
IN9_MEAN = (0.4717, 0.4499, 0.3837)
IN9_STD = (0.2600, 0.2516, 0.2575)

RESIZE = 256
CROP = 224
SCALE = (0.08, 1.0)
RATIO = (3.0 / 4.0, 4.0 / 3.0)


def load_rgb(source: bytes | os.PathLike | str) -> Image.Image:
  """Decodes a file path or encoded bytes with PIL, converted to RGB.

  As torchvision's `pil_loader`: grey, palette, CMYK and RGBA images all
  become 3-channel RGB.
  """
  if isinstance(source, (bytes, bytearray, memoryview)):
    source = io.BytesIO(source)
  with Image.open(source) as img:
    return img.convert("RGB")


def resize_shorter(img: Image.Image, size: int = RESIZE) -> Image.Image:
  """`transforms.Resize(size)`: shorter side to `size`, PIL bilinear.

  The longer side is `int(size * long / short)` (truncated, as torchvision's
  `_compute_resized_output_size`); an image already at that size is returned
  unchanged.
  """
  w, h = img.size
  short, long = (w, h) if w <= h else (h, w)
  new_long = int(size * long / short)
  new_w, new_h = (size, new_long) if w <= h else (new_long, size)
  if (new_w, new_h) == (w, h):
    return img
  return img.resize((new_w, new_h), Image.BILINEAR)


def center_crop(img: Image.Image, size: int = CROP) -> Image.Image:
  """`transforms.CenterCrop(size)` on a PIL image.

  A side smaller than `size` is first zero-padded as torchvision does (the
  odd pixel on the right/bottom); offsets are `int(round((H - size) / 2))`.
  """
  w, h = img.size
  if w < size or h < size:
    pad_l, pad_t = max(size - w, 0) // 2, max(size - h, 0) // 2
    padded = Image.new(img.mode, (max(w, size), max(h, size)))
    padded.paste(img, (pad_l, pad_t))
    img, (w, h) = padded, padded.size
  top = int(round((h - size) / 2.0))
  left = int(round((w - size) / 2.0))
  return img.crop((left, top, left + size, top + size))


def resized_crop(img: Image.Image, top: int, left: int, height: int,
                 width: int, size: int = CROP) -> Image.Image:
  """`F.resized_crop(img, top, left, height, width, [size, size])`, bilinear."""
  crop = img.crop((left, top, left + width, top + height))
  if crop.size == (size, size):
    return crop
  return crop.resize((size, size), Image.BILINEAR)


def random_resized_crop_box(rng: np.random.Generator, width: int, height: int,
                            scale: Sequence[float] = SCALE,
                            ratio: Sequence[float] = RATIO
                            ) -> tuple[int, int, int, int]:
  """`RandomResizedCrop.get_params`: a (top, left, height, width) box.

  Ten tries of an area fraction uniform in `scale` and an aspect ratio
  log-uniform in `ratio`; the first box that fits is placed uniformly. If
  none fits, the whole image clipped to the ratio range, centred.
  """
  area = height * width
  log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
  for _ in range(10):
    target_area = area * rng.uniform(scale[0], scale[1])
    aspect = math.exp(rng.uniform(log_ratio[0], log_ratio[1]))
    w = int(round(math.sqrt(target_area * aspect)))
    h = int(round(math.sqrt(target_area / aspect)))
    if 0 < w <= width and 0 < h <= height:
      # torch.randint(0, n + 1) is uniform over 0..n inclusive.
      top = int(rng.integers(0, height - h + 1))
      left = int(rng.integers(0, width - w + 1))
      return top, left, h, w
  in_ratio = width / height
  if in_ratio < min(ratio):
    w, h = width, int(round(width / min(ratio)))
  elif in_ratio > max(ratio):
    h, w = height, int(round(height * max(ratio)))
  else:
    w, h = width, height
  return (height - h) // 2, (width - w) // 2, h, w


def eval_image(img: Image.Image, resize: int = RESIZE,
               crop: int = CROP) -> np.ndarray:
  """Resize(256) → CenterCrop(224), as uint8 [crop, crop, 3]."""
  return np.asarray(center_crop(resize_shorter(img, resize), crop))


def train_image(img: Image.Image, rng: np.random.Generator,
                crop: int = CROP) -> np.ndarray:
  """RandomResizedCrop(224) → RandomHorizontalFlip: uint8 [crop, crop, 3]."""
  w, h = img.size
  top, left, bh, bw = random_resized_crop_box(rng, w, h)
  out = np.asarray(resized_crop(img, top, left, bh, bw, crop))
  if rng.uniform() < 0.5:
    out = out[:, ::-1]
  return np.ascontiguousarray(out)


def _arith_normalize(x, mean, std) -> np.ndarray:
  x = np.asarray(x, np.float32) / np.float32(255)
  return (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)


@functools.lru_cache(maxsize=8)
def _table(mean: tuple, std: tuple) -> np.ndarray:
  """float32 [256 * 3]: entry 3·v + c is channel c's value for level v."""
  levels = np.repeat(np.arange(256, dtype=np.uint8)[:, None], 3, axis=1)
  return _arith_normalize(levels, mean, std).reshape(-1)


def normalize(images: np.ndarray, mean: Sequence[float] = IMAGENET_MEAN,
              std: Sequence[float] = IMAGENET_STD) -> np.ndarray:
  """ToTensor + Normalize: uint8 [..., H, W, 3] → float32, channels last.

  In float32 and in torchvision's order ((x / 255 - mean) / std), so the
  values equal torchvision's up to the layout. uint8 input goes through a
  256-level table of exactly those values: one gather instead of three
  passes over the batch (twice as fast on the host, same bits).
  """
  images = np.asarray(images)
  if images.dtype != np.uint8 or images.shape[-1:] != (3,):
    return _arith_normalize(images, mean, std)
  table = _table(tuple(float(m) for m in mean), tuple(float(s) for s in std))
  index = images.astype(np.int32) * 3 + np.arange(3, dtype=np.int32)
  out = np.empty(images.shape, np.float32)
  np.take(table, index, out=out)
  return out
