"""Trains the ImageNet CGN (SPEC §4.4-§4.5): three Adam groups, accumulation.

One *update* (upstream: one "episode") is `batch_acc` micro-steps inside one
jitted function (`lax.scan`). Each micro-step draws its inputs on the device
(one class for the micro-batch, or one per sample; truncated-normal noise,
the same for the four generators), runs the CGN in train mode (the three
mechanisms' spectral norm runs one power iteration and its u, v are carried
to the next micro-step, as upstream's every forward updates them), computes
the six losses (`cgn_jax.losses.cgn_imagenet`) and their gradient with
respect to f_shape, f_text and f_bg only. The gradients are summed over the
micro-steps (upstream, SPEC §4.5) or averaged (`accumulate='mean'`), then
one `optax.multi_transform` step applies Adam with lr 8e-6 / 3e-5 / 1e-5 to
shape / texture / background. `biggan_gt` and U²-Net are never
differentiated and come back unchanged.

Randomness: update `s` uses `fold_in(state.rng, s)`, split into one key per
micro-step, so the "data position" is the update counter and a resumed run
is bitwise identical to an uninterrupted one on CPU.

The jitted functions of a run (the update, the sheet sampler), its
optimizer and the state's layout are built once, by `build_programs`, into a
`Programs` object that a caller may pass to several runs of the same
configuration (nothing is cached behind its back). VGG16 and the CGN's
weights are data: each run loads its own.

Several processes (jax.distributed): every process builds the same state
and runs the same loop; the state is laid out across all of them and only
process 0 writes config.json, metrics, sheets and results.json and shows
the progress bar (checkpoints are written by all, through orbax).

Deviations from upstream (SPEC §10): sample sheets are drawn in eval mode
from a fixed noise as upstream, but never change the training state;
metrics, sheets and checkpoints count updates, not forward passes.
"""

import dataclasses
import functools
import json
import os
import pathlib
import time
from typing import Any, Callable

from absl import logging
import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from cgn_jax import distributed
from cgn_jax.losses import cgn_imagenet as losses_lib
from cgn_jax.models import biggan as biggan_lib
from cgn_jax.models import biggan_weights
from cgn_jax.models import imagenet_cgn
from cgn_jax.models import imagenet_cgn_weights
from cgn_jax.models import u2net_weights
from cgn_jax.models import vgg16 as vgg_lib
from cgn_jax.models import vgg16_weights
from cgn_jax.train import common

P = jax.sharding.PartitionSpec
GROUPS = {"f_shape": "shape", "f_text": "texture", "f_bg": "bg"}
SHEET_COLUMNS = ("mask", "premask", "foreground", "background", "x_gen",
                 "x_gt")
_SHARD_MIN_SIZE = 2**16  # smaller leaves stay replicated under shard_params


# ------------------------------------------------------------------ state --


@flax.struct.dataclass
class TrainState:
  """Everything a run holds; the checkpointed pytree.

  params / spectral: the three mechanisms (f_shape, f_text, f_bg).
  frozen: {'params': {biggan_gt, u2net}, 'spectral': {biggan_gt},
           'batch_stats': all five}: never changes, kept so that a
           checkpoint is the whole CGN.
  """
  step: jax.Array  # updates done
  rng: jax.Array
  params: Any
  spectral: Any
  frozen: Any
  opt_state: Any
  tx: optax.GradientTransformation = flax.struct.field(pytree_node=False)


@dataclasses.dataclass(frozen=True)
class Static:
  """The hashable, static part of a run: it keys the compiled update."""
  model: imagenet_cgn.ImageNetCGN
  vgg: vgg_lib.VGG16
  lambdas: tuple  # sorted (name, value) pairs
  truncation: float
  batch_size: int
  batch_acc: int
  accumulate: str
  per_sample: bool

  @classmethod
  def from_config(cls, config, model) -> "Static":
    if config.accumulate not in ("sum", "mean"):
      raise ValueError(f"accumulate must be 'sum' (upstream) or 'mean', got "
                       f"{config.accumulate!r}")
    if config.class_per not in ("batch", "sample"):
      raise ValueError(f"class_per must be 'batch' (upstream) or 'sample', "
                       f"got {config.class_per!r}")
    lam = {k: (tuple(float(w) for w in v) if isinstance(v, (list, tuple))
               else float(v)) for k, v in config.lambdas.items()}
    return cls(model=model, vgg=vgg_lib.VGG16(dtype=model.dtype),
               lambdas=tuple(sorted(lam.items())),
               truncation=imagenet_cgn.check_truncation(config.truncation),
               batch_size=int(config.batch_size),
               batch_acc=int(config.batch_acc),
               accumulate=config.accumulate,
               per_sample=config.class_per == "sample")


def create_model(config) -> imagenet_cgn.ImageNetCGN:
  m = config.model
  overrides = {"channel_width": m.channel_width} if m.channel_width else {}
  return imagenet_cgn.from_config(
      biggan_lib.get_config(m.biggan, **overrides), m.u2net_variant,
      bn_interpolation=m.bn_interpolation, dtype=jnp.dtype(m.dtype),
      remat=bool(m.remat))


def _labels(params):
  return {k: jax.tree.map(lambda _, g=GROUPS[k]: g, v)
          for k, v in params.items()}


def make_optimizer(config) -> optax.GradientTransformation:
  """Adam per mechanism (SPEC §4.5: 8e-6 shape, 3e-5 texture, 1e-5 bg).

  The transform is a static field of the train state: states made with two
  different (unequal) transforms retrace the jitted update, so one run (or
  one `Programs`) builds it once.
  """
  lr, a = config.lr, config.adam
  transforms = {
      g: optax.adam(float(v), b1=float(a.b1), b2=float(a.b2),
                    eps=float(a.eps))
      for g, v in zip(("shape", "texture", "bg"),
                      (lr.shape, lr.texture, lr.bg))}
  return optax.multi_transform(transforms, _labels)


def state_from_variables(variables, tx, seed: int) -> TrainState:
  """A fresh state from ImageNetCGN variables."""
  params, frozen_params = imagenet_cgn.split_trainable(variables["params"])
  spectral = {k: variables["spectral"][k] for k in imagenet_cgn.MECHANISMS}
  frozen = {"params": frozen_params,
            "spectral": {"biggan_gt": variables["spectral"]["biggan_gt"]},
            "batch_stats": variables["batch_stats"]}
  return TrainState(step=jnp.zeros((), jnp.int32),
                    rng=jax.random.PRNGKey(seed), params=params,
                    spectral=spectral, frozen=frozen,
                    opt_state=tx.init(params), tx=tx)


def variables_of(state: TrainState) -> dict:
  """The full ImageNetCGN variables of a state."""
  f = state.frozen
  return {"params": {**state.params, **f["params"]},
          "spectral": {**state.spectral, **f["spectral"]},
          "batch_stats": f["batch_stats"]}


# ------------------------------------------------------------------ update --


def _micro_loss(params, spectral, state, u, y, key, vgg_variables, *,
                s: Static):
  """Total loss of one micro-batch; aux = (metrics, new spectral state)."""
  variables = variables_of(state.replace(params=params, spectral=spectral))
  out, new_spectral = imagenet_cgn.fused_forward(s.model, variables, u, y,
                                                 s.truncation, train=True)
  total, metrics = losses_lib.cgn_imagenet_losses(
      out, s.vgg.apply, vgg_variables, dict(s.lambdas), rng=key)
  return total, (dict(metrics, total=total), new_spectral)


def micro_step(state: TrainState, spectral, key, vgg_variables, *,
               s: Static, batch_sharding=None):
  """One micro-step: draw inputs, forward, six losses, their gradient.

  Args:
    state: the train state (its params; `spectral` replaces its spectral).
    spectral: the mechanisms' spectral-norm state going in.
    key: this micro-step's PRNG key (inputs and texture windows).
    vgg_variables: VGG16 variables (None: no style terms).
    s: the static configuration.
    batch_sharding: where the drawn batch lives (the data mesh).

  Returns:
    (grads w.r.t. state.params, metrics, spectral after the forward).
  """
  k_draw, k_loss = jax.random.split(key)
  u, y = imagenet_cgn.training_draw(
      k_draw, s.batch_size, s.truncation, per_sample=s.per_sample,
      num_classes=s.model.num_classes, z_dim=s.model.z_dim)
  if batch_sharding is not None:
    u = jax.lax.with_sharding_constraint(u, batch_sharding)
    y = jax.lax.with_sharding_constraint(y, batch_sharding)
  grad_fn = jax.value_and_grad(functools.partial(_micro_loss, s=s),
                               argnums=0, has_aux=True)
  (_, (metrics, spectral)), grads = grad_fn(state.params, spectral, state, u,
                                            y, k_loss, vgg_variables)
  return grads, metrics, spectral


def micro_keys(state: TrainState, batch_acc: int) -> jax.Array:
  """The update's `batch_acc` micro-step keys: the data position is the step."""
  return jax.random.split(jax.random.fold_in(state.rng, state.step),
                          batch_acc)


def accumulate_micro_step(state: TrainState, grads, spectral, key,
                          vgg_variables, *, s: Static, batch_sharding=None):
  """`micro_step`, its gradient added to `grads`: (grads, spectral, metrics)."""
  g, metrics, spectral = micro_step(state, spectral, key, vgg_variables, s=s,
                                    batch_sharding=batch_sharding)
  return jax.tree.map(jnp.add, grads, g), spectral, metrics


def apply_gradients(state: TrainState, grads, spectral, metrics, *,
                    s: Static):
  """The Adam step on the accumulated `grads`; metrics [batch_acc] averaged."""
  if s.accumulate == "mean":
    grads = jax.tree.map(lambda g: g / s.batch_acc, grads)
  updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
  new_state = state.replace(step=state.step + 1,
                            params=optax.apply_updates(state.params, updates),
                            spectral=spectral, opt_state=opt_state)
  return new_state, jax.tree.map(lambda m: jnp.mean(m.astype(jnp.float32)),
                                 metrics)


def train_update(state: TrainState, vgg_variables, *, s: Static,
                 batch_sharding=None):
  """One update: `batch_acc` micro-steps, then one Adam step. Pure; jit it.

  Returns:
    (new state, metrics averaged over the micro-steps).
  """
  def micro(carry, key):
    grads, spectral, metrics = accumulate_micro_step(
        state, *carry, key, vgg_variables, s=s, batch_sharding=batch_sharding)
    return (grads, spectral), metrics

  zeros = jax.tree.map(jnp.zeros_like, state.params)
  (grads, spectral), metrics = jax.lax.scan(
      micro, (zeros, state.spectral), micro_keys(state, s.batch_acc))
  return apply_gradients(state, grads, spectral, metrics, s=s)


def _leaf_sharding(x, mesh, shard: bool):
  """Replicated, or (shard_params) the largest divisible axis over 'data'."""
  n = mesh.shape["data"]
  if shard and n > 1 and x.size >= _SHARD_MIN_SIZE:
    axes = sorted(range(x.ndim), key=lambda a: -x.shape[a])
    for a in axes:
      if x.shape[a] % n == 0:
        spec = [None] * x.ndim
        spec[a] = "data"
        return jax.sharding.NamedSharding(mesh, P(*spec))
  return common.replicated(mesh)


def state_sharding(state, mesh, shard_params: bool):
  return jax.tree.map(lambda x: _leaf_sharding(x, mesh, shard_params), state)


def jit_update(s: Static, mesh, sharding, loop: str = "scan") -> Callable:
  """`train_update` of one static configuration, jitted (a new function).

  The state keeps its layout (`sharding`, a tree like the state) and is
  donated: its buffers are reused for the new state.

  Args:
    s: the static configuration.
    mesh: the data mesh.
    sharding: the state's layout.
    loop: 'scan' runs the micro-steps as one `lax.scan` inside one program
      (accelerators); 'host' runs one jitted micro-step per accumulation
      step from Python, then the jitted Adam step: the same arithmetic in
      the same order, for XLA:CPU, which runs convolutions inside loops far
      slower (the full-size BigGAN-deep gradient ~57x).
  """
  rep = common.replicated(mesh)
  batch = common.batch_sharding(mesh)
  if loop == "scan":
    fn = functools.partial(train_update, s=s, batch_sharding=batch)
    return jax.jit(fn, in_shardings=(sharding, rep),
                   out_shardings=(sharding, rep), donate_argnums=(0,))
  if loop != "host":
    raise ValueError(f"accumulation_loop must be 'auto', 'scan' or 'host', "
                     f"got {loop!r}")
  # Every value stays a device array inside jitted functions (the micro-step
  # index too): eager ops on arrays that span processes are not allowed.
  # The keys are split once per update, as the scan does.
  start = jax.jit(lambda st: (jax.tree.map(jnp.zeros_like, st.params),
                              micro_keys(st, s.batch_acc),
                              jnp.zeros((), jnp.int32)),
                  out_shardings=(sharding.params, rep, rep))
  step = functools.partial(accumulate_micro_step, s=s, batch_sharding=batch)

  def micro_i(state, grads, spectral, keys, i, vgg_variables):
    grads, spectral, metrics = step(state, grads, spectral, keys[i],
                                    vgg_variables)
    return grads, spectral, i + 1, metrics

  micro = jax.jit(micro_i, out_shardings=(sharding.params, sharding.spectral,
                                          rep, rep), donate_argnums=(1,))
  finish = jax.jit(
      lambda state, grads, spectral, metrics: apply_gradients(
          state, grads, spectral,
          jax.tree.map(lambda *ms: jnp.stack(ms), *metrics), s=s),
      out_shardings=(sharding, rep), donate_argnums=(0,))

  def update(state, vgg_variables):
    (grads, keys, i), spectral, metrics = start(state), state.spectral, []
    for _ in range(s.batch_acc):
      grads, spectral, i, m = micro(state, grads, spectral, keys, i,
                                    vgg_variables)
      metrics.append(m)
    return finish(state, grads, spectral, metrics)
  return update


def accumulation_loop(config) -> str:
  """config.accumulation_loop, with 'auto' resolved for this backend."""
  loop = str(config.accumulation_loop)
  if loop == "auto":
    return "host" if jax.default_backend() == "cpu" else "scan"
  return loop


def abstract_state(model, tx, sharding_of=None) -> TrainState:
  """The train state's shapes and dtypes (traced, nothing computed).

  With `sharding_of` (abstract state -> sharding tree), the leaves carry
  those shardings: a restore target.
  """
  abstract = jax.eval_shape(
      lambda: state_from_variables(
          jax.tree.map(jnp.zeros_like,
                       imagenet_cgn.abstract_variables(model)), tx, 0))
  if sharding_of is None:
    return abstract
  return jax.tree.map(
      lambda x, sh: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh),
      abstract, sharding_of(abstract))


def place(tree, sharding):
  """`tree` laid out as `sharding` (a tree like it), across processes.

  `jax.device_put` to a sharding that spans processes fails in jax 0.10
  (see `distributed.replicate`): with several processes the leaves go
  through host memory into one jitted identity instead. Every process must
  pass the same values. On one process this is that device_put.
  """
  if jax.process_count() == 1:
    return jax.device_put(tree, sharding)
  return jax.jit(lambda t: t, out_shardings=sharding)(
      jax.tree.map(np.asarray, tree))


# ----------------------------------------------------------------- weights --


def _need_dir(spec: str, field: str, howto: str) -> str:
  path = pathlib.Path(os.path.expanduser(spec)) if spec else None
  if path is None or not path.is_dir():
    raise FileNotFoundError(
        f"{field}={spec!r} is not a directory of converted weights; {howto} "
        f"and set --config.{field}=DIR (or 'random' for a smoke run)")
  return str(path)


_HOWTO = {
    "cgn": "convert the authors' cgn.pth with `python -m converters "
           "cgn-imagenet --input cgn.pth --output DIR`",
    "biggan": "convert BigGAN-deep-256 with `python -m converters biggan "
              "--input biggan-deep-256-pytorch_model.bin --config "
              "biggan-deep-256 --output DIR`",
    "u2net": "convert U²-Net with `python -m converters u2net --input "
             "u2net.pth --output DIR`",
    "vgg16": "convert torchvision's VGG16 with `python -m converters vgg16 "
             "--input vgg16-397923af.pth --output DIR`",
}


def check_weight_paths(config, resuming: bool) -> None:
  """Fails fast, before anything is built, on a missing weights directory.

  A resumed run needs only VGG16 (the checkpoint holds the whole CGN).
  """
  w = config.weights
  fields = ["vgg16"]
  if not resuming:
    fields += ["cgn"] if w.cgn else ["biggan", "u2net"]
  for field in fields:
    if w[field] not in ("random", "none") or field == "cgn":
      _need_dir(w[field], f"weights.{field}", _HOWTO[field])


def load_variables(config, model) -> dict:
  """The CGN's initial variables from the configured weights (SPEC §4.1).

  `weights.cgn` (a converted authors' cgn.pth) gives all five submodules;
  otherwise all four BigGANs start from the one converted BigGAN in
  `weights.biggan` (as upstream) and U²-Net from `weights.u2net`.
  """
  w = config.weights
  if w.cgn:
    path = _need_dir(w.cgn, "weights.cgn", _HOWTO["cgn"])
    found, variables = imagenet_cgn_weights.load(path)
    if found != model:
      raise ValueError(
          f"weights.cgn={w.cgn} holds a CGN with BigGAN channel_width "
          f"{found.biggan_config['channel_width']} and {found.u2net_variant}; "
          f"the config builds channel_width "
          f"{model.biggan_config['channel_width']} and {model.u2net_variant}:"
          " set --config.model.channel_width / model.u2net_variant to match")
    return variables
  if w.biggan == "random":
    bg = imagenet_cgn.random_biggan_variables(model, config.seed)
  else:
    path = _need_dir(w.biggan, "weights.biggan", _HOWTO["biggan"])
    found, bg = biggan_weights.load(path)
    if found != model.biggan_config:
      raise ValueError(f"weights.biggan={w.biggan} is a BigGAN of another "
                       f"size (channel_width {found['channel_width']}) than "
                       "model.biggan / model.channel_width")
  if w.u2net == "random":
    from cgn_jax.models import u2net as u2net_lib  # pylint: disable=g-import-not-at-top
    u2 = u2net_lib.init_variables(config.seed, model.u2net_variant)
  else:
    path = _need_dir(w.u2net, "weights.u2net", _HOWTO["u2net"])
    variant, u2 = u2net_weights.load(path)
    if variant != model.u2net_variant:
      raise ValueError(f"weights.u2net={w.u2net} is {variant}, the config "
                       f"asks for model.u2net_variant={model.u2net_variant}")
  return jax.tree.map(jnp.asarray, imagenet_cgn.assemble(bg, u2))


def load_vgg(spec: str):
  """VGG16 {'params', 'frozen'} for the style losses; None for 'none'.

  Not cached: each run loads its own (about a second for 'random'), so a
  `Programs` holds programs only, never weights.
  """
  if spec not in ("random", "none"):
    spec = _need_dir(spec, "weights.vgg16", _HOWTO["vgg16"])
  variables = vgg16_weights.load_vgg16(spec)
  if variables is None:
    return None
  params = variables.get("params", variables)
  return {"params": params, "frozen": vgg_lib.frozen_variables(params)}


# ---------------------------------------------------------------- samples --


def make_sheet_fn(model, truncation: float, mesh) -> Callable:
  """Jitted `(variables, u [N, z], labels [N]) -> outputs`, eval mode.

  The outputs are replicated, so every process can read them.
  """
  def sample(variables, u, labels):
    return model.apply(variables, u, labels, truncation)
  return jax.jit(sample, out_shardings=common.replicated(mesh))


def save_sheet(path, state: TrainState, classes, u_fixed, *,
               sheet_fn: Callable) -> pathlib.Path:
  """Upstream's class sheet: one row per class, SHEET_COLUMNS left to right.

  The mask is shown as is ([0, 1]); each row's other five images are
  min-max normalised together (torchvision make_grid(normalize=True)).
  Every process computes it (the state spans them); process 0 writes it.

  Args:
    path: the PNG to write.
    state: the train state.
    classes: one class per row.
    u_fixed: [1, z] noise (numpy), the same for every row.
    sheet_fn: `make_sheet_fn(model, truncation, mesh)`, built once per run.
  """
  labels = np.asarray(classes, np.int32)
  u = np.broadcast_to(np.asarray(u_fixed, np.float32),
                      (len(classes), u_fixed.shape[-1]))
  out = distributed.to_host(sheet_fn(variables_of(state), u, labels))
  rows = []
  for i in range(len(classes)):
    imgs = np.stack([out[c][i] for c in SHEET_COLUMNS[1:]])
    lo, hi = imgs.min(), imgs.max()
    imgs = (imgs - lo) / max(hi - lo, 1e-8) * 2.0 - 1.0
    mask = np.repeat(out["mask"][i], 3, axis=-1) * 2.0 - 1.0
    rows.append(np.concatenate([mask[None], imgs]))
  path = pathlib.Path(path)
  common.save_image_grid(path, np.concatenate(rows), nrow=len(SHEET_COLUMNS))
  return path


# ----------------------------------------------------------------- driver --


# Config fields that change neither the jitted programs nor the state's
# layout: loop length, logging, checkpoint cadence, which sheet rows.
RESUMABLE_FIELDS = ("num_updates", "log_every", "save_every",
                    "keep_checkpoints", "progress_bar", "sheet_classes",
                    "overwrite")


@dataclasses.dataclass(frozen=True)
class Programs:
  """Everything jitted for one configuration, built once (`build_programs`).

  A run builds its own unless given one; tests and benchmarks that run the
  same configuration several times in a process pass one `Programs` to all
  of them, so the update is traced and compiled once. `key` records the
  config it was built for; `train_and_evaluate` refuses another.
  """
  key: str
  model: imagenet_cgn.ImageNetCGN
  static: Static
  mesh: Any
  tx: optax.GradientTransformation
  abstract: TrainState  # ShapeDtypeStructs with their shardings
  sharding: TrainState  # the state's layout, a tree like it
  update: Callable  # (state, vgg variables) -> (state, metrics)
  sheet: Callable  # make_sheet_fn


def programs_key(config) -> str:
  """The config fields the programs depend on, as a JSON string.

  The seed and the weights give only the initial values (VGG16 only
  whether there is one: 'none' drops the style terms).
  """
  record = common.run_record(
      config, RESUMABLE_FIELDS + ("seed", "weights"),
      with_vgg=str(config.weights.vgg16) != "none")
  return json.dumps(record, sort_keys=True)


def check_programs(programs: Programs, config) -> None:
  """Raises ValueError, naming the fields, unless built for `config`."""
  common.check_programs_key(programs.key, programs_key(config),
                            "build_programs(config)")


def build_programs(config, *, mesh=None) -> Programs:
  """Builds (does not compile yet) the jitted functions of `config`.

  Traces the model's init abstractly (`jax.eval_shape`) for the state's
  layout; compiles nothing.
  """
  model = create_model(config)
  s = Static.from_config(config, model)
  mesh = mesh if mesh is not None else common.make_mesh()
  tx = make_optimizer(config)
  shard = bool(config.shard_params)
  abstract = abstract_state(
      model, tx, lambda a: state_sharding(a, mesh, shard))
  sharding = jax.tree.map(lambda x: x.sharding, abstract)
  return Programs(
      key=programs_key(config), model=model, static=s, mesh=mesh, tx=tx,
      abstract=abstract, sharding=sharding,
      update=jit_update(s, mesh, sharding, accumulation_loop(config)),
      sheet=make_sheet_fn(model, float(config.sheet_truncation), mesh))


def _initial_state(config, programs: Programs, ckpt):
  """Resume order: the workdir's checkpoint, else the configured weights."""
  if ckpt.latest_step() is not None:
    state, meta = ckpt.restore(programs.abstract)
    logging.info("resuming from update %d", int(meta["step"]))
    return state, "checkpoint"
  variables = load_variables(config, programs.model)
  state = state_from_variables(variables, programs.tx, config.seed)
  return place(state, programs.sharding), "weights"


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       programs: Programs | None = None) -> TrainState:
  """Trains the ImageNet CGN of `config`, resuming from `workdir` if possible.

  Writes WORKDIR/metrics.jsonl (every `log_every` updates: each loss, the
  mean mask, images_per_second), WORKDIR/samples/sheet_UPDATE.png (at the
  start, every `save_every` updates and at the end), WORKDIR/checkpoints/
  (every `save_every`, at the end and on SIGTERM), WORKDIR/results.json.

  Args:
    config: a configs/cgn_imagenet.py config.
    workdir: output and checkpoint directory.
    programs: `build_programs(config)` to reuse (same configuration); by
      default built here.

  Returns:
    The final train state.

  Raises:
    FileNotFoundError: a weights directory is missing (the message says how
      to convert it).
    ValueError: truncation outside (0, 1], a bad config value, or
      `programs` built for another configuration.
    common.NonFiniteLossError: a loss became NaN/Inf (the update is named).
  """
  # ---------------------------------------------------------------- setup
  workdir = pathlib.Path(workdir)
  if programs is not None:
    check_programs(programs, config)
  # Config errors and missing weights fail before anything is built.
  s = Static.from_config(config, create_model(config))
  common.check_global_batch(s.batch_size)
  check_weight_paths(config, resuming=common.has_checkpoint(workdir))
  vgg_variables = load_vgg(str(config.weights.vgg16))
  if programs is None:
    programs = build_programs(config)
  model, mesh = programs.model, programs.mesh
  if vgg_variables is not None:
    vgg_variables = common.replicate(vgg_variables, mesh)
  common.write_json(workdir / "config.json", config.to_dict())

  # ------------------------------------------------------ state / restore
  # A checkpoint made with another config is refused (or, with overwrite,
  # deleted) before it is opened.
  common.guard_workdir(workdir, common.run_record(config, RESUMABLE_FIELDS),
                       overwrite=bool(config.overwrite))
  ckpt = common.Checkpointer(workdir, max_to_keep=config.keep_checkpoints)
  writer = common.MetricWriter(workdir)
  from tqdm import tqdm  # pylint: disable=g-import-not-at-top
  bar = None
  try:
    state, origin = _initial_state(config, programs, ckpt)
    step, num = int(state.step), int(config.num_updates)
    sheet_key = jax.random.fold_in(jax.random.PRNGKey(config.seed), 10**6)
    u_fixed = np.asarray(imagenet_cgn.sample_noise(
        sheet_key, 1, config.sheet_truncation, model.z_dim))
    per_update = s.batch_size * s.batch_acc
    logging.info("ImageNet CGN: %d of %d updates to go (%s), %d x %d "
                 "samples per update on %d devices", num - step, num, origin,
                 s.batch_size, s.batch_acc, jax.device_count())

    def sheet(at):
      if not config.sheet_classes:  # () turns sheets off
        return
      save_sheet(workdir / "samples" / f"sheet_{at:07d}.png", state,
                 tuple(config.sheet_classes), u_fixed, sheet_fn=programs.sheet)

    if origin == "weights" and config.save_every > 0:
      sheet(step)  # upstream also saves before the first update (i = 0)

    # --------------------------------------------------------------- loop
    bar = tqdm(total=num, initial=step, unit="update", dynamic_ncols=True,
               disable=not config.progress_bar
               or not distributed.is_main_process())
    start, last, first = time.time(), None, True
    with common.StopSignal() as stop:
      while step < num:
        t0 = time.time()
        state, metrics = programs.update(state, vgg_variables)
        metrics = {k: float(v)
                   for k, v in distributed.to_host(metrics).items()}
        step += 1
        bar.update(1)
        common.check_finite(step, metrics, ckpt.directory)
        if first:  # includes compilation
          metrics["first_update_s"], first = time.time() - t0, False
        else:
          metrics["images_per_second"] = per_update / (time.time() - t0)
        last = metrics
        done = step == num
        if config.log_every and (step % config.log_every == 0 or done):
          writer.write(step, metrics)
          bar.set_postfix({k: f"{metrics[k]:.3g}" for k in
                           ("total", "mask_mean") if k in metrics})
        save_now = config.save_every and step % config.save_every == 0
        if save_now or done:
          sheet(step)
        if save_now or done or stop.requested:
          ckpt.save(step, state, meta={"model": "cgn_imagenet"})
        if stop.requested:
          logging.warning("stopped by signal at update %d (checkpoint "
                          "saved)", step)
          return state
  finally:
    if bar is not None:
      bar.close()
    ckpt.close()
    writer.close()

  # --------------------------------------------------------------- finish
  common.write_json(workdir / "results.json", {
      "step": step, "num_updates": num, "final_losses": last,
      "wall_s": time.time() - start, "started_from": origin})
  return state
