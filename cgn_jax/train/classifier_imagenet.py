"""Trains the ImageNet invariant classifier ensemble (SPEC §6.2).

  python train.py --config=configs/classifier_imagenet.py:mini \
      --workdir=DIR --config.pretrained=RESNET50_DIR \
      --config.data.root=IMAGENET_DIR --config.data.counterfactuals=CF_DIR

Upstream `imagenet/train_classifier.py` (PyTorch ImageNet-example style):
every step takes b real images and int(cf_ratio·b) counterfactual ones; the
loss is the cross-entropy of the *averaged* logits on the real batch plus,
on the counterfactual batch, the sum of each head's cross-entropy on its own
label (shape, texture, background); one SGD step (momentum 0.9, weight decay
1e-4 added to the gradient as torch does, on every parameter) with the
learning rate x0.1 at epochs 15 and 30. Every BatchNorm stays in eval mode
(running statistics used, never updated; scale and bias trained).

One forward pass: with BatchNorm frozen every example is independent, so the
real and counterfactual batches go through the network concatenated, which
is the same function as upstream's two forwards (and faster); the gradient of
the summed loss is the sum of upstream's two backward passes.

Deviations, documented: the last partial real batch of an epoch is dropped
(static shapes; upstream zips a partial last real batch with a full
counterfactual one); `cf_ratio=0` trains on real images only ([FA]'s
baseline; upstream needs counterfactuals); the best checkpoint is chosen by
real top-1 (upstream reads a key that does not exist, SPEC §10 item 12).

Data: `Sources` of examples (real train/val, counterfactual train/val),
batched here by `TrainBatches`, random access by global step, so that the
grain iterator checkpoints and resumes bitwise. Each epoch reshuffles the real
set and resamples the counterfactual pool (replicated when smaller than
cf_batch x steps_per_epoch, sampled without replacement), as upstream.

Several processes (`cgn_jax/distributed.py`): `batch_size` is the global
batch; each process reads and decodes only its rows of every step's real and
counterfactual batch (`distributed.process_rows`) and of every evaluation
batch, so every example is read once per epoch and counted once; the
parameters are replicated, the gradients all-reduced. Each process
checkpoints its own data-iterator position (resume with the same number of
processes); only process 0 writes config.json, metrics, results.json, best/
and the progress bar.

The jitted functions of a run (initialiser, train step, evaluation) are
built once, by `build_programs`, into a `Programs` object that a caller may
pass to several runs of the same configuration (nothing is cached behind its
back).

Outputs in WORKDIR: config.json, metrics.jsonl (every log_every_steps and per
epoch), results.json (per epoch: train losses and accuracies, validation
top-1/top-5), checkpoints/ (state + data iterator every epoch and on
SIGTERM; a rerun resumes), best/ (the variables with the best real top-1, in
the converters' format: `converters.resnet50.load_ensemble`).
"""

import dataclasses
import functools
import json
import math
import pathlib
import time
from typing import Any, Callable, Mapping, Protocol

from absl import logging
import flax
import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from cgn_jax import distributed
from cgn_jax import provenance
from cgn_jax import weights
from cgn_jax.models import ensemble as ensemble_lib
from cgn_jax.models import resnet_weights
from cgn_jax.train import common

HEADS = ensemble_lib.HEADS
# Config fields that may change when a run is resumed.
RESUMABLE_FIELDS = ("epochs", "log_every_steps", "progress_bar", "overwrite",
                    "read_threads", "prefetch", "worker_count",
                    "eval_batch_size", "keep_checkpoints")
# Running sums kept in the train state over an epoch.
_SUMS = ("loss_real", "loss_cf", "real_top1", "real_top5",
         *(f"{h}_top1" for h in HEADS), "n_real", "n_cf", "steps")


@flax.struct.dataclass
class TrainState:
  """Everything a step changes, plus this epoch's running train metrics."""
  step: jax.Array
  params: Any
  batch_stats: Any    # frozen: read by every step, never written
  opt_state: Any
  sums: dict          # name (_SUMS) -> float32 scalar, reset every epoch


# ------------------------------------------------------------- model + opt --


def create_model(config) -> ensemble_lib.InvariantEnsemble:
  m = config.model
  return ensemble_lib.InvariantEnsemble(
      num_classes=config.data.num_classes, stage_sizes=tuple(m.stage_sizes),
      width=m.width, frozen_bn=True, dtype=jnp.dtype(m.dtype))


def lr_schedule(config, steps_per_epoch: int) -> optax.Schedule:
  """lr · 0.1^⌊epoch / 15⌋ (upstream `adjust_learning_rate`)."""
  return optax.exponential_decay(
      config.learning_rate,
      transition_steps=steps_per_epoch * config.lr_decay_every_epochs,
      decay_rate=config.lr_decay, staircase=True)


def make_optimizer(config, steps_per_epoch: int):
  """torch's SGD(lr, momentum, weight_decay) as an optax chain.

  torch: d = g + wd·θ; buf = μ·buf + d (buf = d at the first step);
  θ -= lr·buf. optax's trace starts at zero, so its first step is also
  buf = d; the learning rate multiplies after the momentum, as in torch.
  """
  return optax.chain(
      optax.add_decayed_weights(config.weight_decay),
      optax.sgd(lr_schedule(config, steps_per_epoch),
                momentum=config.momentum))


def zero_sums() -> dict:
  return {k: jnp.zeros((), jnp.float32) for k in _SUMS}


def create_train_state(variables, tx) -> TrainState:
  return TrainState(step=jnp.zeros((), jnp.int32),
                    params=variables["params"],
                    batch_stats=variables["batch_stats"],
                    opt_state=tx.init(variables["params"]), sums=zero_sums())


def initial_variables(config, model, rng: jax.Array, load_resnet50=None, *,
                      init: Callable | None = None):
  """The ensemble's variables, with a pretrained backbone if configured.

  Args:
    config: the trainer config; `pretrained` is a directory written by
      `python -m converters resnet50`, or 'none' (torchvision's random init).
    model: the ensemble.
    rng: initialises the heads (and the backbone when not pretrained).
    load_resnet50: `directory -> ResNet-50 variables` (default: the strict
      loader of converted directories; tests inject others).
    init: `make_initializer(model, image_size)` (a run's `Programs.init`);
      by default a new one (one compilation).

  Returns:
    {'params', 'batch_stats'}.
  """
  spec = str(config.pretrained)
  init = init or make_initializer(model, config.data.image_size)
  if spec.lower() == "none":
    logging.warning("pretrained='none': the backbone starts from random "
                    "weights (upstream runs use --pretrained)")
    return flax.core.unfreeze(init(rng))
  if not spec:
    raise ValueError(
        "set --config.pretrained=DIR (a torchvision ResNet-50 converted by "
        "`python -m converters resnet50 --input resnet50-0676ba61.pth "
        "--output DIR`) or --config.pretrained=none to train from scratch")
  load_resnet50 = load_resnet50 or resnet_weights.load_resnet50
  pretrained = load_resnet50(spec)  # fails before the (slow) init
  variables = flax.core.unfreeze(init(rng))
  for c in ("params", "batch_stats"):
    backbone = {k: v for k, v in pretrained[c].items() if k != "fc"}
    want = jax.tree.map(np.shape, variables[c]["backbone"])
    if jax.tree.map(np.shape, backbone) != want:
      raise ValueError(
          f"the pretrained weights in {spec} do not fit the configured "
          "backbone; a torchvision ResNet-50 needs model.stage_sizes="
          "(3, 4, 6, 3) and model.width=64")
    variables[c]["backbone"] = backbone
  logging.info("backbone: pretrained ResNet-50 from %s", spec)
  return variables


def make_initializer(model, image_size: int) -> Callable:
  """Jitted rng -> the ensemble's random {'params', 'batch_stats'} (new)."""
  return jax.jit(functools.partial(ensemble_lib.init_variables, model,
                                   image_size=image_size))


def abstract_state(config, model, tx, mesh) -> TrainState:
  """The train state's shapes, dtypes and (replicated) shardings."""
  abstract = jax.eval_shape(lambda: create_train_state(
      ensemble_lib.init_variables(model, jax.random.PRNGKey(0),
                                  config.data.image_size), tx))
  rep = common.replicated(mesh)
  return jax.tree.map(
      lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=rep),
      abstract)


# ------------------------------------------------------------------ steps --


def cross_entropy(logits, labels):
  """Mean cross-entropy (torch `CrossEntropyLoss`), in float32."""
  return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(
      logits.astype(jnp.float32), labels))


def topk_correct(logits, labels, k: int):
  """Per example: is the label among the k largest logits ([B] bool)."""
  k = min(k, logits.shape[-1])
  _, idx = jax.lax.top_k(logits, k)
  return jnp.any(idx == labels[:, None], axis=-1)


def losses(params, batch_stats, batch, *, model):
  """(loss_real + loss_cf, aux): the upstream per-step objective.

  Args:
    params, batch_stats: the ensemble's variables.
    batch: {'real': {'image' [B, H, W, 3], 'label' [B]}, and optionally
      'cf': {'image' [Bc, H, W, 3], 'shape', 'texture', 'bg' [Bc]}}.
    model: the ensemble (frozen BatchNorm).

  Returns:
    (total loss, {'loss_real', 'loss_cf', 'out_real', 'out_cf'}).
  """
  real, cf = batch["real"], batch.get("cf")
  n = real["image"].shape[0]
  images = real["image"]
  if cf is not None:  # frozen BatchNorm: one forward for both batches
    images = jnp.concatenate([images, cf["image"].astype(images.dtype)])
  _, out = model.apply({"params": params, "batch_stats": batch_stats},
                       images, train=True)
  out_real = {k: v[:n] for k, v in out.items()}
  loss_real = cross_entropy(out_real["avg"], real["label"])
  loss_cf, out_cf = jnp.zeros((), jnp.float32), None
  if cf is not None:
    out_cf = {k: v[n:] for k, v in out.items()}
    loss_cf = sum(cross_entropy(out_cf[h], cf[h]) for h in HEADS)
  return loss_real + loss_cf, dict(loss_real=loss_real, loss_cf=loss_cf,
                                   out_real=out_real, out_cf=out_cf)


def train_step(state: TrainState, batch, *, model, tx):
  """One SGD step on a real (+ counterfactual) batch.

  Returns:
    (new state, {'loss_real', 'loss_cf'} of this step).
  """
  if not model.frozen_bn:
    raise ValueError("the ensemble trains with frozen BatchNorm (SPEC §6.2)")
  grads, aux = jax.grad(
      functools.partial(losses, model=model), has_aux=True)(
          state.params, state.batch_stats, batch)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  real = batch["real"]
  f32 = lambda x: jnp.sum(x.astype(jnp.float32))
  add = {"loss_real": aux["loss_real"], "loss_cf": aux["loss_cf"],
         "real_top1": f32(topk_correct(aux["out_real"]["avg"],
                                       real["label"], 1)),
         "real_top5": f32(topk_correct(aux["out_real"]["avg"],
                                       real["label"], 5)),
         "n_real": jnp.float32(real["label"].shape[0]),
         "steps": jnp.float32(1)}
  cf = batch.get("cf")
  for h in HEADS:
    add[f"{h}_top1"] = (f32(topk_correct(aux["out_cf"][h], cf[h], 1))
                        if cf is not None else jnp.float32(0))
  add["n_cf"] = jnp.float32(cf["shape"].shape[0] if cf is not None else 0)
  sums = {k: state.sums[k] + add[k] for k in _SUMS}
  new = state.replace(step=state.step + 1, params=params,
                      opt_state=opt_state, sums=sums)
  return new, {"loss_real": aux["loss_real"], "loss_cf": aux["loss_cf"]}


def make_train_step(model, tx) -> Callable:
  """`train_step` jitted with the state donated (new; `Programs` holds one)."""
  return jax.jit(functools.partial(train_step, model=model, tx=tx),
                 donate_argnums=(0,))


def epoch_train_metrics(sums: Mapping[str, Any]) -> dict:
  """Means over the epoch from the state's running sums."""
  s = {k: float(v) for k, v in sums.items()}
  out = {"train/loss_real": s["loss_real"] / max(s["steps"], 1),
         "train/acc1_real": 100 * s["real_top1"] / max(s["n_real"], 1),
         "train/acc5_real": 100 * s["real_top5"] / max(s["n_real"], 1)}
  if s["n_cf"]:
    out["train/loss_cf"] = s["loss_cf"] / max(s["steps"], 1)
    for h in HEADS:
      out[f"train/acc1_{h}"] = 100 * s[f"{h}_top1"] / s["n_cf"]
  return out


def eval_step(variables, batch, *, model, pairs):
  """Summed top-1 / top-5 hits of (output, label key) pairs; weight-0 pads.

  `pairs` is static: `make_eval_step` jits one program per pairs value.
  """
  _, out = model.apply(variables, batch["image"], train=False)
  w = batch["weight"]
  res = {}
  for output, label in pairs:
    for k in (1, 5):
      hit = topk_correct(out[output], batch[label], k)
      res[f"{output}/{k}"] = jnp.sum(hit.astype(jnp.float32) * w)
  return res


def make_eval_step(model) -> Callable:
  """Jitted (variables, batch, pairs=...) -> `eval_step`'s sums (new)."""
  return jax.jit(functools.partial(eval_step, model=model),
                 static_argnames=("pairs",))


def make_outputs(model) -> Callable:
  """Jitted (variables, images) -> the five logits (the suite's apply)."""
  def outputs(variables, images):
    _, out = model.apply(variables, images, train=False)
    return {k: out[k] for k in ensemble_lib.OUTPUTS}
  return jax.jit(outputs)


# --------------------------------------------------------------- programs --


@dataclasses.dataclass(frozen=True)
class Programs:
  """Everything jitted for one configuration, built once (`build_programs`).

  A run builds its own unless given one; tests and benchmarks that train
  the same configuration several times in a process pass one `Programs` to
  each run, so every program is traced and compiled once. `key` records the
  configuration (and steps per epoch: the learning-rate schedule's) it was
  built for; `train_and_evaluate` refuses another.
  """
  key: str
  model: ensemble_lib.InvariantEnsemble
  mesh: Any
  tx: optax.GradientTransformation
  init: Callable        # rng -> random {'params', 'batch_stats'}
  train_step: Callable  # (state, global batch) -> (state, metrics); donates
  eval_step: Callable   # (variables, global batch, pairs=...) -> hit sums
  outputs: Callable     # (variables, global images) -> the five logits


def programs_key(config, steps_per_epoch: int) -> str:
  """What the jitted programs bake in, as a JSON string.

  The model, the image size and classes, the optimizer and its schedule.
  Batch sizes and cf_ratio only change shapes (the same jitted functions
  trace them anew); data paths, seeds and logging change no program.
  """
  record = {"model": config.model.to_dict(),
            "image_size": config.data.image_size,
            "num_classes": config.data.num_classes,
            "steps_per_epoch": int(steps_per_epoch),
            **{k: config[k] for k in ("learning_rate", "momentum",
                                      "weight_decay", "lr_decay",
                                      "lr_decay_every_epochs")}}
  return json.dumps(provenance.normalise(record), sort_keys=True)


def build_programs(config, steps_per_epoch: int, *, mesh=None) -> Programs:
  """Builds (does not compile yet) the jitted functions of `config`.

  Args:
    config: a configs/classifier_imagenet.py config.
    steps_per_epoch: training steps per epoch (len(real train) // batch);
      the learning-rate schedule counts in it.
    mesh: the data mesh (default `common.make_mesh()`).
  """
  model = create_model(config)
  tx = make_optimizer(config, steps_per_epoch)
  return Programs(
      key=programs_key(config, steps_per_epoch), model=model,
      mesh=mesh if mesh is not None else common.make_mesh(), tx=tx,
      init=make_initializer(model, config.data.image_size),
      train_step=make_train_step(model, tx), eval_step=make_eval_step(model),
      outputs=make_outputs(model))


# ------------------------------------------------------------------- data --


class Source(Protocol):
  """Random-access examples. `rng` draws the training augmentation (random
  crop and flip); None means the deterministic evaluation transform."""

  def __len__(self) -> int:
    ...

  def get(self, index: int, rng: np.random.Generator | None) -> dict:
    ...


@dataclasses.dataclass
class Sources:
  real_train: Source
  real_val: Source | None = None
  cf_train: Source | None = None
  cf_val: Source | None = None


class SyntheticSource:
  """Seeded random images and labels: smoke runs, tests and benchmarks.

  Real examples: {'image' float32 [S, S, 3], 'label'}; counterfactual ones
  (`counterfactual=True`): {'image', 'shape', 'texture', 'bg'}. Each image
  is a function of (seed, index), so every read returns the same example;
  with an rng (training) it is randomly flipped, like the real pipeline.
  """

  def __init__(self, n: int, image_size: int, num_classes: int, seed: int,
               counterfactual: bool = False):
    self.n, self.size, self.k = int(n), int(image_size), int(num_classes)
    self.seed, self.counterfactual = int(seed), counterfactual

  def __len__(self):
    return self.n

  def get(self, index: int, rng=None) -> dict:
    r = np.random.default_rng([self.seed, int(index)])
    image = r.standard_normal((self.size, self.size, 3), np.float32)
    if rng is not None and rng.random() < 0.5:
      image = image[:, ::-1]
    i = int(index)
    if not self.counterfactual:
      return {"image": np.ascontiguousarray(image), "label": i % self.k}
    return {"image": np.ascontiguousarray(image), "shape": i % self.k,
            "texture": (7 * i + 1) % self.k, "bg": (13 * i + 2) % self.k}


def synthetic_sources(config) -> Sources:
  d = config.data
  mk = functools.partial(SyntheticSource, image_size=d.image_size,
                         num_classes=d.num_classes)
  return Sources(real_train=mk(d.synthetic.num_train, seed=config.seed),
                 real_val=mk(d.synthetic.num_val, seed=config.seed + 1),
                 cf_train=mk(d.synthetic.num_cf, seed=config.seed + 2,
                             counterfactual=True),
                 cf_val=mk(d.synthetic.num_val, seed=config.seed + 3,
                           counterfactual=True))


def imagenet_sources(config) -> Sources:
  """ImageNet (ImageFolder root or 'tfds') + the counterfactual dataset.

  The transforms are torchvision's (cgn_jax/data/transforms.py):
  RandomResizedCrop 224 + flip for training, Resize 256 -> CenterCrop 224
  for validation, ImageNet mean/std.
  """
  from cgn_jax.data import imagenet  # pylint: disable=g-import-not-at-top
  d = config.data
  if not d.root:
    raise imagenet.DataError(
        "set --config.data.root=DIR (an ImageFolder ImageNet with train/ and "
        "val/, e.g. imagenetmini-1000) or --config.data.root=tfds. "
        + imagenet.IMAGENET_HELP)
  if config.cf_ratio > 0 and not d.counterfactuals:
    raise imagenet.DataError(
        f"cf_ratio={config.cf_ratio} needs --config.data.counterfactuals="
        "DIR (a counterfactual dataset written by generate.py); "
        "cf_ratio=0 trains the real-only baseline")
  src = imagenet.example_sources(d.root, d.counterfactuals or None,
                                 d.image_size)
  return Sources(**src)


# data.source -> function(config) -> Sources.
SOURCES: dict[str, Callable[[Any], Sources]] = {
    "synthetic": synthetic_sources,
    "imagefolder": imagenet_sources,
    "tfds": imagenet_sources,
}


def make_sources(config) -> Sources:
  name = config.data.source
  if name not in SOURCES:
    raise ValueError(f"unknown data.source {name!r}; known: "
                     f"{sorted(SOURCES)}")
  return SOURCES[name](config)


def _stack(examples: list[dict]) -> dict:
  return {k: np.stack([np.asarray(e[k]) for e in examples])
          for k in examples[0]}


class TrainBatches:
  """Mixed real + counterfactual training batches, by global step.

  Step s of epoch e = s // steps_per_epoch takes the next `batch` real
  examples of epoch e's permutation (the remainder is dropped) and the next
  `cf_batch` of epoch e's counterfactual sample: cf_batch·steps_per_epoch
  draws without replacement from the pool, replicated ⌈n / pool⌉ times when
  smaller (upstream `ImagenetCounterfactual.resample`). Every draw (the
  permutations and each example's augmentation) is seeded by (seed, epoch
  or step, position), so batch s is the same whenever it is read: a
  resumed run sees exactly the batches of an uninterrupted one.

  With several processes each reads only its rows of every global batch
  (`distributed.process_rows`: process p of n the p-th n-th of the real and
  of the counterfactual batch); an example's augmentation is seeded by its
  position in the global batch, so the processes' slices, in process order,
  are the one-process batch.
  """

  def __init__(self, real: Source, cf: Source | None, batch: int,
               cf_batch: int, epochs: int, seed: int,
               process_index: int = 0, process_count: int = 1):
    self.real, self.cf = real, cf if cf_batch > 0 else None
    self.batch, self.cf_batch = batch, cf_batch
    self.steps_per_epoch = len(real) // batch
    if self.steps_per_epoch == 0:
      raise ValueError(f"{len(real)} real training images are fewer than "
                       f"one batch of {batch}")
    if cf_batch > 0 and (cf is None or len(cf) == 0):
      raise ValueError("cf_ratio > 0 needs counterfactual training images "
                       "(data.counterfactuals); set cf_ratio=0 for the "
                       "real-only baseline")
    self.epochs, self.seed = epochs, seed
    self.pi, self.pc = process_index, process_count

  def __len__(self):
    return self.steps_per_epoch * self.epochs

  @functools.lru_cache(maxsize=2)
  def _real_order(self, epoch: int) -> np.ndarray:
    return np.random.default_rng([self.seed, 0, epoch]).permutation(
        len(self.real))

  @functools.lru_cache(maxsize=2)
  def _cf_order(self, epoch: int) -> np.ndarray:
    n = self.cf_batch * self.steps_per_epoch
    pool = len(self.cf)
    mult = max(1, math.ceil(n / pool))
    draw = np.random.default_rng([self.seed, 1, epoch]).choice(
        pool * mult, n, replace=False)
    return draw % pool

  def _examples(self, source, indices, step: int, stream: int):
    """This process's rows of a global batch of `indices`, augmented.

    Row j of the global batch draws from (seed, stream, step, j) whichever
    process reads it.
    """
    mine = distributed.process_rows(len(indices), self.pi, self.pc)
    return _stack([
        source.get(int(indices[j]),
                   np.random.default_rng([self.seed, stream, step, j]))
        for j in range(mine.start, mine.stop)])

  def __getitem__(self, step: int) -> dict:
    epoch, k = divmod(int(step), self.steps_per_epoch)
    idx = self._real_order(epoch)[k * self.batch:(k + 1) * self.batch]
    out = {"real": self._examples(self.real, idx, step, 2)}
    if self.cf is not None:
      cb = self.cf_batch
      idx = self._cf_order(epoch)[k * cb:(k + 1) * cb]
      out["cf"] = self._examples(self.cf, idx, step, 3)
    return out


def make_train_iterator(batches: TrainBatches, threads: int, prefetch: int,
                        worker_count: int = 0):
  """A checkpointable grain iterator over every step's batch.

  `worker_count` > 0 decodes in that many processes (grain mp_prefetch);
  the batches are the same for any value.
  """
  ds = grain.MapDataset.source(batches)
  if worker_count > 0:
    from cgn_jax.data import imagenet  # pylint: disable=g-import-not-at-top
    return imagenet.batches(ds, worker_count=worker_count, threads=threads,
                            prefetch=prefetch)
  return iter(ds.to_iter_dataset(grain.ReadOptions(
      num_threads=threads, prefetch_buffer_size=prefetch)))


# ------------------------------------------------------------- evaluation --


def evaluate(programs: Programs, variables, source: Source, pairs,
             batch_size: int, limit: int = 0) -> dict:
  """Exact top-1 / top-5 (%) over every example of `source` (in order).

  The examples go in global batches of `batch_size`; each process reads only
  its rows of each (`distributed.process_rows`), so with several processes
  every example is still read once. The last batch is filled with zero
  weight-0 rows, so the denominator is the number of examples, not batches
  x batch size.

  Args:
    programs: the run's `Programs` (its eval_step and mesh).
    variables: the ensemble's {'params', 'batch_stats'}.
    source: evaluation examples (deterministic transform).
    pairs: ((output name, label key), ...), e.g. (('avg', 'label'),).
    batch_size: the global batch, a multiple of the device count.
    limit: evaluate the first `limit` examples only (0: all).

  Returns:
    {'{output}/1': top-1 %, '{output}/5': top-5 %, 'num': N}.
  """
  n = len(source) if not limit else min(limit, len(source))
  mine = distributed.process_rows(batch_size)
  pairs = tuple(pairs)
  template, sums = None, {}
  for start in range(0, n, batch_size):
    rows = range(start + mine.start, start + mine.stop)
    ex = [source.get(i, None) for i in rows if i < n]
    template = template or (ex[0] if ex else source.get(0, None))
    pad = len(rows) - len(ex)
    zero = {k: np.zeros_like(np.asarray(v)) for k, v in template.items()}
    batch = _stack(ex + [zero] * pad)
    batch["weight"] = np.array([1.0] * len(ex) + [0.0] * pad, np.float32)
    res = programs.eval_step(variables,
                             common.shard_batch(batch, programs.mesh),
                             pairs=pairs)
    for k, v in res.items():
      sums[k] = sums.get(k, 0.0) + float(v)
  out = {k: 100.0 * v / max(n, 1) for k, v in sums.items()}
  out["num"] = n
  return out


def validate(programs: Programs, variables, sources: Sources,
             config) -> dict:
  """The per-epoch validation: the paper's suite, or top-k on `sources`.

  With `eval.suite` (real data) it runs cgn_jax.evaluation.suite: ImageNet
  val top-1/5 of the averaged logits, counterfactual val per head, shape
  bias per head (eval.cue_conflict) and the backgrounds challenge (eval.in9),
  each skipped with a message when its data is absent. Otherwise (synthetic
  data, smoke runs) it scores `sources.real_val` / `sources.cf_val` the same
  way (upstream `validate_imagenet` / `validate_counterfactual`). Every
  process returns the same numbers (each example counted once).

  Returns:
    Flat {name: value}; 'acc1/1_real' is the real top-1 (% ) that picks the
    best checkpoint, as upstream after the [FA] fix.
  """
  if config.eval.suite:
    return _run_suite(programs, variables, config)
  metrics = {}
  bs, limit = config.eval_batch_size, config.eval_limit
  if sources.real_val is not None and len(sources.real_val):
    r = evaluate(programs, variables, sources.real_val, (("avg", "label"),),
                 bs, limit)
    metrics["acc1/1_real"], metrics["acc5/1_real"] = r["avg/1"], r["avg/5"]
  if sources.cf_val is not None and len(sources.cf_val):
    r = evaluate(programs, variables, sources.cf_val,
                 tuple((h, h) for h in HEADS), bs, limit)
    for h in HEADS:
      metrics[f"acc1/{h}"], metrics[f"acc5/{h}"] = r[f"{h}/1"], r[f"{h}/5"]
  return metrics


def _flatten(tree, prefix="") -> dict:
  out = {}
  for k, v in tree.items():
    name = f"{prefix}{k}"
    if isinstance(v, Mapping):
      out.update(_flatten(v, name + "/"))
    elif isinstance(v, (int, float, np.number)) and not isinstance(v, bool):
      out[name] = float(v)
  return out


def _run_suite(programs: Programs, variables, config) -> dict:
  """The evaluation suite; with several processes each decodes its rows.

  The suite's batches hold this process's rows of each global batch (see
  `cgn_jax.data.imagenet.process_batches`); `apply_fn` puts them into the
  global batch, runs the ensemble on every device and returns the outputs
  of the whole global batch on every process.
  """
  from cgn_jax.evaluation import suite  # pylint: disable=g-import-not-at-top
  rows = common.batch_sharding(programs.mesh)

  def apply_fn(images):
    out = programs.outputs(variables, distributed.global_batch(images, rows))
    return distributed.to_host(out)

  data = {"imagenet_val": config.data.root,
          "counterfactual_val": config.data.counterfactuals,
          "shape_bias": config.eval.cue_conflict, "in9": config.eval.in9}
  res = suite.run_suite(apply_fn, data, batch_size=config.eval_batch_size,
                        worker_count=config.worker_count, log=logging.info)
  metrics = _flatten({k: v for k, v in res.items()
                      if k not in ("skipped", "seconds")})
  val = res.get("imagenet_val")
  if val:
    metrics["acc1/1_real"], metrics["acc5/1_real"] = val["top1"], val["top5"]
  return metrics


# ----------------------------------------------------------------- driver --


def train_and_evaluate(config: ml_collections.ConfigDict, workdir, *,
                       programs: Programs | None = None) -> dict:
  """Trains, validates after every epoch, writes WORKDIR/results.json.

  Args:
    config: a configs/classifier_imagenet.py config.
    workdir: output and checkpoint directory (a rerun resumes).
    programs: `build_programs(config, steps_per_epoch)` to reuse (same
      configuration); by default built here.

  Returns:
    The results dict (also in results.json).

  Raises:
    FileNotFoundError: the pretrained backbone or the data are missing
      (the message says how to get them).
    common.NonFiniteLossError: a loss became NaN/Inf.
  """
  # ---------------------------------------------------------------- setup
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  common.check_global_batch(config.batch_size)
  common.check_global_batch(config.eval_batch_size)
  cf_batch = int(config.cf_ratio * config.batch_size)
  if cf_batch:
    common.check_global_batch(cf_batch)
  common.write_json(workdir / "config.json", config.to_dict())

  # ----------------------------------------------------------------- data
  sources = make_sources(config)
  batches = TrainBatches(sources.real_train, sources.cf_train,
                         config.batch_size, cf_batch, config.epochs,
                         config.seed, jax.process_index(),
                         jax.process_count())
  spe = batches.steps_per_epoch
  num_steps = len(batches)

  # ------------------------------------------------------ model / restore
  if programs is None:
    programs = build_programs(config, spe)
  else:
    common.check_programs_key(programs.key, programs_key(config, spe),
                              "build_programs(config, steps_per_epoch)")
  model, tx, mesh = programs.model, programs.tx, programs.mesh
  # Only a checkpoint made with this config is resumed (provenance.json).
  common.guard_workdir(workdir, common.run_record(config, RESUMABLE_FIELDS),
                       overwrite=config.overwrite)
  ckpt = common.Checkpointer(workdir, max_to_keep=config.keep_checkpoints)
  resume = ckpt.latest_step() is not None
  if not resume:  # a missing backbone fails before any worker starts
    variables = initial_variables(config, model,
                                  jax.random.PRNGKey(config.seed),
                                  init=programs.init)
  it = make_train_iterator(batches, config.read_threads, config.prefetch,
                           config.worker_count)
  results = {"epochs": [], "best_acc1_real": None}
  if resume:  # no need for the backbone
    state, meta = ckpt.restore(abstract_state(config, model, tx, mesh), it)
    results = {k: meta.get(k) for k in ("epochs", "best_acc1_real",
                                        "before_training")}
    results["epochs"] = list(results["epochs"] or [])
    origin = f"resumed at step {int(state.step)}"
  else:
    state = common.replicate(create_train_state(variables, tx), mesh)
    origin = ("pretrained backbone"
              if str(config.pretrained).lower() != "none" else "scratch")
  step = int(state.step)
  step_fn = programs.train_step
  writer = common.MetricWriter(workdir)
  schedule = lr_schedule(config, spe)
  logging.info("%d steps of %d real + %d counterfactual images (%d/epoch); "
               "%d to go (%s)", num_steps, config.batch_size, cf_batch, spe,
               num_steps - step, origin)
  if not resume and config.eval.before_training:  # upstream's epoch 0
    record = validate(programs, {"params": state.params,
                                 "batch_stats": state.batch_stats}, sources,
                      config)
    results["before_training"] = record
    writer.write(0, record)

  def save(at):
    ckpt.save(at, state, it, {k: results.get(k) for k in (
        "epochs", "best_acc1_real", "before_training")})

  # ----------------------------------------------------------------- loop
  from tqdm import tqdm  # pylint: disable=g-import-not-at-top
  bar = tqdm(total=num_steps, initial=step, unit="step", dynamic_ncols=True,
             disable=not (config.progress_bar
                          and distributed.is_main_process()),
             desc="classifier")
  t0, s0, first = time.time(), step, True
  try:
    with common.StopSignal() as stop:
      while step < num_steps:
        state, m = step_fn(state, common.shard_batch(next(it), mesh))
        step += 1
        bar.update(1)
        if first:  # compilation, timed on its own
          jax.block_until_ready(state)
          writer.write(step, {"compile_s": time.time() - t0})
          t0, s0, first = time.time(), step, False
        if step % config.log_every_steps == 0 or step == 1:
          m = {k: float(v) for k, v in m.items()}
          m["lr"] = float(schedule(step - 1))
          if step > s0:
            m["steps_per_second"] = (step - s0) / (time.time() - t0)
          common.check_finite(step, m, ckpt.directory)
          writer.write(step, m)
          bar.set_postfix({k: f"{v:.3g}" for k, v in m.items()
                           if k.startswith("loss")})
        if step % spe == 0:
          state = _end_epoch(state, step // spe, step, results, programs,
                             sources, config, writer, workdir,
                             float(schedule(step - 1)))
          save(step)
          common.write_json(workdir / "results.json", results)
        elif stop.requested:
          save(step)
          logging.warning("stopped by signal at step %d (checkpoint saved); "
                          "rerun to resume", step)
          break
  finally:
    bar.close()
    ckpt.close()
    writer.close()
    close = getattr(it, "close", None)
    if close is not None:  # stops grain's worker processes now
      close()
  common.write_json(workdir / "results.json", results)
  return results


def _end_epoch(state, epoch, step, results, programs, sources, config,
               writer, workdir, lr) -> TrainState:
  """Logs the epoch, validates, keeps the best variables; resets the sums."""
  record = {"epoch": epoch, "step": step, "lr": lr}
  record.update(epoch_train_metrics(state.sums))
  common.check_finite(step, {k: v for k, v in record.items()
                             if k.startswith("train/loss")})
  variables = {"params": state.params, "batch_stats": state.batch_stats}
  record.update(validate(programs, variables, sources, config))
  best = results["best_acc1_real"]
  acc = record.get("acc1/1_real")
  if acc is not None and (best is None or acc > best):
    results["best_acc1_real"] = acc
    record["is_best"] = True
    _save_best(workdir / "best", variables, epoch, acc)
  results["epochs"].append(record)
  writer.write(step, {k: v for k, v in record.items()
                      if k not in ("step", "is_best")})
  logging.info("epoch %d: %s", epoch, ", ".join(
      f"{k} {v:.4g}" for k, v in record.items() if k not in ("epoch",
                                                              "step")))
  return state.replace(sums=common.replicate(zero_sums(), programs.mesh))


def _save_best(directory, variables, epoch, acc) -> None:
  # The converters' format: `python -m cgn_jax.experiments.imagenet_eval
  # --weights WORKDIR` and `resnet_weights.load_ensemble` read it. Every
  # process fetches the variables (a collective if any is sharded); process
  # 0 writes them.
  host = distributed.to_host(variables)
  weights.save_variables(
      directory, host,
      {"model": resnet_weights.ENSEMBLE, "epoch": epoch, "acc1_real": acc})
