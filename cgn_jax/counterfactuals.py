"""MNIST counterfactual datasets: generation on the accelerator, and storage.

Generation follows upstream `generate_cf_dataset` (SPEC §3.1): the CGN runs
in eval mode (BatchNorm running statistics) with the patch shuffler still on.
For each group of 100 shape samples (upstream's batch):

  1. draw labels y ~ U{0..9}^100 and one mask from the shape mechanism
     (noise u, label y), as upstream's normal-mode call;
  2. `cfs_per_shape` times: fresh noise for the two texture mechanisms, the
     foreground and background labels are two random permutations of y within
     the group (upstream's counterfactual mode), both textures go through the
     shuffler and are composed with the fixed mask from step 1.

So every shape sample has exactly one mask shared by its `cfs_per_shape`
counterfactuals, and the dataset is ordered like upstream's: group, then
counterfactual pass, then sample. Unlike upstream, the foreground and
background labels are stored too, plus `shape_id` (the index of the shape
sample whose mask an image uses).

Speed: many groups run in one jitted call (a block of `shapes_per_block`
shape samples, i.e. `shapes_per_block * cfs_per_shape` images, several
blocks per call via `lax.map`); there is no Python loop over images. The
PRNG key of block b is `fold_in(PRNGKey(seed), b)`, so the bytes written do
not depend on how many blocks a call holds.

Storage (`ShardWriter` / `ShardedSource`): a directory with `index.json` and
fixed-size `.npy` shards per field, e.g. `image-00003.npy` (uint8
[n, 32, 32, 3]) and `label-00003.npy` (int32 [n]). Images are quantised from
[-1, 1] as q = round((x + 1) * 127.5) (clipped to 0..255) and read back as
x = q / 127.5 - 1 (`dequantize`), an error of at most 1/255. Shards are read
through `np.load(mmap_mode='r')`, so training streams a 1e6-image set (3 GB)
without loading it. A directory is written under a temporary name and renamed
when complete, so a crash never leaves a readable half-written dataset.
"""

import functools
import json
import math
import os
import pathlib
import shutil
from typing import Any, Callable, Iterable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from cgn_jax.models import cgn as cgn_lib
from cgn_jax.models import composer

FORMAT = "cgn_jax.shards/v1"
INDEX = "index.json"
GROUP = 100  # upstream's batch: label permutations stay within 100 samples
IMAGE_ENCODING = "uint8: q = round((x + 1) * 127.5), x = q / 127.5 - 1"
CF_FIELDS = ("image", "label", "fg_label", "bg_label", "shape_id")

# Subdirectories of a generate.py workdir.
CF_DIR = "counterfactuals"
REAL_TRAIN_DIR = "real_train"
REAL_TEST_DIR = "real_test"


# ------------------------------------------------------------ quantisation --


def quantize(x):
  """[-1, 1] float images -> uint8 (works on numpy and jax arrays)."""
  xp = jnp if isinstance(x, jax.Array) else np
  return xp.clip(xp.round((x + 1.0) * 127.5), 0, 255).astype(xp.uint8)


def dequantize(q):
  """uint8 images -> float32 in [-1, 1] (numpy or jax)."""
  xp = jnp if isinstance(q, jax.Array) else np
  return q.astype(xp.float32) / 127.5 - 1.0


# ---------------------------------------------------------------- storage --


class ShardWriter:
  """Writes fixed-size `.npy` shards and an index, atomically.

  Usage: `with ShardWriter(dir, shard_size) as w: w.write(batch)`; `batch` is
  a dict of arrays sharing the leading axis. On a clean exit the temporary
  directory is renamed to `dir`; on an exception it is deleted.
  """

  def __init__(self, directory, shard_size: int = 50_000,
               metadata: Mapping[str, Any] | None = None,
               overwrite: bool = False):
    self.directory = pathlib.Path(directory)
    if self.directory.exists() and not overwrite:
      raise FileExistsError(
          f"{self.directory} already exists; delete it or pass overwrite")
    self.shard_size = int(shard_size)
    self.metadata = dict(metadata or {})
    self.overwrite = overwrite
    self._tmp = self.directory.with_name(self.directory.name + ".tmp")
    self._buffers = None
    self._fill = 0
    self._shards = []
    self._fields = {}
    self.num = 0

  def __enter__(self):
    if self._tmp.exists():
      shutil.rmtree(self._tmp)
    self._tmp.mkdir(parents=True)
    return self

  def __exit__(self, exc_type, exc, tb):
    if exc_type is not None:
      shutil.rmtree(self._tmp, ignore_errors=True)
      return False
    self.close()
    return False

  def write(self, batch: Mapping[str, np.ndarray]) -> None:
    """Appends a batch (dict of arrays with the same leading size)."""
    batch = {k: np.asarray(v) for k, v in batch.items()}
    n = {len(v) for v in batch.values()}
    if len(n) != 1:
      raise ValueError(f"fields have different lengths: "
                       f"{ {k: len(v) for k, v in batch.items()} }")
    n = n.pop()
    if self._buffers is None:
      self._fields = {k: {"dtype": v.dtype.str, "shape": list(v.shape[1:])}
                      for k, v in batch.items()}
      self._buffers = {k: np.empty((self.shard_size,) + v.shape[1:], v.dtype)
                       for k, v in batch.items()}
    elif set(batch) != set(self._buffers):
      raise ValueError(f"fields {sorted(batch)} differ from the first "
                       f"batch's {sorted(self._buffers)}")
    start = 0
    while start < n:
      take = min(n - start, self.shard_size - self._fill)
      for k, v in batch.items():
        self._buffers[k][self._fill:self._fill + take] = v[start:start + take]
      self._fill += take
      start += take
      if self._fill == self.shard_size:
        self._flush()

  def _flush(self) -> None:
    if not self._fill:
      return
    i = len(self._shards)
    files = {}
    for k, buf in self._buffers.items():
      name = f"{k}-{i:05d}.npy"
      np.save(self._tmp / name, buf[:self._fill])
      files[k] = name
    self._shards.append({"num": self._fill, "files": files})
    self.num += self._fill
    self._fill = 0

  def close(self) -> None:
    """Flushes the last shard, writes the index and renames into place."""
    self._flush()
    index = {"format": FORMAT, "num": self.num, "shard_size": self.shard_size,
             "fields": self._fields, "shards": self._shards,
             "image_encoding": IMAGE_ENCODING, "metadata": self.metadata}
    with open(self._tmp / INDEX, "w") as f:
      json.dump(index, f, indent=1, sort_keys=True)
    if self.directory.exists():  # overwrite=True (checked in __init__)
      old = self.directory.with_name(self.directory.name + ".old")
      shutil.rmtree(old, ignore_errors=True)
      os.replace(self.directory, old)
      os.replace(self._tmp, self.directory)
      shutil.rmtree(old)
    else:
      os.replace(self._tmp, self.directory)


def is_complete(directory) -> bool:
  """Whether `directory` holds a finished shard dataset."""
  return (pathlib.Path(directory) / INDEX).is_file()


def read_index(directory) -> dict:
  """The `index.json` of a shard dataset, with a clear error if absent."""
  path = pathlib.Path(directory) / INDEX
  if not path.is_file():
    raise FileNotFoundError(
        f"{directory} is not a dataset written by generate.py (no {INDEX}); "
        "run `python generate.py --config=configs/counterfactuals_mnist.py:"
        "VARIANT --workdir=DIR --config.cgn=CKPT` and pass DIR")
  with open(path) as f:
    index = json.load(f)
  if index.get("format") != FORMAT:
    raise ValueError(f"{path}: unknown format {index.get('format')!r}, "
                     f"expected {FORMAT!r}")
  return index


class ShardedSource:
  """Random access to a shard dataset (a grain `RandomAccessDataSource`).

  Shards are memory-mapped lazily; nothing is read until indexed. Records are
  dicts of numpy values; `gather(indices)` returns a whole batch at once
  (the fast path for training: one fancy-index read per shard touched).

  Args:
    directory: a dataset written by `ShardWriter`.
    fields: the fields to read (default: all).
  """

  def __init__(self, directory, fields: Sequence[str] | None = None):
    self.directory = pathlib.Path(directory)
    self.index = read_index(directory)
    self.fields = tuple(fields or self.index["fields"])
    missing = sorted(set(self.fields) - set(self.index["fields"]))
    if missing:
      raise KeyError(f"{directory} has no field(s) {missing}; it has "
                     f"{sorted(self.index['fields'])}")
    sizes = [s["num"] for s in self.index["shards"]]
    self._starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    self._maps = {}

  @property
  def metadata(self) -> dict:
    return self.index["metadata"]

  def __len__(self) -> int:
    return int(self.index["num"])

  def __repr__(self) -> str:
    return f"ShardedSource({str(self.directory)!r}, n={len(self)})"

  def _array(self, shard: int, field: str) -> np.ndarray:
    key = (shard, field)
    if key not in self._maps:
      name = self.index["shards"][shard]["files"][field]
      self._maps[key] = np.load(self.directory / name, mmap_mode="r")
    return self._maps[key]

  def _locate(self, indices: np.ndarray):
    indices = np.asarray(indices, np.int64)
    if indices.size and (indices.min() < 0 or indices.max() >= len(self)):
      raise IndexError(f"index out of range for {len(self)} records")
    shard = np.searchsorted(self._starts, indices, side="right") - 1
    return shard, indices - self._starts[shard]

  def gather(self, indices) -> dict[str, np.ndarray]:
    """A batch {field: array [len(indices), ...]} in the order of indices."""
    indices = np.asarray(indices, np.int64).reshape(-1)
    shard, offset = self._locate(indices)
    out = {}
    for field in self.fields:
      spec = self.index["fields"][field]
      arr = np.empty((len(indices),) + tuple(spec["shape"]),
                     np.dtype(spec["dtype"]))
      for s in np.unique(shard):
        sel = shard == s
        arr[sel] = self._array(int(s), field)[offset[sel]]
      out[field] = arr
    return out

  def __getitem__(self, i) -> dict[str, np.ndarray]:
    return {k: v[0] for k, v in self.gather([int(i)]).items()}

  def __getitems__(self, indices) -> list[dict[str, np.ndarray]]:
    batch = self.gather(indices)
    return [{k: v[j] for k, v in batch.items()} for j in range(len(indices))]


class ConcatSource:
  """Several sources back to back (e.g. counterfactual + real images)."""

  def __init__(self, sources: Sequence[Any]):
    if not sources:
      raise ValueError("ConcatSource needs at least one source")
    self.sources = list(sources)
    self._starts = np.cumsum([0] + [len(s) for s in sources]).astype(np.int64)

  def __len__(self) -> int:
    return int(self._starts[-1])

  def gather(self, indices) -> dict[str, np.ndarray]:
    indices = np.asarray(indices, np.int64).reshape(-1)
    which = np.searchsorted(self._starts, indices, side="right") - 1
    parts = {}
    for s in np.unique(which):
      sel = np.nonzero(which == s)[0]
      parts[int(s)] = (sel, self.sources[s].gather(indices[sel]
                                                   - self._starts[s]))
    fields = set.intersection(*(set(p[1]) for p in parts.values()))
    out = {}
    for field in sorted(fields):
      first = next(iter(parts.values()))[1][field]
      arr = np.empty((len(indices),) + first.shape[1:], first.dtype)
      for sel, batch in parts.values():
        arr[sel] = batch[field]
      out[field] = arr
    return out

  def __getitem__(self, i):
    return {k: v[0] for k, v in self.gather([int(i)]).items()}


def write_arrays(directory, arrays: Mapping[str, np.ndarray], *,
                 shard_size: int = 50_000, batch: int = 10_000,
                 metadata: Mapping[str, Any] | None = None,
                 overwrite: bool = False) -> pathlib.Path:
  """Writes in-memory arrays (images already uint8) as a shard dataset."""
  n = len(next(iter(arrays.values())))
  with ShardWriter(directory, shard_size, metadata, overwrite) as w:
    for i in range(0, n, batch):
      w.write({k: v[i:i + batch] for k, v in arrays.items()})
  return pathlib.Path(directory)



# ----------------------------------------- fast eval-mode mechanisms (CGN) --
#
# Generation only runs the CGN in eval mode, where two exact rewrites cut the
# work roughly in half (the generator is conv-bound):
#  * BatchNorm with running statistics is an affine map, folded into the
#    preceding conv's kernel and bias;
#  * "nearest upsample x2, then 3x3 conv (padding 1)" equals four 2x2 convs
#    on the low-resolution input, one per output phase (a, b), whose taps are
#    sums of the 3x3 taps: 16 instead of 36 multiply-adds per input pixel.
# They read the same variables as `cgn_lib.CGN` (the converter's names) and
# agree with `CGN.apply(..., train=False)` to float rounding (tested).

_LEAK = 0.2    # LeakyReLU slope of the CGN
_BN_EPS = 1e-5  # torch BatchNorm2d default, as the CGN


def _fold_bn(kernel, bias, params, stats):
  """Folds eval-mode BatchNorm into the conv before it: (kernel, bias)."""
  s = params["scale"] * jax.lax.rsqrt(stats["var"] + _BN_EPS)
  b = 0.0 if bias is None else bias
  return kernel * s, (b - stats["mean"]) * s + params["bias"]


def _phase_taps(kernel, axis):
  """The two 2-tap kernels of a 3-tap kernel seen through x2 nearest upsampling.

  Output row 2i reads upsampled rows 2i-1, 2i, 2i+1 = input rows i-1, i, i
  (taps w0, w1 + w2); output row 2i+1 reads input rows i, i, i+1
  (taps w0 + w1, w2).
  """
  k0, k1, k2 = jnp.split(kernel, 3, axis=axis)
  return (jnp.concatenate([k0, k1 + k2], axis),
          jnp.concatenate([k0 + k1, k2], axis))


def _conv(x, kernel, padding):
  return jax.lax.conv_general_dilated(
      x, kernel.astype(x.dtype), (1, 1), padding,
      dimension_numbers=("NHWC", "HWIO", "NHWC"))


def upsample_conv(x: jax.Array, kernel: jax.Array,
                  bias: jax.Array) -> jax.Array:
  """conv3x3(pad 1)(nearest_upsample_x2(x)) + bias, without upsampling.

  Args:
    x: [B, H, W, Cin].
    kernel: [3, 3, Cin, Cout] HWIO.
    bias: [Cout].

  Returns:
    [B, 2H, 2W, Cout].
  """
  rows = []
  for a, ka in enumerate(_phase_taps(kernel, 0)):
    cols = [_conv(x, kab, ((1 - a, a), (1 - b, b)))
            for b, kab in enumerate(_phase_taps(ka, 1))]
    rows.append(jnp.stack(cols, axis=3))      # [B, H, W, 2 (b), C]
  out = jnp.stack(rows, axis=2)               # [B, H, 2 (a), W, 2 (b), C]
  n, h, _, w, _, c = out.shape
  return out.reshape(n, 2 * h, 2 * w, c) + bias.astype(out.dtype)


def _leaky_relu(x):
  return jnp.where(x >= 0, x, _LEAK * x)


def _dense_input(params, p, u, y, dtype):
  inp = jnp.concatenate(
      [u.astype(jnp.float32), params["label_emb"]["embedding"][y]], -1)
  x = inp.astype(dtype) @ p["layers_0"]["kernel"].astype(dtype)
  x = x + p["layers_0"]["bias"].astype(dtype)
  c = p[next(k for k in ("layers_3", "layers_4") if k in p)]["kernel"].shape[2]
  side = math.isqrt(x.shape[-1] // c)
  return x.reshape(x.shape[0], side, side, c)


def fast_texture(variables, which: str, u, y, dtype=jnp.float32):
  """Eval-mode `f_text1`/`f_text2` ('foreground'/'background'), raw output.

  Same result as `CGN.apply(variables, u, y, train=False, method=which)`.
  """
  name = {"foreground": "f_text1", "background": "f_text2"}[which]
  p, st = variables["params"][name], variables["batch_stats"][name]
  x = _dense_input(variables["params"], p, u, y, dtype)
  k, b = _fold_bn(p["layers_3"]["kernel"], None, p["layers_4"], st["layers_4"])
  x = _leaky_relu(upsample_conv(x, k, b))
  k, b = _fold_bn(p["layers_7"]["kernel"], None, p["layers_8"], st["layers_8"])
  x = _leaky_relu(upsample_conv(x, k, b))
  k, b = _fold_bn(p["layers_10"]["kernel"], p["layers_10"]["bias"],
                  p["layers_11"], st["layers_11"])
  x = _conv(x, k, ((1, 1), (1, 1))) + b.astype(x.dtype)
  return jnp.tanh(x).astype(jnp.float32)


def fast_shape(variables, u, y, dtype=jnp.float32):
  """Eval-mode `f_shape`, raw output [B, H, W, 1] (before the clamp)."""
  p, st = variables["params"]["f_shape"], variables["batch_stats"]["f_shape"]
  x = _dense_input(variables["params"], p, u, y, dtype)
  x = cgn_lib.instance_norm(x)
  k, b = _fold_bn(p["layers_4"]["kernel"], None, p["layers_5"], st["layers_5"])
  x = cgn_lib.instance_norm(_leaky_relu(upsample_conv(x, k, b)))
  k, b = _fold_bn(p["layers_9"]["kernel"], None, p["layers_10"],
                  st["layers_10"])
  x = cgn_lib.instance_norm(_leaky_relu(upsample_conv(x, k, b)))
  return x.astype(jnp.float32)


# --------------------------------------------------------------- generation --


def permute_within_groups(key: jax.Array, y: jax.Array,
                          group: int = GROUP) -> jax.Array:
  """Shuffles y [S] independently within consecutive groups of `group`."""
  g = y.reshape(-1, group)
  keys = jax.random.split(key, g.shape[0])
  perms = jax.vmap(lambda k: jax.random.permutation(k, group))(keys)
  return jnp.take_along_axis(g, perms, axis=1).reshape(-1)


def make_block_fn(model: cgn_lib.CGN, cfs_per_shape: int,
                  shapes_per_block: int, group: int = GROUP,
                  fast: bool = True) -> Callable[..., dict]:
  """The un-jitted generator of one block of counterfactuals.

  Args:
    model: the CGN module (its `dtype` sets the compute precision).
    cfs_per_shape: counterfactuals per shape sample (upstream `no_cfs`).
    shapes_per_block: shape samples per block, a multiple of `group`.
    group: the label-permutation group size (upstream's batch, 100).
    fast: use `fast_shape`/`fast_texture` (same numbers, about half the
      work) instead of `model.apply`.

  Returns:
    f(variables, key, block_index) -> dict with 'image' uint8
    [shapes_per_block * cfs_per_shape, H, W, 3], int32 'label', 'fg_label',
    'bg_label', 'shape_id', and float32 'mask' [shapes_per_block, H, W, 1]
    (the one mask per shape sample), ordered group, pass, sample.
  """
  if shapes_per_block % group:
    raise ValueError(f"shapes_per_block={shapes_per_block} must be a "
                     f"multiple of {group}")
  s, cfs = shapes_per_block, cfs_per_shape

  def apply(variables, method, u, y):
    if not fast:
      return model.apply(variables, u, y, train=False, method=method)
    if method == "shape":
      return fast_shape(variables, u, y, model.dtype)
    return fast_texture(variables, method, u, y, model.dtype)

  def block(variables, key, block_index):
    k_y, k_u, k_cf = jax.random.split(key, 3)
    y = jax.random.randint(k_y, (s,), 0, model.n_classes, jnp.int32)
    u = jax.random.normal(k_u, (s, model.latent_sz))
    mask = cgn_lib.mask_from_premask(apply(variables, "shape", u, y), 1)

    def one_pass(k):
      k_p1, k_p2, k_u1, k_u2, k_s1, k_s2 = jax.random.split(k, 6)
      y_fg = permute_within_groups(k_p1, y, group)
      y_bg = permute_within_groups(k_p2, y, group)
      fg = apply(variables, "foreground",
                 jax.random.normal(k_u1, (s, model.latent_sz)), y_fg)
      bg = apply(variables, "background",
                 jax.random.normal(k_u2, (s, model.latent_sz)), y_bg)
      fg = cgn_lib.patch_shuffle(fg, k_s1)
      bg = cgn_lib.patch_shuffle(bg, k_s2)
      return quantize(composer.compose(mask, fg, bg)), y_fg, y_bg

    # Passes run one after another so that peak memory is one pass.
    images, y_fg, y_bg = jax.lax.map(one_pass, jax.random.split(k_cf, cfs))

    def order(a):  # [cfs, S, ...] -> [groups, cfs, group, ...] -> flat
      a = a.reshape((cfs, s // group, group) + a.shape[2:])
      return jnp.swapaxes(a, 0, 1).reshape((s * cfs,) + a.shape[3:])
    shape_id = (block_index * s + jnp.arange(s, dtype=jnp.int32))
    tile = lambda a: order(jnp.broadcast_to(a, (cfs,) + a.shape))
    return dict(image=order(images), label=tile(y), fg_label=order(y_fg),
                bg_label=order(y_bg), shape_id=tile(shape_id), mask=mask)

  return block


@functools.lru_cache(maxsize=16)  # one compilation per configuration
def make_generate_fn(model: cgn_lib.CGN, cfs_per_shape: int,
                     shapes_per_block: int, blocks_per_call: int = 1,
                     *, keep_mask: bool = False,
                     fast: bool = True) -> Callable[..., dict]:
  """A jitted generator of `blocks_per_call` consecutive blocks.

  Returns:
    f(variables, key, first_block) -> dict of arrays with
    `blocks_per_call * shapes_per_block * cfs_per_shape` images (and 'mask'
    [blocks * shapes_per_block, H, W, 1] when `keep_mask`). Block b uses the
    key `fold_in(key, b)`.
  """
  block = make_block_fn(model, cfs_per_shape, shapes_per_block, fast=fast)

  def fn(variables, key, first_block):
    ids = first_block + jnp.arange(blocks_per_call, dtype=jnp.int32)
    out = jax.lax.map(
        lambda b: block(variables, jax.random.fold_in(key, b), b), ids)
    if not keep_mask:
      out.pop("mask")
    return {k: v.reshape((-1,) + v.shape[2:]) for k, v in out.items()}

  return jax.jit(fn)


def dataset_size(num: int, cfs_per_shape: int) -> int:
  """Images generated for a requested `num`: upstream's floor rule.

  Upstream runs ⌊num / 100 / cfs⌋ iterations of 100·cfs images.
  """
  n = int(num) // (GROUP * cfs_per_shape) * GROUP * cfs_per_shape
  if n <= 0:
    raise ValueError(f"num={num} is smaller than one group of "
                     f"{GROUP} x cfs_per_shape={cfs_per_shape} images")
  return n


def generate(variables, model: cgn_lib.CGN, *, num: int, cfs_per_shape: int,
             seed: int = 0, shapes_per_block: int = 1000,
             blocks_per_call: int = 1, fast: bool = True,
             progress: bool = True) -> Iterable[dict[str, np.ndarray]]:
  """Yields host batches of counterfactuals until `dataset_size(num)` images.

  The next call is dispatched before the previous result is copied to the
  host, so device work overlaps with the caller writing shards.

  Args:
    variables: the CGN's {'params', 'batch_stats'}.
    model: the CGN module.
    num: requested number of images (rounded down as upstream).
    cfs_per_shape: counterfactuals per shape sample.
    seed: PRNG seed; the same seed gives the same images.
    shapes_per_block: shape samples per block (multiple of 100).
    blocks_per_call: blocks per jitted call.
    fast: the folded eval-mode mechanisms (see `fast_texture`).
    progress: show a tqdm bar.

  Yields:
    dicts with `CF_FIELDS`, numpy, images uint8.
  """
  total = dataset_size(num, cfs_per_shape)
  if shapes_per_block % GROUP:
    raise ValueError(f"shapes_per_block={shapes_per_block} must be a "
                     f"multiple of {GROUP}")
  per_block = shapes_per_block * cfs_per_shape
  blocks_per_call = max(1, min(blocks_per_call, math.ceil(total / per_block)))
  per_call = per_block * blocks_per_call
  calls = math.ceil(total / per_call)
  fn = make_generate_fn(model, cfs_per_shape, shapes_per_block,
                        blocks_per_call, fast=fast)
  key = jax.random.PRNGKey(seed)
  bar = None
  if progress:
    from tqdm import tqdm  # pylint: disable=g-import-not-at-top
    bar = tqdm(total=total, unit="img", desc="counterfactuals")
  pending = fn(variables, key, 0)
  done = 0
  for i in range(calls):
    current = pending
    if i + 1 < calls:  # async dispatch: the device starts the next call now
      pending = fn(variables, key, (i + 1) * blocks_per_call)
    batch = jax.device_get(current)
    take = min(per_call, total - done)
    yield {k: v[:take] for k, v in batch.items()}
    done += take
    if bar is not None:
      bar.update(take)
  if bar is not None:
    bar.close()


def write_counterfactuals(directory, variables, model: cgn_lib.CGN, *,
                          num: int, cfs_per_shape: int, seed: int = 0,
                          shapes_per_block: int = 1000,
                          blocks_per_call: int = 1, fast: bool = True,
                          shard_size: int = 50_000,
                          metadata: Mapping[str, Any] | None = None,
                          overwrite: bool = False,
                          progress: bool = True) -> pathlib.Path:
  """Generates a counterfactual dataset into a shard directory.

  Returns:
    The directory (complete, with its index).
  """
  meta = dict(metadata or {}, num_requested=int(num),
              cfs_per_shape=int(cfs_per_shape), seed=int(seed),
              shapes_per_block=int(shapes_per_block), group=GROUP,
              kind="counterfactual")
  with ShardWriter(directory, shard_size, meta, overwrite) as w:
    for batch in generate(variables, model, num=num,
                          cfs_per_shape=cfs_per_shape, seed=seed,
                          shapes_per_block=shapes_per_block,
                          blocks_per_call=blocks_per_call, fast=fast,
                          progress=progress):
      w.write(batch)
  return pathlib.Path(directory)


# ------------------------------------------------------------ real images --


def write_real_sets(directory, variant: str, *, seed: int = 0,
                    shard_size: int = 50_000, chunk: int = 10_000,
                    num_train: int = 0, overwrite: bool = False,
                    progress: bool = True) -> tuple[pathlib.Path, ...]:
  """Writes a variant's real train and test sets for the classifier.

  Train: the variant's train split rendered with the train rule (colour /
  texture tied to the label), one pass with PRNG seed `seed`. Test:
  `variants.fixed_test_set(variant, seed)` (random colours/textures, fixed
  once; SPEC §10 item 7). Both carry 'fg_label'/'bg_label' (the colour or
  texture indices, -1 where a variant has none).

  Args:
    directory: parent directory; writes `real_train/` and `real_test/`.
    variant: one of `variants.VARIANTS`.
    seed: seeds the rendering.
    shard_size: images per shard.
    chunk: images rendered per jitted call.
    num_train: write only the first N training images (0 = all).
    overwrite: replace existing sets (otherwise complete ones are kept).
    progress: show a tqdm bar.

  Returns:
    (train_dir, test_dir).
  """
  from cgn_jax.data import variants  # pylint: disable=g-import-not-at-top
  directory = pathlib.Path(directory)
  train_dir, test_dir = directory / REAL_TRAIN_DIR, directory / REAL_TEST_DIR
  meta = dict(variant=variant, seed=int(seed), kind="real")
  if overwrite or not is_complete(train_dir):
    digits, labels = variants.split_arrays(variant, "train")
    if num_train:
      digits, labels = digits[:num_train], labels[:num_train]
    render = variants.jitted_renderer(variant, with_nuisance=True)
    key = jax.random.PRNGKey(seed)
    rng = range(0, len(labels), chunk)
    if progress:
      from tqdm import tqdm  # pylint: disable=g-import-not-at-top
      rng = tqdm(rng, unit="chunk", desc=f"{variant} real train")
    with ShardWriter(train_dir, shard_size, dict(meta, split="train"),
                     overwrite=True) as w:
      for i in rng:
        sl = slice(i, i + chunk)
        images, nuisance = render(jnp.asarray(digits[sl]),
                                  jnp.asarray(labels[sl]),
                                  jax.random.fold_in(key, i), "train")
        w.write(_real_batch(images, labels[sl], nuisance))
  if overwrite or not is_complete(test_dir):
    images, labels, nuisance = variants.fixed_test_set(
        variant, seed, with_nuisance=True)
    with ShardWriter(test_dir, shard_size, dict(meta, split="test"),
                     overwrite=True) as w:
      for i in range(0, len(labels), chunk):
        sl = slice(i, i + chunk)
        w.write(_real_batch(images[sl], labels[sl],
                            {k: v[sl] for k, v in nuisance.items()}))
  return train_dir, test_dir


def _real_batch(images, labels, nuisance) -> dict[str, np.ndarray]:
  return dict(image=np.asarray(quantize(jnp.asarray(images))),
              label=np.asarray(labels, np.int32),
              fg_label=np.asarray(nuisance["fg"], np.int32),
              bg_label=np.asarray(nuisance["bg"], np.int32))


# ---------------------------------------------------------------- driver --


def load_cgn_variables(path) -> tuple[dict, dict]:
  """A CGN's variables from a converted directory or an upstream `.pth`.

  Args:
    path: the output of `python -m converters cgn-mnist`, or an upstream
      checkpoint file (converted in memory; needs torch).

  Returns:
    (variables, metadata).
  """
  from converters import cgn_mnist  # pylint: disable=g-import-not-at-top
  from converters import common as conv_common  # pylint: disable=g-import-not-at-top
  path = pathlib.Path(path)
  if not str(path) or str(path) == ".":
    raise ValueError("no CGN given: pass --config.cgn=DIR (the output of "
                     "`python -m converters cgn-mnist`)")
  if path.is_file():
    variables = cgn_mnist.convert(conv_common.load_torch_state_dict(path))
    return (jax.tree.map(jnp.asarray, variables),
            {"source": path.name, "dataset": cgn_mnist.guess_dataset(path)})
  if not path.is_dir():
    raise FileNotFoundError(
        f"CGN checkpoint {path} does not exist; convert the authors' weights "
        "with `python -m converters cgn-mnist --input X.pth --output DIR`")
  return cgn_mnist.load_cgn(path, with_metadata=True)


def _check_dataset(metadata: Mapping[str, Any], variant: str) -> None:
  from absl import logging  # pylint: disable=g-import-not-at-top
  trained_on = (metadata or {}).get("dataset")
  if trained_on and trained_on.lower() != f"{variant}_mnist":
    logging.warning("the CGN was trained on %s but the variant is %s",
                    trained_on, variant)


def run_config(config, workdir) -> dict[str, pathlib.Path]:
  """generate.py: counterfactuals + real sets + a preview, in `workdir`.

  Returns:
    {'counterfactuals', 'real_train', 'real_test'} -> directories.
  """
  from absl import logging  # pylint: disable=g-import-not-at-top
  from cgn_jax.train import common  # pylint: disable=g-import-not-at-top
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  out = {"counterfactuals": workdir / CF_DIR}
  if config.overwrite or not is_complete(out["counterfactuals"]):
    variables, metadata = load_cgn_variables(config.cgn)
    _check_dataset(metadata, config.variant)
    model = cgn_lib.CGN(dtype=jnp.dtype(config.dtype))
    write_counterfactuals(
        out["counterfactuals"], variables, model, num=config.num,
        cfs_per_shape=config.cfs_per_shape, seed=config.seed,
        shapes_per_block=config.shapes_per_block,
        blocks_per_call=config.blocks_per_call, fast=config.fast,
        shard_size=config.shard_size, overwrite=True,
        metadata=dict(variant=config.variant, cgn=str(config.cgn),
                      cgn_metadata=dict(metadata or {}),
                      dtype=config.dtype))
  else:
    logging.info("keeping the complete dataset in %s", out["counterfactuals"])
  if config.write_real:
    out["real_train"], out["real_test"] = write_real_sets(
        workdir, config.variant, seed=config.real_seed,
        shard_size=config.shard_size, num_train=config.num_real,
        overwrite=config.overwrite)
  src = ShardedSource(out["counterfactuals"], fields=("image",))
  preview = dequantize(src.gather(np.arange(min(100, len(src))))["image"])
  common.save_image_grid(workdir / "preview.png", preview, nrow=10, scale=2)
  common.write_json(workdir / "config.json", config.to_dict())
  return out
