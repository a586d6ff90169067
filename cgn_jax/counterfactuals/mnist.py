"""MNIST counterfactual datasets: generation on the accelerator (SPEC §3.1).

Generation follows upstream `generate_cf_dataset`: the CGN runs in eval mode
(BatchNorm running statistics) with the patch shuffler still on. For each
group of 100 shape samples (upstream's batch):

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

Speed: the mechanisms run in the CGN's eval-mode inference form
(`CGN(folded=True)` on `fold_batchnorm(variables)`, see models/cgn.py: same
numbers, about half the work). Many groups run in one jitted call (a block of
`shapes_per_block` shape samples, i.e. `shapes_per_block * cfs_per_shape`
images, several blocks per call via `lax.map`); there is no Python loop over
images. The PRNG key of block b is `fold_in(PRNGKey(seed), b)`, so the bytes
written do not depend on how many blocks a call holds.

Storage: shard datasets (`cgn_jax/data/shards.py`). Each set's index
metadata holds its `provenance` (the CGN weights' sha256, num, cfs_per_shape,
seed, ...); `run_config` (generate.py) reuses a complete set only when that
record matches the config, and otherwise refuses, naming the fields, unless
`overwrite`.
"""

import json
import math
import os
import pathlib
import shutil
from typing import Any, Callable, Iterable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from cgn_jax import distributed
from cgn_jax import provenance
from cgn_jax import weights
from cgn_jax.data import shards
from cgn_jax.models import cgn as cgn_lib
from cgn_jax.models import cgn_weights
from cgn_jax.models import composer

GROUP = 100  # upstream's batch: label permutations stay within 100 samples
CF_FIELDS = ("image", "label", "fg_label", "bg_label", "shape_id")

# Subdirectories of a generate.py workdir.
CF_DIR = "counterfactuals"
REAL_TRAIN_DIR = "real_train"
REAL_TEST_DIR = "real_test"


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
    fast: run the mechanisms in the inference form `CGN(folded=True)`
      (same numbers to float rounding, about half the work) instead of
      `model` itself.

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

  runner = model.clone(folded=True) if fast else model

  def block(variables, key, block_index):
    if fast:
      variables = cgn_lib.fold_batchnorm(variables)

    def apply(variables, method, u, y):
      return runner.apply(variables, u, y, train=False, method=method)

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
      return shards.quantize(composer.compose(mask, fg, bg)), y_fg, y_bg

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


class Generator:
  """The jitted generator of `blocks_per_call` consecutive blocks.

  Built once per configuration by its caller (`generate` builds one unless
  given one): each instance jits (and compiles) once, and nothing is cached
  behind the caller's back.

  Calling it: `gen(variables, key, first_block)` -> dict of arrays with
  `blocks_per_call * shapes_per_block * cfs_per_shape` images (and 'mask'
  [blocks * shapes_per_block, H, W, 1] when `keep_mask`). Block b uses the
  key `fold_in(key, b)`.
  """

  def __init__(self, model: cgn_lib.CGN, cfs_per_shape: int,
               shapes_per_block: int, blocks_per_call: int = 1, *,
               keep_mask: bool = False, fast: bool = True):
    self.model = model
    self.cfs_per_shape = int(cfs_per_shape)
    self.shapes_per_block = int(shapes_per_block)
    self.blocks_per_call = int(blocks_per_call)
    block = make_block_fn(model, cfs_per_shape, shapes_per_block, fast=fast)

    def fn(variables, key, first_block):
      ids = first_block + jnp.arange(blocks_per_call, dtype=jnp.int32)
      out = jax.lax.map(
          lambda b: block(variables, jax.random.fold_in(key, b), b), ids)
      if not keep_mask:
        out.pop("mask")
      return {k: v.reshape((-1,) + v.shape[2:]) for k, v in out.items()}

    self._fn = jax.jit(fn)

  def __call__(self, variables, key, first_block) -> dict:
    return self._fn(variables, key, first_block)


def make_generate_fn(model: cgn_lib.CGN, cfs_per_shape: int,
                     shapes_per_block: int, blocks_per_call: int = 1,
                     *, keep_mask: bool = False,
                     fast: bool = True) -> Generator:
  """A new `Generator` (kept for callers of the old name; not cached)."""
  return Generator(model, cfs_per_shape, shapes_per_block, blocks_per_call,
                   keep_mask=keep_mask, fast=fast)


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
             progress: bool = True,
             generator: Generator | None = None,
             process_index: int = 0, process_count: int = 1
             ) -> Iterable[dict[str, np.ndarray]]:
  """Yields host batches of counterfactuals until `dataset_size(num)` images.

  With `process_count` > 1 it yields only process `process_index`'s share:
  a contiguous run of the calls (blocks are keyed by their index, so the
  shares of all processes, in process order, are the one-process output).

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
    fast: the CGN's folded inference form (see `make_block_fn`).
    progress: show a tqdm bar.
    generator: a `Generator` of this configuration to reuse (its
      blocks_per_call wins); by default one is built (and compiled) here.

  Yields:
    dicts with `CF_FIELDS`, numpy, images uint8.
  """
  total = dataset_size(num, cfs_per_shape)
  if shapes_per_block % GROUP:
    raise ValueError(f"shapes_per_block={shapes_per_block} must be a "
                     f"multiple of {GROUP}")
  per_block = shapes_per_block * cfs_per_shape
  if generator is None:
    blocks_per_call = max(1, min(blocks_per_call,
                                 math.ceil(total / per_block)))
    generator = Generator(model, cfs_per_shape, shapes_per_block,
                          blocks_per_call, fast=fast)
  elif (generator.cfs_per_shape, generator.shapes_per_block) != (
      cfs_per_shape, shapes_per_block):
    raise ValueError("the generator was built for another cfs_per_shape or "
                     "shapes_per_block")
  fn, blocks_per_call = generator, generator.blocks_per_call
  per_call = per_block * blocks_per_call
  calls = math.ceil(total / per_call)
  first, last = _share(calls, process_index, process_count)
  if first == last:
    return
  key = jax.random.PRNGKey(seed)
  bar = None
  if progress:
    from tqdm import tqdm  # pylint: disable=g-import-not-at-top
    bar = tqdm(total=min(last * per_call, total) - first * per_call,
               unit="img", desc="counterfactuals")
  pending = fn(variables, key, first * blocks_per_call)
  for i in range(first, last):
    current = pending
    if i + 1 < last:  # async dispatch: the device starts the next call now
      pending = fn(variables, key, (i + 1) * blocks_per_call)
    batch = jax.device_get(current)
    take = min(per_call, total - i * per_call)
    yield {k: v[:take] for k, v in batch.items()}
    if bar is not None:
      bar.update(take)
  if bar is not None:
    bar.close()


def _share(calls: int, p: int, n: int) -> tuple[int, int]:
  """Process p's contiguous calls [first, last) of `calls` over n."""
  if not 0 <= p < n:
    raise ValueError(f"process_index {p} is not in [0, {n})")
  return calls * p // n, calls * (p + 1) // n


def cf_provenance(variables, model: cgn_lib.CGN, *, variant: str, num: int,
                  cfs_per_shape: int, seed: int, shapes_per_block: int,
                  fast: bool) -> dict:
  """What makes a counterfactual set: everything its bytes depend on.

  `cgn_sha256` is `weights.fingerprint` of the CGN's variables, so the same
  weights match whether they came from a `.pth` or a converted directory;
  `num` is the number of images actually generated (`dataset_size`).
  """
  return dict(kind="counterfactual", variant=variant,
              cgn_sha256=weights.fingerprint(variables),
              num=dataset_size(num, cfs_per_shape),
              cfs_per_shape=int(cfs_per_shape), seed=int(seed),
              shapes_per_block=int(shapes_per_block), group=GROUP,
              dtype=jnp.dtype(model.dtype).name, fast=bool(fast))


def write_counterfactuals(directory, variables, model: cgn_lib.CGN, *,
                          num: int, cfs_per_shape: int, seed: int = 0,
                          shapes_per_block: int = 1000,
                          blocks_per_call: int = 1, fast: bool = True,
                          shard_size: int = 50_000,
                          metadata: Mapping[str, Any] | None = None,
                          overwrite: bool = False,
                          progress: bool = True,
                          generator: Generator | None = None,
                          variant: str = "") -> pathlib.Path:
  """Generates a counterfactual dataset into a shard directory.

  The index metadata gets `metadata`, the generation settings and the
  `provenance` record (`cf_provenance`).

  Returns:
    The directory (complete, with its index).
  """
  record = cf_provenance(variables, model, variant=variant, num=num,
                         cfs_per_shape=cfs_per_shape, seed=seed,
                         shapes_per_block=shapes_per_block, fast=fast)
  meta = dict(metadata or {}, num_requested=int(num),
              cfs_per_shape=int(cfs_per_shape), seed=int(seed),
              shapes_per_block=int(shapes_per_block), group=GROUP,
              kind="counterfactual", provenance=record)
  kw = dict(num=num, cfs_per_shape=cfs_per_shape, seed=seed,
            shapes_per_block=shapes_per_block,
            blocks_per_call=blocks_per_call, fast=fast, generator=generator)
  if not distributed.is_multi_process():
    with shards.ShardWriter(directory, shard_size, meta, overwrite) as w:
      for batch in generate(variables, model, progress=progress, **kw):
        w.write(batch)
    return pathlib.Path(directory)
  return _write_parts(directory, variables, model, shard_size=shard_size,
                      meta=meta, overwrite=overwrite, progress=progress, **kw)


def _write_parts(directory, variables, model, *, shard_size, meta, overwrite,
                 progress, **kw) -> pathlib.Path:
  """Multi-process generation: disjoint shards per process, one index.

  Process p generates its contiguous share (`generate`) into
  DIR.parts/part-p/ (a complete shard set of its own); process 0 then
  writes one index.json over all parts' shards, in process order, and
  renames DIR.parts to DIR. The result reads as the one-process dataset
  (same images in the same order; only the shard boundaries differ). DIR
  must be on a filesystem every process sees.
  """
  directory = pathlib.Path(directory)
  if directory.exists() and not overwrite:
    raise FileExistsError(
        f"{directory} already exists; delete it or pass overwrite")
  p, n = jax.process_index(), jax.process_count()
  parts = directory.with_name(directory.name + ".parts")
  if p == 0:
    shutil.rmtree(parts, ignore_errors=True)
    parts.mkdir(parents=True)
  distributed.sync("cgn_jax.counterfactuals.parts_created")
  with shards.ShardWriter(parts / f"part-{p:05d}", shard_size, meta) as w:
    for batch in generate(variables, model, progress=progress and p == 0,
                          process_index=p, process_count=n, **kw):
      w.write(batch)
  distributed.sync("cgn_jax.counterfactuals.parts_written")
  if p == 0:
    _join_parts(parts, directory, n, shard_size, meta)
  distributed.sync("cgn_jax.counterfactuals.joined")
  return directory


def _join_parts(parts: pathlib.Path, directory: pathlib.Path, n: int,
                shard_size: int, meta) -> None:
  """One index over parts/part-*/ shards, then parts renamed to directory."""
  fields, entries, num = {}, [], 0
  for p in range(n):
    index = shards.read_index(parts / f"part-{p:05d}")
    fields = fields or index["fields"]
    for shard in index["shards"]:
      entries.append({"num": shard["num"], "files": {
          k: f"part-{p:05d}/{v}" for k, v in shard["files"].items()}})
      num += shard["num"]
  index = {"format": shards.FORMAT, "num": num, "shard_size": shard_size,
           "fields": fields, "shards": entries,
           "image_encoding": shards.IMAGE_ENCODING,
           "metadata": dict(meta, processes=n)}
  with open(parts / shards.INDEX, "w") as f:
    json.dump(index, f, indent=1, sort_keys=True)
  if directory.exists():
    shutil.rmtree(directory)
  os.replace(parts, directory)


_OVERWRITE_FIX = ("rerun with --config.overwrite=True to regenerate it, or "
                  "use another --workdir")


def reuse_or_redo(directory, wanted: Mapping[str, Any], *,
                  overwrite: bool) -> bool:
  """Whether the complete set in `directory` can be kept for `wanted`.

  A complete set whose provenance equals `wanted` is kept (True). One made
  differently (or without a record) raises ProvenanceMismatch naming the
  fields, unless `overwrite`: then it is to be rewritten (False), as an
  absent or incomplete set is.
  """
  if not shards.is_complete(directory):
    return False
  stored = shards.read_index(directory)["metadata"].get("provenance")
  try:
    provenance.check(stored, wanted, what=f"the dataset in {directory}",
                     fix=_OVERWRITE_FIX)
  except provenance.ProvenanceMismatch as e:
    if not overwrite:
      raise
    from absl import logging  # pylint: disable=g-import-not-at-top
    logging.warning("overwrite: regenerating (%s)", e)
    return False
  return True


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
    overwrite: replace complete sets made differently (otherwise they are
      refused); sets with the same provenance are always kept.
    progress: show a tqdm bar.

  Returns:
    (train_dir, test_dir).
  """
  from cgn_jax.data import variants  # pylint: disable=g-import-not-at-top
  directory = pathlib.Path(directory)
  train_dir, test_dir = directory / REAL_TRAIN_DIR, directory / REAL_TEST_DIR
  meta = dict(variant=variant, seed=int(seed), kind="real")
  train_record = dict(kind="real", split="train", variant=variant,
                      seed=int(seed), num_train=int(num_train))
  test_record = dict(kind="real", split="test", variant=variant,
                     seed=int(seed))
  if not reuse_or_redo(train_dir, train_record, overwrite=overwrite):
    digits, labels = variants.split_arrays(variant, "train")
    if num_train:
      digits, labels = digits[:num_train], labels[:num_train]
    render = variants.jitted_renderer(variant, with_nuisance=True)
    key = jax.random.PRNGKey(seed)
    rng = range(0, len(labels), chunk)
    if progress:
      from tqdm import tqdm  # pylint: disable=g-import-not-at-top
      rng = tqdm(rng, unit="chunk", desc=f"{variant} real train")
    with shards.ShardWriter(train_dir, shard_size,
                     dict(meta, split="train", provenance=train_record),
                     overwrite=True) as w:
      for i in rng:
        sl = slice(i, i + chunk)
        images, nuisance = render(jnp.asarray(digits[sl]),
                                  jnp.asarray(labels[sl]),
                                  jax.random.fold_in(key, i), "train")
        w.write(_real_batch(images, labels[sl], nuisance))
  if not reuse_or_redo(test_dir, test_record, overwrite=overwrite):
    images, labels, nuisance = variants.fixed_test_set(
        variant, seed, with_nuisance=True)
    with shards.ShardWriter(test_dir, shard_size,
                     dict(meta, split="test", provenance=test_record),
                     overwrite=True) as w:
      for i in range(0, len(labels), chunk):
        sl = slice(i, i + chunk)
        w.write(_real_batch(images[sl], labels[sl],
                            {k: v[sl] for k, v in nuisance.items()}))
  return train_dir, test_dir


def _real_batch(images, labels, nuisance) -> dict[str, np.ndarray]:
  return dict(image=np.asarray(shards.quantize(jnp.asarray(images))),
              label=np.asarray(labels, np.int32),
              fg_label=np.asarray(nuisance["fg"], np.int32),
              bg_label=np.asarray(nuisance["bg"], np.int32))


# ---------------------------------------------------------------- driver --


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
  variables, metadata = cgn_weights.load_cgn(config.cgn, with_metadata=True)
  _check_dataset(metadata, config.variant)
  model = cgn_lib.CGN(dtype=jnp.dtype(config.dtype))
  wanted = cf_provenance(variables, model, variant=config.variant,
                         num=config.num, cfs_per_shape=config.cfs_per_shape,
                         seed=config.seed,
                         shapes_per_block=config.shapes_per_block,
                         fast=config.fast)
  if reuse_or_redo(out["counterfactuals"], wanted,
                   overwrite=config.overwrite):
    logging.info("keeping the complete dataset in %s (same provenance)",
                 out["counterfactuals"])
  else:
    write_counterfactuals(
        out["counterfactuals"], variables, model, num=config.num,
        cfs_per_shape=config.cfs_per_shape, seed=config.seed,
        shapes_per_block=config.shapes_per_block,
        blocks_per_call=config.blocks_per_call, fast=config.fast,
        shard_size=config.shard_size, overwrite=True, variant=config.variant,
        metadata=dict(variant=config.variant, cgn=str(config.cgn),
                      cgn_metadata=dict(metadata or {}),
                      dtype=config.dtype))
  if config.write_real:
    # Small (the real MNIST split): process 0 writes them, the others wait.
    if distributed.is_main_process():
      write_real_sets(workdir, config.variant, seed=config.real_seed,
                      shard_size=config.shard_size,
                      num_train=config.num_real, overwrite=config.overwrite)
    distributed.sync("cgn_jax.counterfactuals.real_sets")
    out["real_train"] = workdir / REAL_TRAIN_DIR
    out["real_test"] = workdir / REAL_TEST_DIR
  src = shards.ShardedSource(out["counterfactuals"], fields=("image",))
  preview = shards.dequantize(
      src.gather(np.arange(min(100, len(src))))["image"])
  common.save_image_grid(workdir / "preview.png", preview, nrow=10, scale=2)
  common.write_json(workdir / "config.json", config.to_dict())
  return out
