"""The three MNIST variants of CGN as pure, jittable JAX functions (SPEC §1).

Every variant is rendered on the accelerator from grayscale MNIST digits:
`render(digits, labels, rng, split)` returns float32 [B, 32, 32, 3] images in
[-1, 1] (upstream's `Normalize(0.5, 0.5)`). In the train split the colour or
texture index equals the label; in the test split it is drawn uniformly and
independently of the label (foreground and background independently).

* `double_colored` (SPEC §1.2): background colour palette[i], digit colour
  palette[(i + 4) % 10], each with N(0, 0.01²) noise per channel and sample;
  the digit is resized 28 -> 32 with torch's nearest rule and binarised at
  > 0.1. Deviation: the noisy colours are clipped to [0, 1] so that images
  stay in [-1, 1] (upstream lets them overshoot by ~0.01).
* `wildlife` (SPEC §1.3): the same mask; the 20 textures (`textures_dir()`)
  are loaded once with PIL, resized to 150x150 (PIL nearest), reflect-padded
  by 3 to 156x156, and each sample takes an independent random 32x32 crop of
  its foreground and of its background texture.
* `colored` (SPEC §1.1, after "Learning Not to Learn"): the original .npy is
  not obtainable, so it is rendered from MNIST: the digit's grey level
  multiplies a colour drawn per image from N(mean[i], 0.02 I) (clipped to
  [0, 1]) on a black background, quantised to uint8 like the stored file,
  then resized 28 -> 32 with PIL's nearest rule as upstream does. The ten
  means (`COLORED_MEANS`) are the class colours the authors' colored-MNIST
  CGN learned from the original dataset (measured from its released
  generator, see `COLORED_MEANS`; roughly 0 crimson, 1 teal, 2 yellow, 3 blue,
  4 orange, 5 purple, 6 aquamarine, 7 pale pink, 8 yellow-green, 9 rust), so
  that a classifier trained on its counterfactuals is tested on the colours
  the paper's was. Neighbours such as yellow and yellow-green lie 0.15
  apart, about one noise std: the colour is a weaker cue than with a
  palette spread over the RGB cube, as in the original data. If
  `CGN_COLORED_MNIST_NPY` names the original `mnist_10color_jitter_var_0.020
  .npy`, its pre-coloured images are used instead and only resized.

Splits follow upstream: double_colored and wildlife use MNIST train[:50000]
for train and train[50000:] for test; colored uses the official train/test.
Unlike upstream, a test set is fixed by a seed (`fixed_test_set`).
"""

import functools
import os
import pathlib
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from cgn_jax import paths
from cgn_jax.data import mnist
from cgn_jax.data import textures

VARIANTS = ("colored", "double_colored", "wildlife")
SPLITS = ("train", "test")
IMAGE_SIZE = 32
NUM_CLASSES = 10
# Upstream split of the MNIST training set for double_colored and wildlife.
DC_TRAIN_SIZE = 50000

# Double-colored palette (SPEC §1.2: CSS names as PIL resolves them), by class.
DC_PALETTE_NAMES = ("darkgreen", "darkblue", "#b03060", "orangered", "yellow",
                    "burlywood", "lime", "aqua", "fuchsia", "#6495ed")
DC_PALETTE = np.array([
    (0, 100, 0), (0, 0, 139), (176, 48, 96), (255, 69, 0), (255, 255, 0),
    (222, 184, 135), (0, 255, 0), (0, 255, 255), (255, 0, 255),
    (100, 149, 237)], np.float32) / 255.
# Upstream: colors2 = [colors1[i - 6] for i in range(10)].
DC_BACKGROUND = DC_PALETTE
DC_FOREGROUND = DC_PALETTE[[(i + 4) % 10 for i in range(10)]]
DC_NOISE_STD = 0.01

# Colored MNIST mean colours, by class: the per-class mean foreground colour
# of the authors' colored generator (cgn_colored_MNIST.pth), which learned
# the original LNTL dataset's colours. Measured (and re-checked by
# tests/test_data.py, `measure_colored_means`) on the converted checkpoint
# with eval-mode BatchNorm, 1000 noise vectors u ~ N(0, I) per class from
# PRNGKey(0): the f_text1 output (tanh,
# mapped to [0, 1]) averaged over pixels and samples, weighted by the
# clamped mask, rounded to uint8. A second seed moves no channel by more
# than 0.014. (Until this palette, an invented one was used: red, green,
# blue, yellow, magenta, cyan, white, olive, purple, teal.)
COLORED_MEAN_NAMES = ("crimson", "teal", "yellow", "blue", "orange",
                      "purple", "aquamarine", "pale pink", "yellow-green",
                      "rust")
COLORED_MEANS = np.array([
    (201, 25, 85), (8, 133, 120), (229, 220, 33), (12, 91, 200),
    (230, 145, 46), (142, 52, 180), (66, 227, 186), (241, 214, 211),
    (205, 232, 59), (173, 47, 12)], np.float32) / 255.
COLORED_MEANS_SAMPLES = 1000  # noise vectors per class of the measurement
COLORED_VAR = 0.02

TEXTURE_SIZE = 150
TEXTURE_PAD = 3
COLORED_NPY_ENV = "CGN_COLORED_MNIST_NPY"


# ---------------------------------------------------------------- resizing


def nearest_indices(in_size: int, out_size: int, rule: str) -> np.ndarray:
  """Source index of each output pixel for a nearest-neighbour resize.

  Args:
    in_size: input length.
    out_size: output length.
    rule: 'torch' (`F.interpolate(mode='nearest')`: floor(dst * in / out)) or
      'pil' (`Image.resize(NEAREST)`: floor((dst + 0.5) * in / out)).

  Returns:
    int32 [out_size], computed exactly in integers.
  """
  dst = np.arange(out_size)
  if rule == "torch":
    return (dst * in_size // out_size).astype(np.int32)
  if rule == "pil":
    return ((2 * dst + 1) * in_size // (2 * out_size)).astype(np.int32)
  raise ValueError(f"rule must be 'torch' or 'pil', got {rule!r}")


def resize_nearest(x: jax.Array, size: int, rule: str) -> jax.Array:
  """Nearest-neighbour resize of the two axes after the batch axis.

  Args:
    x: [B, H, W] or [B, H, W, C].
    size: output height and width.
    rule: 'torch' or 'pil' (see `nearest_indices`).

  Returns:
    [B, size, size(, C)], same dtype.
  """
  rows = nearest_indices(x.shape[1], size, rule)
  cols = nearest_indices(x.shape[2], size, rule)
  return jnp.take(jnp.take(x, rows, axis=1), cols, axis=2)


def _normalize(x01: jax.Array) -> jax.Array:
  # torchvision Normalize(0.5, 0.5) on a ToTensor image. XLA may turn the
  # divisions into reciprocal products (255 * (1/255) = 1.0000001), so clip
  # to keep the documented range exact.
  return jnp.clip((x01 - 0.5) / 0.5, -1., 1.)


def _digit_mask(digits: jax.Array) -> jax.Array:
  """Upstream's binary mask: /255, torch-nearest resize to 32, > 0.1."""
  d = digits.astype(jnp.float32) / 255.
  d = resize_nearest(d, IMAGE_SIZE, "torch")
  return (d > 0.1).astype(jnp.float32)[..., None]


def _indices(rng, labels, split):
  """(fg, bg) nuisance indices: the label in train, uniform in test."""
  _check_split(split)
  if split == "train":
    return labels, labels
  k_fg, k_bg = jax.random.split(rng)
  shape = labels.shape
  return (jax.random.randint(k_fg, shape, 0, NUM_CLASSES, jnp.int32),
          jax.random.randint(k_bg, shape, 0, NUM_CLASSES, jnp.int32))


def _check_split(split):
  if split not in SPLITS:
    raise ValueError(f"split must be 'train' or 'test', got {split!r}")


# ---------------------------------------------------------------- textures


def load_textures(textures_dir: os.PathLike | None = None
                  ) -> tuple[np.ndarray, np.ndarray]:
  """Wildlife textures, resized and reflect-padded once on the host.

  Args:
    textures_dir: folder with `object/*.jpg` and `background/*.jpg` (ten
      each, class = sorted order); default `paths.textures_dir()`
      (`CGN_TEXTURES_DIR`, else the upstream copy in ../shared).

  Returns:
    (foreground, background), each float32 [10, 156, 156, 3] in [-1, 1].

  Raises:
    FileNotFoundError: the folder does not hold ten JPEGs in each subfolder.
  """
  if textures_dir is None:
    textures_dir = paths.textures_dir()
    if textures_dir == paths.cache_dir() / "textures" and not (
        textures.is_complete(textures_dir)):
      textures.download(textures_dir)
  return _load_textures(str(pathlib.Path(textures_dir)))


@functools.lru_cache(maxsize=4)
def _load_textures(d: str):
  out = []
  for sub in ("object", "background"):
    files = sorted((pathlib.Path(d) / sub).glob("*.jpg"))
    if len(files) != NUM_CLASSES:
      raise FileNotFoundError(
          f"expected {NUM_CLASSES} texture JPEGs in {pathlib.Path(d) / sub}, "
          f"found {len(files)}. Set CGN_TEXTURES_DIR to a folder with "
          "object/ and background/ textures (upstream "
          "mnists/data/textures) or CGN_SHARED_DIR to the shared assets.")
    texs = []
    for f in files:
      with Image.open(f) as im:
        # torchvision Resize((150, 150), NEAREST) on a PIL image.
        im = im.convert("RGB").resize((TEXTURE_SIZE, TEXTURE_SIZE),
                                      Image.NEAREST)
        t = np.asarray(im)
      # RandomCrop(padding=3, padding_mode='reflect') pads with np.pad.
      p = TEXTURE_PAD
      t = np.pad(t, ((p, p), (p, p), (0, 0)), mode="reflect")
      texs.append((t.astype(np.float32) / 255. - 0.5) / 0.5)
    out.append(np.stack(texs))
  fg, bg = out
  fg.flags.writeable = False
  bg.flags.writeable = False
  return fg, bg


def _random_crops(rng, textures, idx):
  """One uniform 32x32 crop per sample of textures[idx] ([N, 156, 156, 3])."""
  hi = textures.shape[1] - IMAGE_SIZE + 1  # torchvision: randint(0, h-th+1)
  off = jax.random.randint(rng, idx.shape + (2,), 0, hi, jnp.int32)

  def crop(i, o):
    # A (1, 32, 32, 3) slice per sample: under vmap this is one gather,
    # without materialising a whole texture per sample.
    return jax.lax.dynamic_slice(
        textures, (i, o[0], o[1], 0), (1, IMAGE_SIZE, IMAGE_SIZE, 3))[0]

  return jax.vmap(crop)(idx, off)


# ---------------------------------------------------------------- renderers


def render_double_colored(digits, labels, rng, split):
  """Double-colored MNIST (SPEC §1.2).

  Args:
    digits: uint8 [B, 28, 28].
    labels: int [B].
    rng: a JAX PRNG key.
    split: 'train' (colours from the label) or 'test' (independent uniform
      foreground and background colours). Static under jit.

  Returns:
    (images float32 [B, 32, 32, 3] in [-1, 1], {'fg': int32 [B], 'bg': int32
    [B]} the colour indices used).
  """
  k_idx, k_fg, k_bg = jax.random.split(rng, 3)
  fg_idx, bg_idx = _indices(k_idx, labels, split)
  n = labels.shape + (3,)
  fg = jnp.asarray(DC_FOREGROUND)[fg_idx] + DC_NOISE_STD * jax.random.normal(
      k_fg, n)
  bg = jnp.asarray(DC_BACKGROUND)[bg_idx] + DC_NOISE_STD * jax.random.normal(
      k_bg, n)
  fg = jnp.clip(fg, 0., 1.)[:, None, None, :]
  bg = jnp.clip(bg, 0., 1.)[:, None, None, :]
  m = _digit_mask(digits)
  images = _normalize(m * fg + (1. - m) * bg)
  return images, {"fg": fg_idx, "bg": bg_idx}


def make_render_wildlife(textures=None):
  """Wildlife MNIST (SPEC §1.3), with the textures closed over as constants.

  Args:
    textures: (foreground, background) as from `load_textures`; None loads
      them from `paths.textures_dir()`.

  Returns:
    render(digits, labels, rng, split) -> (images, {'fg', 'bg'}), like
    `render_double_colored`, with texture indices.
  """
  fg_tex, bg_tex = load_textures() if textures is None else textures
  fg_tex = jnp.asarray(fg_tex, jnp.float32)
  bg_tex = jnp.asarray(bg_tex, jnp.float32)

  def render(digits, labels, rng, split):
    k_idx, k_fg, k_bg = jax.random.split(rng, 3)
    fg_idx, bg_idx = _indices(k_idx, labels, split)
    fg = _random_crops(k_fg, fg_tex, fg_idx)
    bg = _random_crops(k_bg, bg_tex, bg_idx)
    m = _digit_mask(digits)
    return m * fg + (1. - m) * bg, {"fg": fg_idx, "bg": bg_idx}

  return render


def render_colored(digits, labels, rng, split):
  """Colored MNIST (SPEC §1.1), rendered from MNIST or read from LNTL.

  Args:
    digits: uint8 [B, 28, 28] grey digits, or uint8 [B, 28, 28, 3] images
      already coloured (the LNTL .npy), which are only resized.
    labels: int [B].
    rng: a JAX PRNG key.
    split: 'train' (mean colour of the label) or 'test' (uniform mean
      colour). Static under jit.

  Returns:
    (images float32 [B, 32, 32, 3] in [-1, 1], {'fg': int32 [B] mean-colour
    index, -1 for pre-coloured input; 'bg': int32 [B] all -1, the background
    is always black}).
  """
  none = jnp.full(labels.shape, -1, jnp.int32)
  if digits.ndim == 4:
    _check_split(split)
    x = resize_nearest(digits, IMAGE_SIZE, "pil").astype(jnp.float32)
    return _normalize(x / 255.), {"fg": none, "bg": none}
  k_idx, k_noise = jax.random.split(rng)
  idx, _ = _indices(k_idx, labels, split)
  color = jnp.asarray(COLORED_MEANS)[idx] + np.sqrt(COLORED_VAR) * (
      jax.random.normal(k_noise, labels.shape + (3,)))
  color = jnp.clip(color, 0., 1.)[:, None, None, :]
  # Colour at 28x28 and quantise as a uint8 file would, then resize; nearest
  # resizing commutes with the per-image colouring, so resize first.
  d = resize_nearest(digits, IMAGE_SIZE, "pil").astype(jnp.float32)
  x = jnp.round(d[..., None] * color)
  return _normalize(x / 255.), {"fg": idx, "bg": none}


def make_renderer(variant: str, *, with_nuisance: bool = False,
                  textures=None) -> Callable:
  """The renderer of one variant: a pure function to call inside jit.

  Args:
    variant: one of VARIANTS.
    with_nuisance: also return {'fg': int32 [B], 'bg': int32 [B]}, the
      colour/texture indices used (-1 where there is none).
    textures: wildlife only: (foreground, background) arrays to use instead
      of loading them (e.g. synthetic ones in benchmarks).

  Returns:
    render(digits, labels, rng, split) -> images float32 [B, 32, 32, 3] in
    [-1, 1] (or (images, nuisance)). `split` must be static under jit.
  """
  if variant == "colored":
    fn = render_colored
  elif variant == "double_colored":
    fn = render_double_colored
  elif variant == "wildlife":
    fn = make_render_wildlife(textures)
  else:
    raise ValueError(f"unknown variant {variant!r}; choose from {VARIANTS}")
  if with_nuisance:
    return fn
  return lambda digits, labels, rng, split: fn(digits, labels, rng, split)[0]


@functools.lru_cache(maxsize=None)
def jitted_renderer(variant: str, with_nuisance: bool = False) -> Callable:
  """`jax.jit(make_renderer(variant))` with `split` static, cached.

  Args:
    variant: one of VARIANTS.
    with_nuisance: see `make_renderer`.

  Returns:
    render(digits, labels, rng, split), compiled once per shape and split.
  """
  return jax.jit(make_renderer(variant, with_nuisance=with_nuisance),
                 static_argnums=3)


# ---------------------------------------------------------------- data


def colored_npy_path() -> pathlib.Path | None:
  """The LNTL colored-MNIST .npy named by CGN_COLORED_MNIST_NPY, or None."""
  p = os.environ.get(COLORED_NPY_ENV)
  return pathlib.Path(p).expanduser() if p else None


@functools.lru_cache(maxsize=2)
def _load_lntl(path: str) -> dict:
  p = pathlib.Path(path)
  if not p.is_file():
    raise FileNotFoundError(
        f"{COLORED_NPY_ENV}={p} does not exist. Point it at "
        "mnist_10color_jitter_var_0.020.npy from 'Learning Not to Learn', or "
        "unset it to render colored MNIST from MNIST.")
  # A pickled dict (upstream loads it the same way); only open files you trust.
  d = np.load(p, encoding="latin1", allow_pickle=True).item()
  out = {}
  for split in SPLITS:
    images = np.asarray(d[f"{split}_image"], np.uint8)
    labels = np.asarray(d[f"{split}_label"]).astype(np.int32)
    if images.ndim != 4 or images.shape[1:] != (28, 28, 3):
      raise ValueError(f"{p}: {split}_image has shape {images.shape}, "
                       "expected [N, 28, 28, 3] uint8 (HWC)")
    images.flags.writeable = False
    labels.flags.writeable = False
    out[split] = (images, labels)
  return out


def split_arrays(variant: str, split: str, data_dir=None
                 ) -> tuple[np.ndarray, np.ndarray]:
  """The host arrays of one variant's split, with upstream's splits.

  Args:
    variant: one of VARIANTS.
    split: 'train' or 'test'.
    data_dir: TFDS data dir for MNIST (default CGN_TFDS_DIR, else TFDS's).

  Returns:
    (inputs, labels int32 [N]): inputs are uint8 [N, 28, 28] digits, or
    uint8 [N, 28, 28, 3] coloured images for 'colored' when
    CGN_COLORED_MNIST_NPY is set. Read-only views of cached arrays.
  """
  _check_split(split)
  if variant == "colored":
    npy = colored_npy_path()
    if npy is not None:
      return _load_lntl(str(npy))[split]
    return mnist.load_mnist(split, data_dir)
  if variant in ("double_colored", "wildlife"):
    digits, labels = mnist.load_mnist("train", data_dir)
    s = slice(None, DC_TRAIN_SIZE) if split == "train" else slice(
        DC_TRAIN_SIZE, None)
    return digits[s], labels[s]
  raise ValueError(f"unknown variant {variant!r}; choose from {VARIANTS}")


def fixed_test_set(variant: str, seed: int = 0, *, with_nuisance=False,
                   data_dir=None, textures=None):
  """The whole test split rendered once, fixed by a seed.

  The same seed gives bitwise the same images on the same backend.

  Args:
    variant: one of VARIANTS.
    seed: seeds the colour/texture draws.
    with_nuisance: also return the {'fg', 'bg'} indices (numpy int32).
    data_dir: TFDS data dir for MNIST.
    textures: wildlife only, see `make_renderer`.

  Returns:
    (images float32 [N, 32, 32, 3] in [-1, 1], labels int32 [N]) as numpy,
    plus the nuisance dict when `with_nuisance`.
  """
  inputs, labels = split_arrays(variant, "test", data_dir)
  if textures is None:
    render = jitted_renderer(variant, with_nuisance=True)
  else:
    render = jax.jit(make_renderer(variant, with_nuisance=True,
                                   textures=textures), static_argnums=3)
  images, nuisance = render(jnp.asarray(inputs), jnp.asarray(labels),
                            jax.random.key(seed), "test")
  images = np.asarray(images)
  labels = np.asarray(labels)
  if with_nuisance:
    return images, labels, jax.tree.map(np.asarray, nuisance)
  return images, labels
