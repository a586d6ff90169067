"""Trains the MNIST CGN (SPEC §2.5-§2.7, §7.1-§7.2) with G and D steps.

GAN step pattern (STYLE habit 8): separate, named generator and discriminator
updates inside one pure `train_step`, in upstream's order (SPEC §2.7):

  1. G: y_gen ~ U{0..9}; generate in normal mode with BatchNorm in training
     mode (its running stats are updated); D in training mode (dropout on,
     DiscConv's BN stats updated); loss = LSGAN adv + binary mask entropy +
     Gram style loss against the real batch [+ SSIM] [+ edge]; Adam step.
  2. D: ½[MSE(D(x_real), 1) + MSE(D(x_gen.detached), 0)] with the
     *pre-update* D params (the G step leaves D's params unchanged, as
     upstream, which only clears D's stray grads); Adam step.

Everything per step happens on the device: the real images are rendered from
the pipeline's digits inside the step (and colour-jittered on [0, 1] before
normalisation when enabled), VGG16 runs only up to the deepest layer with a
nonzero style weight. `steps_per_call` steps run in one jitted `lax.scan`.

One train state holds both networks, both Adam states and the RNG; each
step's randomness is `fold_in(state.rng, state.step)`, so a resumed run is
bitwise identical to an uninterrupted one. The jitted functions of a run
(initialiser, multi-step, sampler) and its optimizers are built once, by
`build_programs`, into a `Programs` object that a caller may pass to several
runs of the same configuration (nothing is cached behind its back).
Deviations from upstream (all
documented quirks, SPEC §10): sample sheets are drawn in training mode as
upstream but their BatchNorm updates are discarded (§10 item 4), so
sampling never changes training; the SSIM term has a gradient and data range
2 (§10 item 9); colour jitter is applied before normalisation, to training
images only (§10 item 8).
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
from flax import linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from cgn_jax import distributed
from cgn_jax import losses
from cgn_jax.data import pipeline
from cgn_jax.models import cgn as cgn_lib
from cgn_jax.models import discriminators
from cgn_jax.models import cgn_weights
from cgn_jax.models import vgg16 as vgg_lib
from cgn_jax.models import vgg16_weights
from cgn_jax.train import common

P = jax.sharding.PartitionSpec
VGG_LAYERS = ("relu1_2", "relu2_2", "relu3_3", "relu4_3")
SAMPLES_PER_CLASS = 3  # upstream sheet: 3 per class, one row per class
SHEET_PARTS = ("x_gen", "mask", "foreground", "background")


# ------------------------------------------------------------------ state --


@flax.struct.dataclass
class TrainState:
  """Everything that changes during training; the checkpointed pytree."""
  step: jax.Array
  rng: jax.Array
  g_params: Any
  g_batch_stats: Any
  d_params: Any
  d_batch_stats: Any
  g_opt_state: Any
  d_opt_state: Any
  g_tx: optax.GradientTransformation = flax.struct.field(pytree_node=False)
  d_tx: optax.GradientTransformation = flax.struct.field(pytree_node=False)


@dataclasses.dataclass(frozen=True)
class Models:
  """The (stateless, hashable) modules of one config."""
  cgn: nn.Module
  disc: nn.Module
  vgg: nn.Module | None
  vgg_upto: str | None


@dataclasses.dataclass(frozen=True)
class LossConfig:
  """Static loss weights and augmentation; hashable, so it keys the jit."""
  mask: float
  perc: tuple[float, ...]
  ssim: float = 0.0
  edge: float = 0.0
  jitter: tuple[float, float, float, float] | None = None  # b, c, s, h

  @classmethod
  def from_config(cls, config, with_style: bool) -> "LossConfig":
    perc = tuple(float(w) for w in config.lambdas.perc)
    if len(perc) != len(VGG_LAYERS):
      raise ValueError(f"lambdas.perc needs {len(VGG_LAYERS)} weights "
                       f"({', '.join(VGG_LAYERS)}), got {perc}")
    j = config.jitter
    return cls(mask=float(config.lambdas.mask),
               perc=perc if with_style else (0.0,) * len(VGG_LAYERS),
               ssim=float(config.lambdas.ssim),
               edge=float(config.lambdas.edge),
               jitter=((j.brightness, j.contrast, j.saturation, j.hue)
                       if j.enabled else None))

  @property
  def style_layers(self) -> tuple[str, ...]:
    return tuple(l for l, w in zip(VGG_LAYERS, self.perc) if w)


def vgg_upto(perc) -> str | None:
  """The deepest VGG16 layer with a nonzero style weight (None: no VGG)."""
  used = [l for l, w in zip(VGG_LAYERS, perc) if w]
  return used[-1] if used else None


def create_models(config: ml_collections.ConfigDict,
                  with_vgg: bool = True) -> Models:
  """Builds the generator, the discriminator and (if used) VGG16."""
  m = config.model
  cgn = cgn_lib.CGN(n_classes=m.n_classes, latent_sz=m.latent_sz, ngf=m.ngf,
                    img_sz=m.img_sz, init_type=m.init_type,
                    init_gain=m.init_gain)
  disc = discriminators.create(config.disc.type, n_classes=m.n_classes,
                               ndf=config.disc.ndf)
  upto = vgg_upto(config.lambdas.perc) if with_vgg else None
  return Models(cgn=cgn, disc=disc, vgg=vgg_lib.VGG16() if upto else None,
                vgg_upto=upto)


def make_optimizer(config) -> optax.GradientTransformation:
  """Adam (upstream: lr 2e-4, betas 0.5/0.999, eps 1e-8, no decay).

  The transform is static in the train state's tree structure: states made
  with two different (unequal) transforms retrace the jitted step, so one
  run (or one `Programs`) builds it once.
  """
  o = config.optim
  return optax.adam(float(o.lr), b1=float(o.b1), b2=float(o.b2))


def make_initializer(cgn: nn.Module, disc: nn.Module,
                     img_sz: int) -> Callable:
  """Jitted `rng -> (G variables, D variables)`.

  Jitted because eager init dispatches (and compiles) every op of the
  orthogonal initialisers one by one: ~10x slower on CPU.
  """

  def init(rng):
    k_g, k_d, k_noise, k_drop = jax.random.split(rng, 4)
    y = jnp.zeros((2,), jnp.int32)
    g_vars = cgn.init({"params": k_g, "noise": k_noise,
                              "shuffle": k_noise}, y, train=False)
    x = jnp.zeros((2, img_sz, img_sz, 3))
    d_vars = disc.init({"params": k_d, "dropout": k_drop}, x, y,
                              train=False)
    return g_vars, d_vars

  return jax.jit(init)


def create_train_state(config, models: Models, rng: jax.Array, *,
                       programs: "Programs | None" = None) -> TrainState:
  """Fresh parameters (upstream init), Adam states and the RNG.

  With `programs`, its initialiser and optimizers are used (no new jit);
  otherwise fresh ones are built.
  """
  k_init, rng = jax.random.split(rng)
  if programs is not None:
    init, (g_tx, d_tx) = programs.init, programs.tx
  else:
    init = make_initializer(models.cgn, models.disc, config.model.img_sz)
    g_tx, d_tx = make_optimizer(config), make_optimizer(config)
  g_vars, d_vars = init(k_init)
  return TrainState(
      step=jnp.zeros((), jnp.int32), rng=rng,
      g_params=g_vars["params"], g_batch_stats=g_vars.get("batch_stats", {}),
      d_params=d_vars["params"], d_batch_stats=d_vars.get("batch_stats", {}),
      g_opt_state=g_tx.init(g_vars["params"]),
      d_opt_state=d_tx.init(d_vars["params"]), g_tx=g_tx, d_tx=d_tx)


# ------------------------------------------------------------------- step --


def _vgg_features(models: Models, vgg_variables, x):
  return models.vgg.apply(vgg_variables, x, upto=models.vgg_upto)


def _style_terms(models: Models, vgg_variables, x_gen, real_feats,
                 lc: LossConfig):
  """Gram style terms w²·5000·L1(G(x_gen), G(real)) per used VGG layer.

  Same arithmetic as `losses.style_loss_terms`, but the real batch's
  features come in precomputed: running the two halves separately keeps the
  backward pass at batch B instead of 2B (VGG is most of the step's cost).
  """
  feats = _vgg_features(models, vgg_variables, x_gen)
  terms = {}
  for name, w in zip(VGG_LAYERS, lc.perc):
    if w:
      g = losses.gram_matrix(feats[name])
      g_real = losses.gram_matrix(real_feats[name])
      terms[f"g_style_{name}"] = (w**2 * losses.STYLE_SCALE
                                  * jnp.mean(jnp.abs(g - g_real)))
  return {"g_style": sum(terms.values()), **terms}


def _disc(models: Models, params, batch_stats, x, y, rng):
  """D in training mode; returns (scores [B], updated batch stats)."""
  out, mut = models.disc.apply(
      {"params": params, "batch_stats": batch_stats}, x, y, train=True,
      rngs={"dropout": rng}, mutable=["batch_stats"])
  return out, mut.get("batch_stats", batch_stats)


def _generator_loss(g_params, state: TrainState, real, real_feats, y_gen,
                    keys, vgg_variables, *, models: Models, lc: LossConfig):
  """G loss (SPEC §2.5) and the side outputs of its forward pass."""
  (x_gen, aux), g_mut = models.cgn.apply(
      {"params": g_params, "batch_stats": state.g_batch_stats}, y_gen,
      train=True, rngs={"noise": keys["noise"], "shuffle": keys["shuffle"]},
      mutable=["batch_stats"])
  d_out, d_bs = _disc(models, state.d_params, state.d_batch_stats, x_gen,
                      y_gen, keys["d_in_g"])
  terms = {"g_adv": losses.lsgan_generator_loss(d_out),
           "g_binary": losses.binary_entropy_loss(aux["mask"], lc.mask)}
  if lc.style_layers:
    terms.update(_style_terms(models, vgg_variables, x_gen, real_feats, lc))
  if lc.ssim:
    terms["g_ssim"] = losses.ssim_loss(x_gen, real, lc.ssim)  # max_val 2
  if lc.edge:
    terms["g_edge"] = losses.edge_loss(aux["mask"], lc.edge)
  # Per-layer style terms are reported but already summed in g_style.
  total = sum(v for k, v in terms.items() if not k.startswith("g_style_"))
  return total, (terms, x_gen, g_mut["batch_stats"], d_bs)


def _discriminator_loss(d_params, d_batch_stats, real, y_real, x_fake,
                        y_fake, keys, *, models: Models):
  """½[MSE(D(real), 1) + MSE(D(fake), 0)], two forwards as upstream."""
  out_real, bs = _disc(models, d_params, d_batch_stats, real, y_real,
                       keys["d_real"])
  out_fake, bs = _disc(models, d_params, bs, x_fake, y_fake, keys["d_fake"])
  terms = {"d_real": jnp.mean(jnp.square(out_real - 1.0)),
           "d_fake": jnp.mean(jnp.square(out_fake))}
  return losses.lsgan_discriminator_loss(out_real, out_fake), (terms, bs)


def _real_images(batch, key, *, render: Callable, lc: LossConfig):
  """Pipeline batch -> real images [B, 32, 32, 3] in [-1, 1], on device."""
  k_render, k_jit = jax.random.split(key)
  x = render(batch, k_render)
  if lc.jitter is not None:
    # Jitter on [0, 1] before normalising: upstream's reproduction applied
    # it to [-1, 1] tensors, whose negatives torchvision clamped to 0.
    b, c, s, h = lc.jitter
    x01 = losses.color_jitter(k_jit, (x + 1.0) / 2.0, brightness=b,
                              contrast=c, saturation=s, hue=h)
    x = x01 * 2.0 - 1.0
  return x


def train_step(state: TrainState, batch, vgg_variables, *, models: Models,
               lc: LossConfig, render: Callable):
  """One G update then one D update (SPEC §2.7). Pure; jit it.

  Args:
    state: the train state.
    batch: one pipeline batch (`label` [B] and the digits/images).
    vgg_variables: frozen VGG16 {'params', 'frozen'} (None without the
      style loss).
    models: the modules.
    lc: loss weights.
    render: jittable `(batch, rng) -> [B, 32, 32, 3]` in [-1, 1].

  Returns:
    (new state, dict of scalar float32 metrics, one per loss term).
  """
  rng = jax.random.fold_in(state.rng, state.step)
  names = ("render", "y", "noise", "shuffle", "d_in_g", "d_real", "d_fake")
  keys = dict(zip(names, jax.random.split(rng, len(names))))
  y_real = batch["label"].astype(jnp.int32)
  real = _real_images(batch, keys["render"], render=render, lc=lc)
  y_gen = jax.random.randint(keys["y"], y_real.shape, 0,
                             models.cgn.n_classes)
  real_feats = None
  if lc.style_layers:
    # The target of the style loss: the real batch (SPEC §2.5), no grads.
    real_feats = jax.lax.stop_gradient(
        _vgg_features(models, vgg_variables, real))

  g_grad_fn = jax.value_and_grad(
      functools.partial(_generator_loss, models=models, lc=lc), has_aux=True)
  (g_total, (g_terms, x_gen, g_bs, d_bs)), g_grads = g_grad_fn(
      state.g_params, state, real, real_feats, y_gen, keys, vgg_variables)
  g_updates, g_opt = state.g_tx.update(g_grads, state.g_opt_state,
                                       state.g_params)
  g_params = optax.apply_updates(state.g_params, g_updates)

  d_grad_fn = jax.value_and_grad(
      functools.partial(_discriminator_loss, models=models), has_aux=True)
  (d_total, (d_terms, d_bs)), d_grads = d_grad_fn(
      state.d_params, d_bs, real, y_real, jax.lax.stop_gradient(x_gen),
      y_gen, keys)
  d_updates, d_opt = state.d_tx.update(d_grads, state.d_opt_state,
                                       state.d_params)
  d_params = optax.apply_updates(state.d_params, d_updates)

  new_state = state.replace(
      step=state.step + 1, g_params=g_params, g_batch_stats=g_bs,
      d_params=d_params, d_batch_stats=d_bs, g_opt_state=g_opt,
      d_opt_state=d_opt)
  metrics = dict(g_terms, g_total=g_total, **d_terms, d_total=d_total)
  return new_state, jax.tree.map(lambda v: v.astype(jnp.float32), metrics)


def multi_step(state, batches, vgg_variables, *, step_fn: Callable):
  """`k` steps in one call: batches are stacked [k, B, ...]; metrics [k]."""
  k = jax.tree.leaves(batches)[0].shape[0]
  if k == 1:
    state, metrics = step_fn(state, jax.tree.map(lambda b: b[0], batches),
                             vgg_variables)
    return state, jax.tree.map(lambda m: m[None], metrics)
  return jax.lax.scan(lambda s, b: step_fn(s, b, vgg_variables), state, batches)


def jit_steps(step_fn: Callable, mesh) -> Callable:
  """Jits `multi_step` with the state replicated and batches sharded.

  The state is donated: its buffers are reused for the new state.
  """
  rep = common.replicated(mesh)
  return jax.jit(functools.partial(multi_step, step_fn=step_fn),
                 in_shardings=(rep, stacked_batch_sharding(mesh), rep),
                 out_shardings=(rep, rep), donate_argnums=(0,))


def stacked_batch_sharding(mesh) -> jax.sharding.NamedSharding:
  """[k, B, ...] batches: the B axis split over 'data'."""
  return jax.sharding.NamedSharding(mesh, P(None, "data"))


def shard_stacked(batches, mesh):
  """Host-local [k, B_local, ...] numpy batches -> global sharded arrays."""
  sharding = stacked_batch_sharding(mesh)
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding,
                                                       np.asarray(x)),
      batches)


# ----------------------------------------------------------------- inputs --


def load_vgg_variables(spec: str):
  """VGG16 variables for `perceptual.vgg16` (dir | random | none).

  Returns {'params', 'frozen'} (the input-gradient and Winograd kernels,
  computed once here instead of in every step; see models/vgg16.py), None
  for 'none'. A missing directory raises FileNotFoundError saying how to
  download and convert the weights (`cgn_jax/models/vgg16_weights.py`).
  """
  if spec == "none":
    return None
  variables = vgg16_weights.load_vgg16(
      os.path.expanduser(spec) if spec != "random" else spec)
  params = variables.get("params", variables)
  return {"params": params, "frozen": vgg_lib.frozen_variables(params)}


def renderer(dataset: str) -> Callable:
  """`(batch, rng) -> [B, 32, 32, 3]` train images in [-1, 1], jittable.

  A new function object per call: build it once per run (it is part of the
  jitted step's identity).
  """
  return pipeline.device_render(dataset, "train")


def make_input(config, *, seed: int | None = None,
               render: Callable | None = None):
  """The grain iterator of host batches and the jittable device renderer.

  Each host takes its share of the global batch. The iterator repeats
  forever, reshuffling every epoch, and its state is checkpointable.

  Returns:
    (iterator, render, steps_per_epoch): `iterator` yields dicts with
    'label' int32 [B_local] and 'digits' uint8 [B_local, 28, 28] (or
    'image' [B_local, 28, 28, 3] for the original LNTL colored file);
    `render(batch, rng)` gives [B, 32, 32, 3] real images in [-1, 1].
  """
  seed = config.seed if seed is None else seed
  iterator = pipeline.make_train_iterator(config.dataset, config.batch_size,
                                          seed)
  return (iterator, render or renderer(config.dataset),
          pipeline.steps_per_epoch(config.dataset, config.batch_size))


# ---------------------------------------------------------------- samples --


def make_sampler(cgn: nn.Module) -> Callable:
  """Jitted sheet sampler: 3 per class, one row per class (upstream)."""

  def sample(g_params, g_batch_stats, key):
    y = jnp.repeat(jnp.arange(cgn.n_classes), SAMPLES_PER_CLASS)
    k_noise, k_shuffle = jax.random.split(key)
    # Training-mode BN as upstream's sheets, but the stat updates are
    # dropped so that sampling never changes training (SPEC §10 item 4).
    (x_gen, aux), _ = cgn.apply(
        {"params": g_params, "batch_stats": g_batch_stats}, y, train=True,
        rngs={"noise": k_noise, "shuffle": k_shuffle},
        mutable=["batch_stats"])
    return {"x_gen": x_gen, "mask": aux["mask"],
            "foreground": aux["foreground"],
            "background": aux["background"]}

  return jax.jit(sample)


def save_samples(directory, step: int, models: Models, state: TrainState,
                 key, *, sampler: Callable | None = None,
                 writer: common.MetricWriter | None = None) -> pathlib.Path:
  """Writes upstream's four sheets plus one combined sheet; returns it.

  Upstream's files are `{step}_{x_gen,mask,foreground,background}.png`
  (10 rows of 3, 64 px, min-max normalised, padding 2). The combined
  `{step}_sheet.png` puts the four side by side on each class row (also
  added to TensorBoard through `writer`). `sampler` is `make_sampler(cgn)`,
  built once by the caller (by default a new one: one compilation).
  """
  sampler = sampler or make_sampler(models.cgn)
  out = jax.device_get(sampler(state.g_params, state.g_batch_stats, key))
  directory = pathlib.Path(directory)
  parts = []
  for name in SHEET_PARTS:  # jax returns dicts sorted by key: fix the order
    images = out[name]
    common.save_image_grid(directory / f"{step:07d}_{name}.png", images,
                           nrow=SAMPLES_PER_CLASS, normalize="minmax",
                           scale=2)
    lo, hi = images.min(), images.max()
    parts.append((images - lo) / max(hi - lo, 1e-8) * 2.0 - 1.0)
  n = models.cgn.n_classes
  rows = np.concatenate(
      [p.reshape((n, SAMPLES_PER_CLASS) + p.shape[1:]) for p in parts], 1)
  sheet = directory / f"{step:07d}_sheet.png"
  common.save_image_grid(sheet, rows.reshape((-1,) + rows.shape[2:]),
                         nrow=rows.shape[1], scale=2)
  if writer is not None and distributed.is_main_process():  # wrote it
    from PIL import Image  # pylint: disable=g-import-not-at-top
    writer.image("samples", step, np.asarray(Image.open(sheet)))
  return sheet


# ---------------------------------------------------------------- metrics --


class MetricBuffer:
  """Holds per-call device metrics until needed, to avoid host syncs.

  `check` fetches them and raises on NaN/Inf naming the first bad step;
  `pop` returns the window mean and the last step's values.
  """

  def __init__(self):
    self._pending = []  # (first step of the call, {name: [k]})
    self._rows = []

  def add(self, first_step: int, metrics) -> None:
    self._pending.append((first_step, metrics))

  def check(self, checkpoint_dir=None) -> None:
    pending, self._pending = jax.device_get(self._pending), []
    for first, metrics in pending:
      for i in range(len(next(iter(metrics.values())))):
        row = {k: float(v[i]) for k, v in metrics.items()}
        common.check_finite(first + i + 1, row, checkpoint_dir)
        self._rows.append(row)

  def pop(self, checkpoint_dir=None):
    """Returns (window mean, last step's metrics), or (None, None)."""
    self.check(checkpoint_dir)
    rows, self._rows = self._rows, []
    if not rows:
      return None, None
    mean = {k: float(np.mean([r[k] for r in rows])) for k in rows[-1]}
    return mean, rows[-1]


def _crossed(step: int, k: int, every: int) -> bool:
  """Whether (step - k, step] contains a multiple of `every`."""
  return every > 0 and step // every != (step - k) // every


def stack_batches(iterator, k: int):
  """k host batches stacked on a new leading axis."""
  items = [next(iterator) for _ in range(k)]
  return jax.tree.map(lambda *xs: np.stack(xs), *items)


# ----------------------------------------------------------------- driver --


def compiled_steps(models: Models, lc: LossConfig, render: Callable,
                   mesh) -> Callable:
  """The jitted multi-step function of one static configuration (new)."""
  return jit_steps(functools.partial(train_step, models=models, lc=lc,
                                     render=render), mesh)


# Config fields that do not change the jitted programs, nor what a
# checkpoint means: loop length, logging, checkpoint cadence, overwrite.
RESUMABLE_FIELDS = ("num_epochs", "num_train_steps", "steps_per_call",
                    "log_every_steps", "sample_every_steps",
                    "ckpt_every_steps", "keep_checkpoints", "progress_bar",
                    "overwrite")


@dataclasses.dataclass(frozen=True)
class Programs:
  """Everything jitted for one configuration, built once (`build_programs`).

  A run builds its own unless given one; tests and benchmarks that run the
  same configuration several times in a process pass one `Programs` to all
  of them, so the step is traced and compiled once. `key` records the
  config it was built for; `train_and_evaluate` refuses another.
  """
  key: str
  models: Models
  lc: LossConfig
  mesh: Any
  render: Callable
  tx: tuple[optax.GradientTransformation, optax.GradientTransformation]
  init: Callable
  steps: Callable
  sampler: Callable


def programs_key(config, with_vgg: bool) -> str:
  """The config fields the jitted programs depend on, as a JSON string."""
  record = common.run_record(
      config, RESUMABLE_FIELDS + ("seed", "init_from", "perceptual"),
      with_vgg=bool(with_vgg))
  return json.dumps(record, sort_keys=True)


def build_programs(config, *, with_vgg: bool, mesh=None) -> Programs:
  """Builds (does not compile yet) the jitted functions of `config`."""
  models = create_models(config, with_vgg=with_vgg)
  lc = LossConfig.from_config(config, with_style=models.vgg is not None)
  mesh = mesh if mesh is not None else common.make_mesh()
  render = renderer(config.dataset)
  return Programs(
      key=programs_key(config, with_vgg), models=models, lc=lc, mesh=mesh,
      render=render, tx=(make_optimizer(config), make_optimizer(config)),
      init=make_initializer(models.cgn, models.disc, config.model.img_sz),
      steps=compiled_steps(models, lc, render, mesh),
      sampler=make_sampler(models.cgn))


def total_steps(config, steps_per_epoch: int) -> int:
  if config.num_train_steps > 0:
    return int(config.num_train_steps)
  return int(config.num_epochs) * int(steps_per_epoch)


def _initial_state(config, programs, ckpt, iterator):
  """Resume order (STYLE habit 17): workdir checkpoint, init_from, scratch."""
  mesh = programs.mesh
  state = create_train_state(config, programs.models,
                             jax.random.PRNGKey(config.seed),
                             programs=programs)
  state = common.replicate(state, mesh)
  restored = ckpt.restore(state, iterator)
  if restored is not None:
    state, meta = restored
    logging.info("resuming from checkpoint step %d", int(meta["step"]))
    return state, "checkpoint"
  if config.init_from:
    variables = cgn_weights.load_cgn(os.path.expanduser(config.init_from))
    state = state.replace(g_params=variables["params"],
                          g_batch_stats=variables["batch_stats"],
                          g_opt_state=state.g_tx.init(variables["params"]))
    logging.info("generator initialised from %s", config.init_from)
    return common.replicate(state, mesh), "init_from"
  logging.info("training from scratch")
  return state, "scratch"


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       programs: Programs | None = None) -> TrainState:
  """Trains the MNIST CGN of `config`, resuming from `workdir` if possible.

  Writes WORKDIR/metrics.jsonl and WORKDIR/tensorboard/ (every
  `log_every_steps`: mean losses, steps_per_second; the sample sheets),
  WORKDIR/provenance.json (the config a checkpoint belongs to: resuming
  with another is refused unless `overwrite`), WORKDIR/samples/*.png
  (every `sample_every_steps` and at the end), WORKDIR/checkpoints/ (every `ckpt_every_steps`, at the end and
  on SIGTERM) and, when the run completes, WORKDIR/results.json.

  Args:
    config: a configs/cgn_*_mnist.py config.
    workdir: output and checkpoint directory.
    programs: `build_programs(config, ...)` to reuse (same configuration);
      by default built here.

  Returns:
    The final train state.

  Raises:
    FileNotFoundError: `perceptual.vgg16` names a missing directory.
    common.NonFiniteLossError: a loss became NaN/Inf (the step is named; the
      last good checkpoint is kept).
  """
  # ---------------------------------------------------------------- setup
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  common.check_global_batch(config.batch_size)
  vgg_variables = load_vgg_variables(config.perceptual.vgg16)  # fails early
  with_vgg = vgg_variables is not None
  if programs is None:
    programs = build_programs(config, with_vgg=with_vgg)
  else:
    common.check_programs_key(programs.key, programs_key(config, with_vgg),
                              "build_programs(config)")
  models, mesh = programs.models, programs.mesh
  if vgg_variables is not None and models.vgg is not None:
    vgg_variables = common.replicate(vgg_variables, mesh)
  else:
    vgg_variables = None
  common.write_json(workdir / "config.json", config.to_dict())

  # ----------------------------------------------------------------- data
  iterator, _, steps_per_epoch = make_input(config, render=programs.render)
  num_steps = total_steps(config, steps_per_epoch)
  k_max = max(1, int(config.steps_per_call))

  # ------------------------------------------------------ state / restore
  common.guard_workdir(workdir, common.run_record(config, RESUMABLE_FIELDS),
                       overwrite=config.get("overwrite", False))
  ckpt = common.Checkpointer(workdir, max_to_keep=config.keep_checkpoints)
  state, origin = _initial_state(config, programs, ckpt, iterator)
  step = int(state.step)
  steps_fn = programs.steps
  sample_key = jax.random.fold_in(jax.random.PRNGKey(config.seed), 10**6)
  writer = common.MetricWriter(workdir)
  buffer = MetricBuffer()
  logging.info("%s: %d of %d steps to go (%s), batch %d on %d devices",
               config.dataset, num_steps - step, num_steps, origin,
               config.batch_size, jax.device_count())

  def save(at):
    ckpt.save(at, state, iterator, meta={"dataset": config.dataset})

  # ----------------------------------------------------------------- loop
  from tqdm import tqdm  # pylint: disable=g-import-not-at-top
  bar = tqdm(total=num_steps, initial=step, unit="step", dynamic_ncols=True,
             disable=not config.progress_bar
             or not distributed.is_main_process())
  start, t_window, s_window = time.time(), time.time(), step
  first_call, last = True, None
  try:
    with common.StopSignal() as stop:
      while step < num_steps:
        k = min(k_max, num_steps - step)
        batches = shard_stacked(stack_batches(iterator, k), mesh)
        state, metrics = steps_fn(state, batches, vgg_variables)
        buffer.add(step, metrics)
        step += k
        bar.update(k)
        if first_call:
          jax.block_until_ready(state)
          compile_s, first_call = time.time() - t_window, False
          writer.write(step, {"compile_s": compile_s})
          t_window, s_window = time.time(), step
        done = step == num_steps
        if _crossed(step, k, config.log_every_steps) or done or stop.requested:
          mean, last = buffer.pop(ckpt.directory)
          if mean is not None:
            now = time.time()
            if step > s_window:  # wall clock, compilation excluded
              mean["steps_per_second"] = (step - s_window) / (now - t_window)
            writer.write(step, mean)
            bar.set_postfix({k_: f"{v:.3g}" for k_, v in mean.items()
                             if k_ in ("d_real", "d_fake", "g_adv",
                                       "g_binary", "g_style")})
            t_window, s_window = now, step
        if _crossed(step, k, config.sample_every_steps) or done:
          save_samples(workdir / "samples", step, models, state, sample_key,
                       sampler=programs.sampler, writer=writer)
        if (_crossed(step, k, config.ckpt_every_steps) or done
            or stop.requested):
          buffer.check(ckpt.directory)  # never save a non-finite state
          save(step)
        if stop.requested:
          logging.warning("stopped by signal at step %d (checkpoint saved)",
                          step)
          return state
  finally:
    bar.close()
    ckpt.close()
    writer.close()

  # --------------------------------------------------------------- finish
  common.write_json(workdir / "results.json", {
      "dataset": config.dataset, "step": step, "num_steps": num_steps,
      "final_losses": last, "wall_s": time.time() - start,
      "started_from": origin})
  return state
