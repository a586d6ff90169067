"""ImageNet counterfactual datasets and interpolations from a trained CGN (SPEC §5).

  python generate.py --config=configs/counterfactuals_imagenet.py \\
      --workdir=DIR --config.cgn=WEIGHTS --config.num=N

Each image j of a dataset is a pure function of (weights, seed, j): its PRNG
key is `fold_in(PRNGKey(seed), j)`, split into a class key and a noise key.
The noise is u = truncation * TruncNormal(-2, 2) [128] (upstream's scipy
draw, here from JAX), shared by the three mechanisms as upstream does; the
classes (shape, texture, background) follow the mode:

  random         three independent uniform classes in 0..999;
  best_classes   one each from upstream's curated lists
                 (`cgn_jax.data.imagenet_classes`: 76 shape, 75 texture,
                 38 background classes), uniformly;
  fixed_classes  the given triple for every image.

The counterfactual forward is upstream's three-class call
(`cgn(ys=[shape, texture, bg])`) without the two outputs a dataset does not
use (x_gt and the background's U²-Net mask):
premask = f_shape(u, y_shape); mask = clip(U²Net(premask), 1e-4, 0.9999);
x_gen = mask * f_text(u, y_text) + (1 - mask) * f_bg(u, y_bg).

Unlike upstream (batch 1, one forward per image, SPEC §5), batches of
`batch_size` images are sharded over this process's devices (a one-axis
'data' mesh, variables replicated) and quantised to uint8 on the device;
JPEG encoding runs in a thread pool while the device computes the next
batch. Storage is `cgn_jax.data.records` (sharded ArrayRecord, resumable:
shard i holds images [i * shard_size, ...) and depends only on (weights,
seed, mode, i), so a killed run that is restarted writes the missing shards
and ends with the same bytes as an uninterrupted run, given the same batch
size, devices per process and platform).

Several processes (`cgn_jax/distributed.py`): the missing shards are split
into contiguous shares, one per process; each process computes its share on
its own devices (no collective per batch) and writes its shard files into
the one dataset directory, whose metadata.json (the index: every shard is
named by its number) process 0 writes first. The shards are the ones a
single process with the same devices would write, byte for byte, and a
killed run resumes with any number of processes. The directory must be on
a filesystem every process sees.

The jitted generation step of a configuration is built once, by
`build_programs`, into a `Programs` object that `write_dataset` and
`generate` take (and build when not given); nothing is cached behind the
caller's back.

Interpolation (`interpolate`, used by `python -m cgn_jax.sample
cgn-imagenet`): upstream's `interp_sheet`: one noise vector (default
`U_FIXED`, the repository's `imagenet/data/u_fixed.pth`), and for the chosen
mechanism(s) the class vector blends linearly from one-hot(start class) to
one-hot(target class) over midpoints + 2 frames; the class embedding is
linear in the class vector, so the blend is a soft one-hot.
"""

import concurrent.futures
import dataclasses
import functools
import os
import pathlib
from typing import Any, Callable, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from cgn_jax import distributed
from cgn_jax import weights
from cgn_jax.data import imagenet_classes
from cgn_jax.data import records
from cgn_jax.models import imagenet_cgn
from cgn_jax.models import imagenet_cgn_weights

MODES = ("random", "best_classes", "fixed_classes")
INTERP_MODES = ("all", "shape", "text", "bg")
FIELDS = records.EXTRA_IMAGES
GENERATOR_VERSION = "cgn_jax.counterfactuals.imagenet/v1"

# upstream imagenet/data/u_fixed.pth (1 x 128 float32, exact values): the
# noise of the README's interpolation sheets (SPEC §4.6, Appendix A).
U_FIXED = (
    0.29437795, 0.07543987, 0.04152323, 0.21233095, -0.22820632, 0.37258518,
    -0.38221538, 0.37236667, 0.24454911, -0.22546503, -0.18776515, 0.33331373,
    -0.09595554, 0.08214481, 0.4979161, -0.30295426, -0.063510075, 0.18181413,
    0.08555583, -0.1935607, 0.2184657, 0.27635482, -0.21776353, -0.37187207,
    -0.063936725, -0.039698586, -0.23875538, -0.04037805, 0.1522634,
    -0.12567408, -0.388456, 0.3666971, -0.33229956, -0.19354674, 0.5091911,
    -0.066970505, -0.05861884, -0.012274997, -0.27400732, 0.25602376,
    0.06942395, 0.11201619, -0.023088628, -0.2756091, -0.13046132,
    -0.22899695, -0.25834635, 0.46138924, -0.12013956, -0.18473767,
    -0.3156767, -0.41620848, 0.0077257208, 0.57749194, -0.49267364,
    0.08507202, -0.3466622, -0.05830147, 0.3012959, 0.4272601, -0.11936151,
    0.17668164, 0.23335804, 0.4048582, 0.20657162, -0.23241362, -0.15716107,
    -0.22163112, -0.36055833, -0.106739335, 0.11655205, 0.25923097,
    -0.37573892, 0.17793567, -0.20958893, 0.22526816, -0.15639956,
    -0.22704563, -0.36677328, -0.32434005, 0.21500894, -0.1688006, 0.29325002,
    -0.44678706, -0.072683245, -0.17358889, 0.5077375, -0.30151728,
    0.46894494, -0.28176045, -0.21040429, -0.06948465, -0.23030837,
    0.002221137, -0.19153854, -0.3053458, 0.18234657, 0.17852709, 0.3490648,
    -0.36834002, -0.048121285, 0.19602141, 0.27287638, -0.09996592,
    0.19160151, 0.253897, -0.3130093, -0.5270802, 0.58832306, 0.018234624,
    -0.20073535, 0.40534666, -0.32576373, 0.5024941, 0.09579248, -0.053897835,
    0.42953837, 0.028351963, 0.07485771, -0.28555956, -0.035081334,
    0.39619172, 0.36211228, -0.014285767, -0.26902822, -0.5857747, 0.26613033,
    0.08257492,)


# ----------------------------------------------------------------- models --


def smoke_model(dtype: Any = jnp.float32) -> imagenet_cgn.ImageNetCGN:
  """A tiny ImageNet CGN for smoke runs and tests (not a real model).

  BigGAN-deep structure at width 4 with three up-blocks (4 -> 32 pixels) and
  U²-Netp. It has no self-attention: with random spectral-norm vectors the
  narrow attention's sigma can be ~0, and inf * gamma (0) would give NaN.
  """
  from cgn_jax.models import biggan  # pylint: disable=g-import-not-at-top
  layers = ((True, 16, 8), (True, 8, 4), (True, 4, 2))
  config = biggan.get_config("biggan-deep-256", channel_width=4,
                             output_dim=32, layers=layers,
                             attention_layer_position=len(layers))
  return imagenet_cgn.from_config(config, "u2netp", dtype=jnp.dtype(dtype))


def smoke_variables(model, seed: int = 0) -> dict:
  """Random variables for `smoke_model` whose masks depend on the class.

  A random U²-Netp's fused output is ~0 everywhere (masks ~0.5 whatever the
  premask); scaling its 1x1 `outconv` by 30, as the upstream goldens do,
  spreads the masks over (0, 1) so that smoke images are real compositions.
  """
  variables = jax.tree.map(jnp.asarray,
                           imagenet_cgn.random_variables(model, seed))
  out = variables["params"]["u2net"]["outconv"]
  out["kernel"] = out["kernel"] * 30.0
  return variables


def variables_sha256(variables) -> str:
  """The weights' identity in a dataset's metadata (`weights.fingerprint`).

  sha256 over every leaf's path, dtype, shape and bytes: it names the
  weights a dataset was made with, whatever file they came from.
  """
  return weights.fingerprint(variables)


def load_cgn(spec: str, dtype: str = "float32"):
  """Resolves `--config.cgn` / `--weights` into (model, variables, info).

  Args:
    spec: a directory written by `python -m converters cgn-imagenet` (or a
      trainer's export in that format), or 'random' for `smoke_model()` with
      random weights (smoke runs only; a warning is logged).
    dtype: compute dtype, 'float32' or 'bfloat16'.

  Returns:
    (model, variables, info) with info['sha256'] = `variables_sha256`.
  """
  from absl import logging  # pylint: disable=g-import-not-at-top
  if not spec:
    raise ValueError("no CGN given: pass --config.cgn=DIR (the output of "
                     "`python -m converters cgn-imagenet --input cgn.pth "
                     "--output DIR`) or 'random' for a smoke run")
  if str(spec).lower() == "random":
    logging.warning("cgn='random': a tiny RANDOM CGN (smoke runs only); "
                    "its images are noise")
    model = smoke_model()
    variables = smoke_variables(model)
    info = {"source": "random (smoke_model)"}
  else:
    path = pathlib.Path(spec).expanduser()
    if not path.is_dir():
      raise FileNotFoundError(
          f"CGN weights {spec} are not a converted checkpoint directory; "
          "convert the authors' cgn.pth with `python -m converters "
          "cgn-imagenet --input cgn.pth --output DIR`")
    model, variables = imagenet_cgn_weights.load(path)
    info = {"source": str(path)}
  if dtype not in ("float32", "bfloat16"):
    raise ValueError(f"dtype={dtype!r}; use 'float32' or 'bfloat16'")
  model = model.clone(dtype=jnp.dtype(dtype))
  info["sha256"] = variables_sha256(variables)
  return model, variables, info


# ------------------------------------------------------------------ draws --


def check_mode(mode: str, classes) -> tuple[int, int, int] | None:
  """Validates the class mode; returns the fixed triple or None."""
  if mode not in MODES:
    raise ValueError(f"mode={mode!r}; use one of {MODES}")
  if mode == "fixed_classes":
    if classes is None or len(classes) != 3:
      raise ValueError("mode 'fixed_classes' needs three classes "
                       "(shape, texture, background), e.g. "
                       "--config.classes=207,933,970")
    return tuple(imagenet_classes.check_class(c, w) for c, w in
                 zip(classes, ("shape class", "texture class", "bg class")))
  return None


def parse_classes(text) -> tuple[int, ...] | None:
  """'207,933,970' (or a sequence) -> (207, 933, 970); '' -> None."""
  if text is None or text == "" or text == ():
    return None
  if isinstance(text, str):
    try:
      return tuple(int(t) for t in text.replace(" ", "").split(",") if t)
    except ValueError as e:
      raise ValueError(f"classes={text!r} is not a comma-separated list of "
                       "integers, e.g. 207,933,970") from e
  return tuple(int(t) for t in text)


def draw_inputs(key, indices, *, mode: str, classes=None,
                truncation: float, z_dim: int = 128,
                num_classes: int = imagenet_classes.NUM_CLASSES):
  """Noise and classes of images `indices` (each a function of key and index).

  Returns:
    (u [B, z_dim] float32, ys [B, 3] int32 (shape, texture, background)).
  """
  return _draw(jnp.asarray(key), jnp.asarray(indices, jnp.int32), mode=mode,
               classes=tuple(classes) if classes is not None else None,
               truncation=float(truncation), z_dim=int(z_dim),
               num_classes=int(num_classes))


@functools.partial(jax.jit, static_argnames=("mode", "classes", "truncation",
                                             "z_dim", "num_classes"))
def _draw(key, indices, *, mode, classes, truncation, z_dim, num_classes):
  lists = [jnp.asarray(c, jnp.int32) for c in imagenet_classes.BEST_CLASSES]

  def one(i):
    k_cls, k_u = jax.random.split(jax.random.fold_in(key, i))
    u = truncation * jax.random.truncated_normal(k_u, -2.0, 2.0, (z_dim,),
                                                 jnp.float32)
    if mode == "random":
      ys = jax.random.randint(k_cls, (3,), 0, num_classes, jnp.int32)
    elif mode == "best_classes":
      ks = jax.random.split(k_cls, 3)
      ys = jnp.stack([c[jax.random.randint(k, (), 0, len(c))]
                      for k, c in zip(ks, lists)])
    else:
      ys = jnp.asarray(classes, jnp.int32)
    return u, ys

  return jax.vmap(one)(indices)


# ---------------------------------------------------------------- forward --


def _counterfactual(module, u, y_shape, y_text, y_bg, truncation):
  premask, _ = module.f_shape(u, y_shape, truncation, train=False)
  foreground, _ = module.f_text(u, y_text, truncation, train=False)
  background, _ = module.f_bg(u, y_bg, truncation, train=False)
  saliency, _ = module.u2net(premask)
  mask = jnp.clip(saliency.astype(jnp.float32), imagenet_cgn.MASK_MIN,
                  imagenet_cgn.MASK_MAX)
  return {"premask": premask, "mask": mask, "foreground": foreground,
          "background": background,
          "x_gen": imagenet_cgn.compose(mask, foreground, background)}


def counterfactual_forward(model, variables, u, ys, truncation: float):
  """The three-class forward without x_gt and the background mask.

  Args:
    model: an `ImageNetCGN`.
    variables: its variables.
    u: [B, z_dim] noise shared by the mechanisms.
    ys: (shape, texture, background) classes: ints, [B] labels or (soft)
      one-hot [B, C] vectors.
    truncation: static float in (0, 1].

  Returns:
    {premask, mask [B, H, W, 1], foreground, background, x_gen} (float32),
    equal to the same entries of `model.apply(variables, u, ys, t)`.
  """
  truncation = imagenet_cgn.check_truncation(truncation)
  y = [imagenet_cgn.class_vector(c, u.shape[0], model.num_classes)
       for c in ys]
  return model.apply(variables, u, *y, truncation, method=_counterfactual)


# Module-level, so repeated sheets of one shape reuse one compilation.
_forward_jit = jax.jit(counterfactual_forward, static_argnums=(0, 4))


def local_mesh() -> jax.sharding.Mesh:
  """A one-axis 'data' mesh over this process's devices.

  Generation needs no collective: with several processes each one computes
  its own shards on its own devices.
  """
  return jax.sharding.Mesh(np.array(jax.local_devices()), ("data",))


def make_step(model, mesh, *, mode: str, classes, truncation: float,
              normalize: str, fields: tuple[str, ...]) -> Callable:
  """Jitted (variables, key, indices [B]) -> uint8 images, labels, extras.

  New at every call (`build_programs` makes the one of a run). The batch is
  sharded over `mesh`; variables are replicated on it. Returns {'image'
  [B, H, W, 3] uint8, 'labels' [B, 3] int32, 'mask_mean' [B] float32, and
  the requested `fields` as uint8}.
  """
  P = jax.sharding.PartitionSpec  # pylint: disable=invalid-name
  batch = jax.sharding.NamedSharding(mesh, P("data"))
  repl = jax.sharding.NamedSharding(mesh, P())

  def step(variables, key, indices):
    u, ys = draw_inputs(key, indices, mode=mode, classes=classes,
                        truncation=truncation, z_dim=model.z_dim,
                        num_classes=model.num_classes)
    out = counterfactual_forward(model, variables, u,
                                 (ys[:, 0], ys[:, 1], ys[:, 2]), truncation)
    res = {"image": records.to_uint8(out["x_gen"], normalize), "labels": ys,
           "mask_mean": out["mask"].mean(axis=(1, 2, 3))}
    for f in fields:
      res[f] = (records.unit_to_uint8(out["mask"]) if f == "mask"
                else records.to_uint8(out[f], normalize))
    return res

  return jax.jit(step, in_shardings=(repl, repl, batch), out_shardings=batch)


@dataclasses.dataclass(frozen=True)
class Programs:
  """The jitted generation step of one configuration (`build_programs`).

  `generate` and `write_dataset` build one unless given one; callers that
  generate several datasets of the same configuration in a process (tests,
  benchmarks) pass one to all, so the step is traced and compiled once.
  `key` records the configuration; a Programs of another is refused.
  """
  key: tuple
  mesh: jax.sharding.Mesh
  step: Callable  # (variables, key, indices) -> `make_step`'s outputs


def programs_key(model, *, mode: str, classes, truncation: float,
                 normalize: str, fields: Sequence[str]) -> tuple:
  """What the generation step depends on (hashable, comparable)."""
  return (model, mode, check_mode(mode, classes),
          imagenet_cgn.check_truncation(truncation), normalize,
          tuple(sorted(fields)))


def build_programs(model, *, mode: str = "random", classes=None,
                   truncation: float = 0.5, normalize: str = "range",
                   fields: Sequence[str] = (), mesh=None) -> Programs:
  """Builds (does not compile yet) the generation step of a configuration.

  Args:
    model: the ImageNet CGN.
    mode, classes, truncation, normalize, fields: as `write_dataset`.
    mesh: default `local_mesh()` (this process's devices).
  """
  key = programs_key(model, mode=mode, classes=classes,
                     truncation=truncation, normalize=normalize,
                     fields=fields)
  mesh = mesh if mesh is not None else local_mesh()
  _, mode, classes, truncation, normalize, fields = key
  return Programs(key=key, mesh=mesh, step=make_step(
      model, mesh, mode=mode, classes=classes, truncation=truncation,
      normalize=normalize, fields=fields))


def _programs_for(programs: Programs | None, model, **kw) -> Programs:
  if programs is None:
    return build_programs(model, **kw)
  if programs.key != programs_key(model, **kw):
    raise ValueError("the given Programs were built for another model or "
                     "generation setting; build them with build_programs("
                     "model, mode=..., ...) of this one")
  return programs


def generate(model, variables, ranges: Sequence[tuple[int, int]], *,
             seed: int, mode: str = "random", classes=None,
             truncation: float = 0.5, batch_size: int = 64,
             normalize: str = "range", fields: Sequence[str] = (),
             programs: Programs | None = None
             ) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
  """Yields (start, host batch) for each [start, stop) range, in order.

  Each range is at most `batch_size` images; shorter ones are padded (the
  compiled shape never changes) and trimmed. The next batch is dispatched
  before the current one is copied to the host, so the device keeps busy
  while the caller encodes and writes. Runs on this process's devices
  (`programs.mesh`), whatever the other processes do.

  Args:
    programs: `build_programs(model, mode=..., ...)` of these settings to
      reuse; by default one is built (and compiled) here.
  """
  programs = _programs_for(programs, model, mode=mode, classes=classes,
                           truncation=truncation, normalize=normalize,
                           fields=fields)
  devices = programs.mesh.devices.size
  if batch_size % devices:
    raise ValueError(f"batch_size={batch_size} must be a multiple of the "
                     f"{devices} devices")
  step = programs.step
  key = jax.random.PRNGKey(seed)
  pad = np.arange(batch_size, dtype=np.int32)
  # Replicate the weights once, not once per call (a full CGN is ~1 GB).
  variables = jax.device_put(variables, jax.sharding.NamedSharding(
      programs.mesh, jax.sharding.PartitionSpec()))

  def launch(start, stop):
    if stop - start > batch_size:
      raise ValueError(f"range [{start}, {stop}) exceeds batch_size "
                       f"{batch_size}")
    return step(variables, key, start + pad), start, stop - start

  pending = launch(*ranges[0]) if ranges else None
  for i in range(len(ranges)):
    out, start, n = pending
    if i + 1 < len(ranges):
      pending = launch(*ranges[i + 1])
    host = jax.device_get(out)
    yield start, {k: v[:n] for k, v in host.items()}


# ---------------------------------------------------------------- dataset --


def dataset_metadata(*, weights_sha256: str, seed: int, mode: str, classes,
                     truncation: float, quality: int, normalize: str,
                     dtype: str, image_size=None) -> dict:
  """What makes a dataset's content (compared when resuming)."""
  return {"generator": GENERATOR_VERSION, "cgn_sha256": weights_sha256,
          "seed": int(seed), "mode": mode,
          "classes": list(classes) if classes else None,
          "truncation": float(truncation), "jpeg_quality": int(quality),
          "normalize": normalize, "dtype": dtype, "image_size": image_size}


def write_dataset(directory, model, variables, *, num: int, seed: int = 0,
                  mode: str = "random", classes=None,
                  truncation: float = 0.5, batch_size: int = 64,
                  shard_size: int = 5000, quality: int = 75,
                  normalize: str = "range", fields: Sequence[str] = (),
                  weights_sha256: str | None = None,
                  overwrite: bool = False, progress: bool = True,
                  workers: int | None = None,
                  programs: Programs | None = None) -> pathlib.Path:
  """Generates (or finishes) a counterfactual dataset in `directory`.

  With several processes every process calls it with the same arguments:
  each writes its share of the missing shards (see the module docstring).

  Args:
    directory: the dataset directory (`cgn_jax.data.records` layout).
    model, variables: the ImageNet CGN.
    num: number of images.
    seed: PRNG seed.
    mode, classes: see MODES; `classes` (shape, texture, bg) for
      'fixed_classes'.
    truncation: noise truncation and BigGAN statistics (0.5: the paper's
      datasets).
    batch_size: images per device call (a multiple of this process's
      device count).
    shard_size: images per shard file (the unit of resumption and of the
      split over processes).
    quality: JPEG quality (75 = PIL's default, which upstream's
      `save_image` used).
    normalize: 'range' ((x + 1) / 2) or 'minmax' (upstream's per-image
      min-max).
    fields: extras to store: 'mask', 'foreground', 'background'.
    weights_sha256: identity of the weights (default: computed).
    overwrite: delete an existing dataset in `directory` first.
    progress: show a tqdm bar (process 0's share).
    workers: JPEG encoding threads (default: CPU count).
    programs: `build_programs(model, mode=..., ...)` of these settings to
      reuse; by default one is built (and compiled) here.

  Returns:
    The directory, complete.
  """
  classes = check_mode(mode, classes)
  if normalize not in records.NORMALIZE:
    raise ValueError(f"normalize={normalize!r}; use one of "
                     f"{records.NORMALIZE}")
  programs = _programs_for(programs, model, mode=mode, classes=classes,
                           truncation=truncation, normalize=normalize,
                           fields=fields)
  meta = dataset_metadata(
      weights_sha256=weights_sha256 or variables_sha256(variables),
      seed=seed, mode=mode, classes=classes, truncation=truncation,
      quality=quality, normalize=normalize,
      dtype=jnp.dtype(model.dtype).name)
  writer = _open_writer(directory, num=num, shard_size=shard_size,
                        metadata=meta, fields=fields, overwrite=overwrite)
  missing = writer.missing_shards()
  p, n = jax.process_index(), jax.process_count()
  shards = missing[len(missing) * p // n:len(missing) * (p + 1) // n]
  ranges, owner = [], []
  for s in shards:
    start, stop = writer.shard_range(s)
    for a in range(start, stop, batch_size):
      ranges.append((a, min(a + batch_size, stop)))
      owner.append(s)
  bar = None
  if progress and distributed.is_main_process():
    from tqdm import tqdm  # pylint: disable=g-import-not-at-top
    total = sum(b - a for a, b in ranges)
    if n == 1:
      bar = tqdm(total=num, initial=num - total, unit="img",
                 desc="counterfactuals")
    else:
      bar = tqdm(total=total, unit="img",
                 desc=f"counterfactuals (process 0 of {n})")
  pending: dict[int, list[bytes]] = {}
  with concurrent.futures.ThreadPoolExecutor(
      workers or os.cpu_count() or 1) as pool:
    batches = generate(model, variables, ranges, seed=seed, mode=mode,
                       classes=classes, truncation=truncation,
                       batch_size=batch_size, normalize=normalize,
                       fields=fields, programs=programs)
    for (start, batch), s in zip(batches, owner):
      pending.setdefault(s, []).extend(records.encode_records(
          start, batch["image"], batch["labels"], quality=quality,
          extras={f: batch[f] for f in fields}, pool=pool))
      lo, hi = writer.shard_range(s)
      if len(pending[s]) == hi - lo:
        writer.write_shard(s, pending.pop(s))
      if bar is not None:
        bar.update(len(batch["image"]))
  if bar is not None:
    bar.close()
  distributed.sync("cgn_jax.counterfactuals.imagenet.written")
  if not writer.is_complete():  # a shard was written by no batch: a bug
    raise RuntimeError(f"{directory}: shards {writer.missing_shards()} "
                       "still missing")
  return pathlib.Path(directory)


def _open_writer(directory, *, overwrite: bool, **kw) -> records.ShardedWriter:
  """The dataset's writer, opened by every process of a run.

  Process 0 opens it first (deleting an old dataset with `overwrite`,
  writing metadata.json, removing a killed run's temporary files); then
  the others open the same dataset (checking its metadata). Nobody writes
  a shard before every process has opened it, so no process removes
  another's temporary file, and all see the same missing shards.
  """
  if jax.process_count() == 1:
    return records.ShardedWriter(directory, overwrite=overwrite, **kw)
  writer = None
  if distributed.is_main_process():
    writer = records.ShardedWriter(directory, overwrite=overwrite, **kw)
  distributed.sync("cgn_jax.counterfactuals.imagenet.created")
  if writer is None:
    writer = records.ShardedWriter(directory, overwrite=False, **kw)
  distributed.sync("cgn_jax.counterfactuals.imagenet.opened")
  return writer


# ---------------------------------------------------------- interpolation --


def fixed_noise() -> np.ndarray:
  """upstream's u_fixed.pth as a [1, 128] float32 array."""
  return np.asarray(U_FIXED, np.float32)[None]


def interpolation_class_vectors(ys: Sequence[int], interp: str, target: int,
                                midpoints: int = 6,
                                num_classes: int = 1000):
  """Upstream's `interp_sheet` class vectors: three [frames, C] arrays.

  The interpolated mechanism(s) blend linearly from one-hot(ys[k]) to
  one-hot(target) with weights linspace(0, 1, midpoints + 2); the others
  keep their class.
  """
  if interp not in INTERP_MODES:
    raise ValueError(f"interp={interp!r}; use one of {INTERP_MODES}")
  if midpoints < 0:
    raise ValueError(f"midpoints must be >= 0, got {midpoints}")
  frames = midpoints + 2
  lerp = np.linspace(0.0, 1.0, frames, dtype=np.float32)[:, None]
  eye = np.eye(num_classes, dtype=np.float32)
  moving = {"all": (0, 1, 2), "shape": (0,), "text": (1,), "bg": (2,)}[interp]
  out = []
  for k, y in enumerate(ys):
    start = np.repeat(eye[y][None], frames, axis=0)
    out.append(start * (1 - lerp) + eye[target][None] * lerp
               if k in moving else start)
  return tuple(out)


def interpolate(model, variables, ys: Sequence[int], *, interp: str,
                target: int, midpoints: int = 6, u=None,
                truncation: float = 0.3) -> dict[str, np.ndarray]:
  """An interpolation sequence (upstream `interp_sheet`).

  Args:
    model, variables: the ImageNet CGN.
    ys: (shape, texture, background) start classes.
    interp: 'all', 'shape', 'text' or 'bg'.
    target: the class the mechanism(s) move to.
    midpoints: frames between the two ends (midpoints + 2 in all).
    u: [1, z_dim] noise (default `U_FIXED`).
    truncation: BigGAN statistics (0.3: the README's interpolation example).

  Returns:
    {'x_gen' [F, H, W, 3], 'out' (the interpolated mechanism's output:
    mask repeated to 3 channels, foreground, background, or x_gen for
    'all'), and every counterfactual_forward output}, numpy float32.
  """
  ys = [imagenet_classes.check_class(c) for c in ys]
  target = imagenet_classes.check_class(target, "target class")
  vecs = interpolation_class_vectors(ys, interp, target, midpoints,
                                     model.num_classes)
  u = fixed_noise() if u is None else np.asarray(u, np.float32)
  if u.shape != (1, model.z_dim):
    raise ValueError(f"noise must have shape (1, {model.z_dim}), got "
                     f"{u.shape}")
  frames = midpoints + 2
  out = _forward_jit(
      model, variables, jnp.repeat(jnp.asarray(u), frames, axis=0),
      tuple(jnp.asarray(v) for v in vecs), float(truncation))
  out = jax.tree.map(np.asarray, out)
  out["out"] = {"all": out["x_gen"],
                "shape": np.repeat(out["mask"], 3, axis=-1),
                "text": out["foreground"],
                "bg": out["background"]}[interp]
  return out


def counterfactual_grid(model, variables, classes: Sequence[int], *, u=None,
                        truncation: float = 0.3) -> np.ndarray:
  """Every (shape, texture, background) combination of `classes`.

  Returns:
    [n, n * n, H, W, 3] float32: row i has shape class classes[i]; column
    j * n + k has texture classes[j] and background classes[k]. One noise
    vector (default `U_FIXED`) for all.
  """
  cs = [imagenet_classes.check_class(c) for c in classes]
  n = len(cs)
  grid = np.array([(s, t, b) for s in cs for t in cs for b in cs], np.int32)
  u = fixed_noise() if u is None else np.asarray(u, np.float32)
  eye = np.eye(model.num_classes, dtype=np.float32)  # as interpolate()
  out = _forward_jit(
      model, variables, jnp.repeat(jnp.asarray(u), len(grid), axis=0),
      tuple(jnp.asarray(eye[grid[:, k]]) for k in range(3)),
      float(truncation))
  x = np.asarray(out["x_gen"])
  return x.reshape((n, n * n) + x.shape[1:])


# ----------------------------------------------------------------- driver --


def run_config(config, workdir, *,
               programs: Programs | None = None) -> dict[str, pathlib.Path]:
  """generate.py for configs/counterfactuals_imagenet.py.

  Writes WORKDIR/counterfactuals/ (records), WORKDIR/preview.png and, when
  `config.export_dir` is set, upstream's layout there. With several
  processes they share the generation (`write_dataset`); process 0 writes
  the preview, the export and config.json.

  Args:
    config: a configs/counterfactuals_imagenet.py config.
    workdir: the output directory.
    programs: `build_programs` of the config's model and settings to reuse;
      by default built here.
  """
  from cgn_jax.train import common  # pylint: disable=g-import-not-at-top
  workdir = pathlib.Path(workdir)
  model, variables, info = load_cgn(config.cgn, config.dtype)
  fields = tuple(f for f in config.fields.replace(" ", "").split(",") if f)
  bad = sorted(set(fields) - set(FIELDS))
  if bad:
    raise ValueError(f"config.fields {bad} unknown; choose from {FIELDS}")
  out = {"counterfactuals": workdir / "counterfactuals"}
  write_dataset(
      out["counterfactuals"], model, variables, num=config.num,
      seed=config.seed, mode=config.mode,
      classes=parse_classes(config.classes), truncation=config.truncation,
      batch_size=config.batch_size, shard_size=config.shard_size,
      quality=config.jpeg_quality, normalize=config.normalize, fields=fields,
      weights_sha256=info["sha256"], overwrite=config.overwrite,
      programs=programs)
  if config.export_dir:
    export = pathlib.Path(config.export_dir)
    if not export.is_absolute():
      export = workdir / export
    out["export"] = export
  if distributed.is_main_process():
    src = records.CounterfactualSource(out["counterfactuals"])
    preview = np.stack([src[i]["image"] for i in range(min(32, len(src)))])
    common.save_image_grid(workdir / "preview.png",
                           preview.astype(np.float32) / 127.5 - 1.0, nrow=8)
    if config.export_dir:
      records.export_upstream(out["counterfactuals"], out["export"],
                              run_name=config.run_name or None,
                              fields=fields)
  common.write_json(workdir / "config.json",
                    dict(config.to_dict(), cgn_sha256=info["sha256"]))
  distributed.sync("cgn_jax.counterfactuals.imagenet.run_config")
  return out
