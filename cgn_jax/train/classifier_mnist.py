"""Trains the MNIST invariant classifier (SPEC §3.2) on counterfactual data.

  python train.py --config=configs/classifier_mnist.py:wildlife \
      --workdir=DIR --config.counterfactuals=CF_DIR

Upstream `mnists/train_classifier.py`: NLL on the CNN's log-softmax,
Adadelta (lr 1.0, rho 0.9, eps 1e-6) with the learning rate multiplied by 0.7
after every epoch, batch 64 (shuffled, last partial batch dropped), test batch
640. Train accuracy is accumulated over the epoch from the training forward
passes (train-mode BatchNorm, before each update), as upstream; test accuracy
and NLL are computed on the variant's fixed real test set after every epoch.

Data: the shard datasets written by generate.py (`cgn_jax.data.shards`),
streamed through grain from memory-mapped `.npy` shards: a global shuffle per
epoch (seeded, different every epoch), batches gathered per shard, images
kept uint8 until the jitted step dequantises them on the device.

Outputs in WORKDIR: results.json (per epoch: train/test accuracy and loss,
learning rate), metrics.jsonl and tensorboard/ (the same scalars),
checkpoints/ (state + data iterator after each epoch and on SIGTERM; a rerun
resumes), provenance.json (the config and the provenance of the datasets it
trained on: a rerun whose config or data differ is refused, naming the
fields, unless --config.overwrite=True, which starts over).
"""

import functools
import pathlib
import time
from typing import Any, Callable

from absl import logging
import flax
import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from cgn_jax import distributed
from cgn_jax.counterfactuals import mnist as cf_mnist
from cgn_jax.data import shards
from cgn_jax.models import classifier
from cgn_jax.train import common

TRAIN_ON = ("counterfactual", "counterfactual+real", "real")


@flax.struct.dataclass
class TrainState:
  """Everything a step changes, including this epoch's train metrics."""
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  correct: jax.Array    # train predictions right so far this epoch
  seen: jax.Array       # train examples so far this epoch
  loss_sum: jax.Array   # summed train NLL this epoch


# ------------------------------------------------------------- model + opt --


def create_model(config: ml_collections.ConfigDict) -> classifier.CNN:
  return classifier.CNN(global_pool=config.model.global_pool,
                        dtype=jnp.dtype(config.model.dtype))


def lr_schedule(config, steps_per_epoch: int) -> optax.Schedule:
  """lr · decay^epoch: upstream's StepLR(step_size=1, gamma) per epoch."""
  return optax.exponential_decay(
      config.learning_rate, transition_steps=steps_per_epoch,
      decay_rate=config.lr_decay, staircase=True)


def make_optimizer(config, steps_per_epoch: int):
  return optax.adadelta(lr_schedule(config, steps_per_epoch),
                        rho=config.rho, eps=config.eps)


def create_train_state(model, tx, rng: jax.Array) -> TrainState:
  variables = classifier.init_variables(model, rng)
  # Separate zeros: the step donates the state, and one buffer cannot be
  # donated twice.
  zero = lambda dtype=jnp.int32: jnp.zeros((), dtype)
  return TrainState(step=zero(), params=variables["params"],
                    batch_stats=variables["batch_stats"],
                    opt_state=tx.init(variables["params"]), correct=zero(),
                    seen=zero(), loss_sum=zero(jnp.float32))


def reset_epoch_metrics(state: TrainState) -> TrainState:
  return state.replace(correct=jnp.zeros((), jnp.int32),
                       seen=jnp.zeros((), jnp.int32),
                       loss_sum=jnp.zeros((), jnp.float32))


# ------------------------------------------------------------------ steps --


def train_step(state: TrainState, batch, *, model, tx) -> TrainState:
  """One Adadelta step on a batch {'image' uint8, 'label'}."""
  x = shards.dequantize(batch["image"])
  y = batch["label"]

  def loss_fn(params):
    (log_probs, _), updates = model.apply(
        {"params": params, "batch_stats": state.batch_stats}, x, train=True,
        mutable=["batch_stats"])
    nll = -jnp.take_along_axis(log_probs, y[:, None], axis=1)[:, 0]
    return jnp.mean(nll), (log_probs, updates["batch_stats"], jnp.sum(nll))

  grads, (log_probs, batch_stats, nll_sum) = jax.grad(
      loss_fn, has_aux=True)(state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  correct = jnp.sum(jnp.argmax(log_probs, -1) == y).astype(jnp.int32)
  return state.replace(step=state.step + 1,
                       params=optax.apply_updates(state.params, updates),
                       batch_stats=batch_stats, opt_state=opt_state,
                       correct=state.correct + correct,
                       seen=state.seen + y.shape[0],
                       loss_sum=state.loss_sum + nll_sum)


def eval_step(variables, batch, *, apply_fn: Callable):
  """(number correct, summed NLL) over the examples with weight 1."""
  log_probs = apply_fn(variables, shards.dequantize(batch["image"]))
  y, w = batch["label"], batch["weight"]
  nll = -jnp.take_along_axis(log_probs, y[:, None], axis=1)[:, 0]
  correct = (jnp.argmax(log_probs, -1) == y) & (w > 0)
  return jnp.sum(correct.astype(jnp.int32)), jnp.sum(nll * w)


def make_eval_step(apply_fn: Callable) -> Callable:
  """The jitted `eval_step` of `apply_fn`: build once, reuse every epoch."""
  return jax.jit(functools.partial(eval_step, apply_fn=apply_fn))


def model_apply_fn(model) -> Callable:
  """apply_fn(variables, x) -> log_probs, in eval mode."""
  return lambda variables, x: model.apply(variables, x, train=False)[0]


def evaluate(apply_fn: Callable, variables, images: np.ndarray,
             labels: np.ndarray, batch_size: int, mesh, *,
             step: Callable | None = None) -> dict:
  """Exact accuracy and mean NLL over every example.

  The last partial batch is padded to `batch_size` with weight-0 examples,
  so every example counts once whatever the batch size.

  Args:
    apply_fn: (variables, float images [B, H, W, 3]) -> log-probs [B, K].
    variables: passed to apply_fn.
    images: uint8 [N, H, W, 3].
    labels: int [N].
    batch_size: examples per step (a multiple of the device count).
    mesh: the data mesh.
    step: `make_eval_step(apply_fn)`, built once by the caller that
      evaluates repeatedly; by default a new one (one compilation).

  Returns:
    {'accuracy': correct / N, 'loss': mean NLL, 'correct': int, 'num': N}.
  """
  step = step or make_eval_step(apply_fn)
  n = len(labels)
  mine = distributed.process_rows(batch_size)  # this process's rows
  correct, nll = 0, 0.0
  for i in range(0, n, batch_size):
    img, lab = images[i:i + batch_size], labels[i:i + batch_size]
    pad = batch_size - len(lab)
    batch = {"image": np.pad(img, ((0, pad),) + ((0, 0),) * (img.ndim - 1)),
             "label": np.pad(np.asarray(lab, np.int32), (0, pad)),
             "weight": np.pad(np.ones(len(lab), np.float32), (0, pad))}
    batch = jax.tree.map(lambda x: x[mine], batch)
    c, l = step(variables, common.shard_batch(batch, mesh))
    correct += int(c)
    nll += float(l)
  return {"accuracy": correct / n, "loss": nll / n, "correct": correct,
          "num": n}


# ------------------------------------------------------------------- data --


# Fields that may change when a run resumes: loop length and logging.
RESUMABLE_FIELDS = ("epochs", "log_every_steps", "read_threads", "prefetch",
                    "overwrite")


def data_provenance(config) -> dict:
  """The provenance records of the datasets `config` trains and tests on."""
  cf_root = pathlib.Path(config.counterfactuals or config.real_dir)
  real_root = pathlib.Path(config.real_dir or config.counterfactuals)
  dirs = {"test": real_root / cf_mnist.REAL_TEST_DIR}
  if config.train_on != "real":
    dirs["counterfactuals"] = cf_root / cf_mnist.CF_DIR
  if config.train_on != "counterfactual":
    dirs["real_train"] = real_root / cf_mnist.REAL_TRAIN_DIR
  return {name: shards.read_index(d)["metadata"].get("provenance")
          for name, d in sorted(dirs.items())}


def load_sources(config) -> tuple[Any, tuple[np.ndarray, np.ndarray]]:
  """(train source, (test images uint8, test labels)) for `config.train_on`."""
  if config.train_on not in TRAIN_ON:
    raise ValueError(f"unknown train_on {config.train_on!r}; one of "
                     f"{TRAIN_ON}")
  if not config.counterfactuals and not config.real_dir:
    raise ValueError(
        "set --config.counterfactuals=CF_DIR (the --workdir of generate.py)")
  cf_root = pathlib.Path(config.counterfactuals or config.real_dir)
  real_root = pathlib.Path(config.real_dir or config.counterfactuals)
  fields = ("image", "label")
  parts = []
  if config.train_on != "real":
    src = shards.ShardedSource(cf_root / cf_mnist.CF_DIR, fields)
    variant = src.metadata.get("variant")
    if variant and variant != config.variant:
      raise ValueError(f"{cf_root} holds {variant} counterfactuals but the "
                       f"config is for {config.variant}")
    if config.num_counterfactuals:
      if config.num_counterfactuals > len(src):
        raise ValueError(f"num_counterfactuals={config.num_counterfactuals} "
                         f"but {cf_root} has {len(src)}")
      src = _Prefix(src, config.num_counterfactuals)
    parts.append(src)
  if config.train_on != "counterfactual":
    real = shards.ShardedSource(real_root / cf_mnist.REAL_TRAIN_DIR, fields)
    if config.num_real:
      real = _Prefix(real, min(config.num_real, len(real)))
    parts.append(real)
  test = shards.ShardedSource(real_root / cf_mnist.REAL_TEST_DIR, fields)
  n_test = len(test) if not config.test_subset else min(config.test_subset,
                                                        len(test))
  test_batch = test.gather(np.arange(n_test))
  train = parts[0] if len(parts) == 1 else shards.ConcatSource(parts)
  return train, (test_batch["image"], test_batch["label"])


class _Prefix:
  """The first `n` records of a source ([FA] used prefixes of 1e6 sets)."""

  def __init__(self, source, n: int):
    self.source, self.n = source, int(n)

  def __len__(self):
    return self.n

  def gather(self, indices):
    return self.source.gather(indices)


def make_train_iterator(source, batch_size: int, epochs: int, seed: int,
                        threads: int = 2, prefetch: int = 8, *,
                        process_index: int | None = None,
                        process_count: int | None = None):
  """A checkpointable grain iterator over `epochs` shuffled epochs.

  Each epoch is a fresh seeded permutation (grain reseeds `shuffle` per
  repetition); batches never straddle epochs and the remainder is dropped.
  `batch_size` is the global batch: every process draws the same index
  batches and gathers only its rows of each (`distributed.process_rows`),
  so no example is read twice and the global batch is the one-process one.
  """
  mine = distributed.process_rows(batch_size, process_index, process_count)
  ds = (grain.MapDataset.range(len(source)).shuffle(seed=seed)
        .batch(batch_size, drop_remainder=True).repeat(epochs)
        .map(lambda idx: source.gather(idx[mine])))
  return iter(ds.to_iter_dataset(grain.ReadOptions(
      num_threads=threads, prefetch_buffer_size=prefetch)))


# ----------------------------------------------------------------- driver --


def train_and_evaluate(config: ml_collections.ConfigDict, workdir) -> dict:
  """Trains, tests after every epoch, writes WORKDIR/results.json.

  Returns:
    The results dict (also in results.json).
  """
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  mesh = common.make_mesh()
  common.check_global_batch(config.batch_size)
  common.check_global_batch(config.test_batch_size)

  # -- data
  train_src, (test_images, test_labels) = load_sources(config)
  steps_per_epoch = len(train_src) // config.batch_size
  if steps_per_epoch == 0:
    raise ValueError(f"{len(train_src)} training images are fewer than one "
                     f"batch of {config.batch_size}")
  total_steps = steps_per_epoch * config.epochs
  it = make_train_iterator(train_src, config.batch_size, config.epochs,
                           config.seed, config.read_threads, config.prefetch)
  logging.info("training on %d images (%s), %d steps/epoch; testing on %d",
               len(train_src), config.train_on, steps_per_epoch,
               len(test_labels))

  # -- model and optimiser
  model = create_model(config)
  tx = make_optimizer(config, steps_per_epoch)
  schedule = lr_schedule(config, steps_per_epoch)
  state = create_train_state(model, tx, jax.random.PRNGKey(config.seed))
  state = common.replicate(state, mesh)

  # -- restore (only a checkpoint made with this config and data)
  common.guard_workdir(
      workdir, common.run_record(config, RESUMABLE_FIELDS,
                                 data=data_provenance(config)),
      overwrite=config.get("overwrite", False))
  ckpt = common.Checkpointer(workdir)
  results = {"config": config.to_dict(), "epochs": []}
  restored = ckpt.restore(state, it)
  if restored is not None:
    state, meta = restored
    results["epochs"] = list(meta.get("epochs", []))
  step = int(state.step)

  step_fn = jax.jit(functools.partial(train_step, model=model, tx=tx),
                    donate_argnums=(0,))
  apply_fn = model_apply_fn(model)
  eval_fn = make_eval_step(apply_fn)
  writer = common.MetricWriter(workdir)

  # -- loop
  t0, t_step0 = time.perf_counter(), step
  with common.StopSignal() as stop:
    while step < total_steps:
      state = step_fn(state, common.shard_batch(next(it), mesh))
      step += 1
      if step % config.log_every_steps == 0 or step == 1:
        seen = max(int(state.seen), 1)
        m = {"train_loss": float(state.loss_sum) / seen,
             "train_accuracy": int(state.correct) / seen,
             "steps_per_second": (step - t_step0)
                                 / (time.perf_counter() - t0)}
        common.check_finite(step, m, ckpt.directory)
        writer.write(step, m)
      if step % steps_per_epoch == 0:
        state = _end_epoch(state, step // steps_per_epoch, step, results,
                           schedule, (apply_fn, eval_fn),
                           (test_images, test_labels), config, mesh, writer)
        ckpt.save(step, state, it, {"epochs": results["epochs"]})
        common.write_json(workdir / "results.json", results)
      elif stop.requested:
        ckpt.save(step, state, it, {"epochs": results["epochs"]})
        logging.warning("stopped at step %d; rerun to resume", step)
        break
  ckpt.close()
  writer.close()
  common.write_json(workdir / "results.json", results)
  return results


def _end_epoch(state, epoch, step, results, schedule, fns, test, config,
               mesh, writer) -> TrainState:
  """Logs the epoch's train metrics and the test set; resets the counters."""
  seen = int(state.seen)
  apply_fn, eval_fn = fns
  test_m = evaluate(apply_fn, {"params": state.params,
                               "batch_stats": state.batch_stats},
                    test[0], test[1], config.test_batch_size, mesh,
                    step=eval_fn)
  record = {"epoch": epoch, "step": step,
            "lr": float(schedule(step - 1)),
            "train_accuracy": int(state.correct) / seen,
            "train_loss": float(state.loss_sum) / seen,
            "test_accuracy": test_m["accuracy"], "test_loss": test_m["loss"]}
  common.check_finite(step, {k: record[k] for k in ("train_loss",
                                                    "test_loss")})
  results["epochs"].append(record)
  writer.write(step, {k: v for k, v in record.items() if k != "step"})
  logging.info("epoch %d: train acc %.4f, test acc %.4f (loss %.4f)", epoch,
               record["train_accuracy"], record["test_accuracy"],
               record["test_loss"])
  return common.replicate(reset_epoch_metrics(state), mesh)
