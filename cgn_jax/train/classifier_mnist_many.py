"""K independent MNIST classifiers trained as one vmapped, jitted step.

  python train.py --config=configs/classifier_mnist_many.py:wildlife,seeds=3 \
      --workdir=DIR --config.counterfactuals=CF_DIR

The classifier of `classifier_mnist.py` (same model, optimiser, step and
evaluation: this module vmaps them over a leading model axis and adds
nothing to the arithmetic) for each seed in `config.seeds`. Model i is the
single-model run with `seed = seeds[i]`: its own initialisation and its own
per-epoch data order, drawn through its own grain iterator; all K models
take one step together. On a GPU the 64-image step is launch-bound, so K
models cost little more than one; `steps_per_call` steps more run in one
`lax.scan` for the same reason.

Outputs: DIR/seed_<s>/ is exactly what the single-model trainer writes for
that seed (results.json per epoch, metrics.jsonl, tensorboard/, checkpoints/
of that model's state and data iterator, provenance.json), and
DIR/results.json summarises the final epoch over the seeds (mean, std, N).
A rerun resumes every model from its checkpoint (they must all be at the
same step; otherwise the error names them).
"""

import functools
import pathlib
import time
from typing import Any

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from cgn_jax.train import classifier_mnist as single
from cgn_jax.train import common

P = jax.sharding.PartitionSpec
# Fields that may differ between models without changing the programs.
RESUMABLE_FIELDS = single.RESUMABLE_FIELDS + ("steps_per_call",)


def model_config(config: ml_collections.ConfigDict, seed: int):
  """The single-model config of one seed (what its provenance records)."""
  return common.seed_config(config, seed, "classifier_mnist",
                            drop=("seeds", "steps_per_call"))


model_dir = common.seed_dir
stack = common.stack_trees
unstack = common.unstack_tree


def multi_step(states, batches, *, step_fn):
  """`batches` [k, K, B, ...]: k vmapped steps in one `lax.scan`."""
  if jax.tree.leaves(batches)[0].shape[0] == 1:  # no loop: fast on XLA:CPU
    return step_fn(states, jax.tree.map(lambda b: b[0], batches))
  return jax.lax.scan(lambda s, b: (step_fn(s, b), None), states,
                      batches)[0]


def make_steps(model, tx, mesh):
  """The jitted K-model multi-step: states [K, ...], batches [k, K, B].

  On XLA:CPU keep k = 1 (steps_per_call): a convolution inside a loop body
  (`lax.scan`, also `lax.map`) runs ~40x slower there than at top level
  (measured: classifier step 0.12 s alone, 4 s inside a scan).
  """
  step = jax.vmap(functools.partial(single.train_step, model=model, tx=tx))
  rep = common.replicated(mesh)
  batch_sharding = jax.sharding.NamedSharding(mesh, P(None, None, "data"))
  return jax.jit(functools.partial(multi_step, step_fn=step),
                 in_shardings=(rep, batch_sharding), out_shardings=rep,
                 donate_argnums=(0,))


def make_eval(apply_fn):
  """Vmapped `eval_step`: K models' variables, one shared test batch."""
  return jax.jit(jax.vmap(functools.partial(single.eval_step,
                                            apply_fn=apply_fn),
                          in_axes=(0, None)))


def evaluate_many(eval_fn, variables, images, labels, batch_size, mesh,
                  k: int) -> list[dict]:
  """`classifier_mnist.evaluate` for K stacked models at once (exact)."""
  n = len(labels)
  correct, nll = np.zeros(k, np.int64), np.zeros(k, np.float64)
  for i in range(0, n, batch_size):
    img, lab = images[i:i + batch_size], labels[i:i + batch_size]
    pad = batch_size - len(lab)
    batch = {"image": np.pad(img, ((0, pad),) + ((0, 0),) * (img.ndim - 1)),
             "label": np.pad(np.asarray(lab, np.int32), (0, pad)),
             "weight": np.pad(np.ones(len(lab), np.float32), (0, pad))}
    c, l = eval_fn(variables, common.shard_batch(batch, mesh))
    correct += np.asarray(c)
    nll += np.asarray(l, np.float64)
  return [{"accuracy": int(c) / n, "loss": float(l) / n, "correct": int(c),
           "num": n} for c, l in zip(correct, nll)]


def summarize(per_seed: dict[int, dict]) -> dict:
  """Mean, std (ddof 1; 0 for one seed) and N of the final-epoch metrics."""
  out = {"seeds": sorted(per_seed), "n": len(per_seed)}
  finals = [r["epochs"][-1] for _, r in sorted(per_seed.items())
            if r["epochs"]]
  for key in ("train_accuracy", "test_accuracy", "test_loss"):
    vals = np.array([f[key] for f in finals], np.float64)
    if len(vals):
      out[key] = {"mean": float(vals.mean()),
                  "std": float(vals.std(ddof=1)) if len(vals) > 1 else 0.0,
                  "values": vals.tolist()}
  return out


def train_and_evaluate(config: ml_collections.ConfigDict, workdir) -> dict:
  """Trains K = len(config.seeds) classifiers together; returns the summary.

  Returns:
    {'per_seed': {seed: results dict of that model}, 'summary': ...} (the
    summary is also DIR/results.json).
  """
  workdir = pathlib.Path(workdir)
  seeds = common.check_seeds(config.seeds)
  k_models = len(seeds)
  configs = [model_config(config, s) for s in seeds]
  mesh = common.make_mesh()
  common.check_global_batch(config.batch_size)
  common.check_global_batch(config.test_batch_size)

  # -- data: one source, K iterators (each seed its own order)
  train_src, (test_images, test_labels) = single.load_sources(configs[0])
  steps_per_epoch = len(train_src) // config.batch_size
  if steps_per_epoch == 0:
    raise ValueError(f"{len(train_src)} training images are fewer than one "
                     f"batch of {config.batch_size}")
  total_steps = steps_per_epoch * config.epochs
  iterators = [single.make_train_iterator(train_src, config.batch_size,
                                          config.epochs, s,
                                          config.read_threads,
                                          config.prefetch) for s in seeds]
  logging.info("%d models (seeds %s) on %d images (%s), %d steps/epoch",
               k_models, seeds, len(train_src), config.train_on,
               steps_per_epoch)

  # -- models, states, per-model restore
  model = single.create_model(config)
  tx = single.make_optimizer(config, steps_per_epoch)
  schedule = single.lr_schedule(config, steps_per_epoch)
  data = single.data_provenance(configs[0])
  states, ckpts, results, writers = [], [], [], []
  for c, s, it in zip(configs, seeds, iterators):
    d = model_dir(workdir, s)
    d.mkdir(parents=True, exist_ok=True)
    state = common.replicate(
        single.create_train_state(model, tx, jax.random.PRNGKey(s)), mesh)
    common.guard_workdir(d, common.run_record(c, single.RESUMABLE_FIELDS,
                                              data=data),
                         overwrite=config.get("overwrite", False))
    ckpt = common.Checkpointer(d)
    r = {"config": c.to_dict(), "epochs": []}
    restored = ckpt.restore(state, it)
    if restored is not None:
      state, meta = restored
      r["epochs"] = list(meta.get("epochs", []))
    states.append(state)
    ckpts.append(ckpt)
    results.append(r)
    writers.append(common.MetricWriter(d))
  steps_done = sorted({int(s.step) for s in states})
  if len(steps_done) > 1:
    raise RuntimeError(
        f"the models in {workdir} are at different steps "
        f"{dict(zip(seeds, (int(s.step) for s in states)))}; delete the "
        "seed_* directories that are behind or ahead, or rerun with "
        "--config.overwrite=True")
  step = steps_done[0]
  state = common.replicate(stack(states), mesh)
  del states

  steps_fn = make_steps(model, tx, mesh)
  eval_fn = make_eval(single.model_apply_fn(model))
  k_max = max(1, int(config.steps_per_call))

  def save_all(at):
    for i, st in enumerate(unstack(state, k_models)):
      ckpts[i].save(at, st, iterators[i], {"epochs": results[i]["epochs"]})

  # -- loop: a call never crosses an epoch end (the test and the counter
  # reset happen there). Every distinct k compiles once: steps_per_call
  # should divide the steps per epoch.
  t0, t_step0 = time.perf_counter(), step
  with common.StopSignal() as stop:
    while step < total_steps:
      k = min(k_max, steps_per_epoch - step % steps_per_epoch)
      first = step == t_step0
      batches = [single_stack([next(it) for _ in range(k)])
                 for it in iterators]
      batches = jax.tree.map(lambda *xs: np.stack(xs, 1), *batches)
      state = steps_fn(state, jax.tree.map(
          lambda x: jax.make_array_from_process_local_data(
              jax.sharding.NamedSharding(mesh, P(None, None, "data")), x),
          batches))
      step += k
      every = config.log_every_steps
      if first or step // every != (step - k) // every:
        seen = np.maximum(np.asarray(state.seen), 1)
        loss = np.asarray(state.loss_sum) / seen
        acc = np.asarray(state.correct) / seen
        sps = (step - t_step0) / (time.perf_counter() - t0)
        for i in range(k_models):
          m = {"train_loss": float(loss[i]), "train_accuracy": float(acc[i]),
               "steps_per_second": sps}
          common.check_finite(step, m, ckpts[i].directory)
          writers[i].write(step, m)
      if step % steps_per_epoch == 0:
        state = _end_epoch(state, step // steps_per_epoch, step, results,
                           schedule, eval_fn, (test_images, test_labels),
                           config, mesh, writers)
        save_all(step)
        for s, r in zip(seeds, results):
          common.write_json(model_dir(workdir, s) / "results.json", r)
      elif stop.requested:
        save_all(step)
        logging.warning("stopped at step %d; rerun to resume", step)
        break
  for c_, w in zip(ckpts, writers):
    c_.close()
    w.close()
  per_seed = dict(zip(seeds, results))
  for s, r in per_seed.items():
    common.write_json(model_dir(workdir, s) / "results.json", r)
  summary = dict(summarize(per_seed), epochs=len(results[0]["epochs"]),
                 wall_s=time.perf_counter() - t0)
  common.write_json(workdir / "results.json", summary)
  return {"per_seed": per_seed, "summary": summary}


def single_stack(items):
  """k host batches -> one with a leading axis k."""
  return jax.tree.map(lambda *xs: np.stack(xs), *items)


def _end_epoch(state, epoch, step, results, schedule, eval_fn, test, config,
               mesh, writers) -> Any:
  """Per model: the epoch's train metrics and test set; resets counters."""
  k = len(results)
  seen = np.asarray(state.seen)
  correct, loss_sum = np.asarray(state.correct), np.asarray(state.loss_sum)
  tests = evaluate_many(eval_fn, {"params": state.params,
                                  "batch_stats": state.batch_stats},
                        test[0], test[1], config.test_batch_size, mesh, k)
  lr = float(schedule(step - 1))
  for i in range(k):
    record = {"epoch": epoch, "step": step, "lr": lr,
              "train_accuracy": int(correct[i]) / int(seen[i]),
              "train_loss": float(loss_sum[i]) / int(seen[i]),
              "test_accuracy": tests[i]["accuracy"],
              "test_loss": tests[i]["loss"]}
    common.check_finite(step, {n: record[n] for n in ("train_loss",
                                                      "test_loss")})
    results[i]["epochs"].append(record)
    writers[i].write(step, {n: v for n, v in record.items() if n != "step"})
  logging.info("epoch %d: test acc %s", epoch,
               [round(t["accuracy"], 4) for t in tests])
  zeros = lambda dtype: jnp.zeros((k,), dtype)
  return common.replicate(
      state.replace(correct=zeros(jnp.int32), seen=zeros(jnp.int32),
                    loss_sum=zeros(jnp.float32)), mesh)
