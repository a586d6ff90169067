"""K independent MNIST CGNs of one dataset trained as one vmapped program.

  python train.py --config=configs/cgn_mnist_many.py:wildlife,seeds=3 \
      --workdir=DIR [--config.steps_per_call=100]

The CGN of `cgn_mnist.py` (same models, losses, G-then-D step, renderer,
initialiser, sampler: its `build_programs` pieces and its pure `train_step`,
vmapped here over a leading model axis) for each seed in `config.seeds`.
Model i is the single-model run with `seed = seeds[i]`: its own
initialisation, its own data order (its own grain iterator) and its own step
randomness; the frozen VGG16 is shared. On a GPU the batch-16 step is
launch-bound, so K seeds cost little more than one; `steps_per_call` steps
more run in one `lax.scan` (vmapped steps inside the scan).

Outputs: DIR/seed_<s>/ holds what the single-model trainer writes for that
seed (checkpoints/ of its state and data iterator, metrics.jsonl,
tensorboard/, samples/, provenance.json, results.json) plus generator/, the
trained generator in the converted-checkpoint format that generate.py and
`python -m cgn_jax.experiments.mnist_table --cgn-dir` read. DIR/results.json
lists the seeds, the steps and the wall time. A rerun resumes every model
from its checkpoint (all must be at the same step).
"""

import functools
import pathlib
import time

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from cgn_jax import weights
from cgn_jax.models import cgn_weights
from cgn_jax.train import cgn_mnist as single
from cgn_jax.train import common

P = jax.sharding.PartitionSpec
GENERATOR_DIR = "generator"  # DIR/seed_<s>/generator: the exported G


def model_config(config: ml_collections.ConfigDict, seed: int):
  """The single-model config of one seed (what its provenance records)."""
  return common.seed_config(config, seed, "cgn_mnist")


model_dir = common.seed_dir
stack = common.stack_trees
unstack = common.unstack_tree


def make_steps(programs: single.Programs):
  """Jitted `(states [K], batches [k, K, B], vgg) -> (states, metrics [k, K])`.

  `cgn_mnist.train_step` vmapped over the model axis (VGG16 shared), run by
  `cgn_mnist.multi_step` as a `lax.scan` over the k steps.
  """
  step = jax.vmap(functools.partial(single.train_step,
                                    models=programs.models, lc=programs.lc,
                                    render=programs.render),
                  in_axes=(0, 0, None))
  rep = common.replicated(programs.mesh)
  batches = jax.sharding.NamedSharding(programs.mesh, P(None, None, "data"))
  return jax.jit(functools.partial(single.multi_step, step_fn=step),
                 in_shardings=(rep, batches, rep), out_shardings=(rep, rep),
                 donate_argnums=(0,))


def export_generator(directory, state, config) -> pathlib.Path:
  """Writes G's variables as `python -m converters cgn-mnist` would."""
  dataset = {"colored": "colored_MNIST",
             "double_colored": "double_colored_MNIST",
             "wildlife": "wildlife_MNIST"}[config.dataset]
  m = config.model
  weights.save_variables(
      directory, {"params": state.g_params,
                  "batch_stats": state.g_batch_stats},
      {"model": cgn_weights.MODEL, "source": f"cgn_mnist seed {config.seed}",
       "dataset": dataset, "step": int(state.step),
       "config": dict(n_classes=m.n_classes, latent_sz=m.latent_sz,
                      ngf=m.ngf, img_sz=m.img_sz)})
  return pathlib.Path(directory)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir, *,
                       programs: single.Programs | None = None):
  """Trains K = len(config.seeds) CGNs together; returns the K states.

  Args:
    config: a configs/cgn_mnist_many.py config.
    workdir: output directory (one seed_<s>/ per model).
    programs: `cgn_mnist.build_programs` of the single-model config, to
      reuse its initialiser and sampler; by default built here.
  """
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  seeds = common.check_seeds(config.seeds)
  n_models = len(seeds)
  configs = [model_config(config, s) for s in seeds]
  common.check_global_batch(config.batch_size)
  vgg_variables = single.load_vgg_variables(config.perceptual.vgg16)
  with_vgg = vgg_variables is not None
  if programs is None:
    programs = single.build_programs(configs[0], with_vgg=with_vgg)
  else:
    common.check_programs_key(
        programs.key, single.programs_key(configs[0], with_vgg),
        "build_programs(config)")
  mesh = programs.mesh
  vgg_variables = (common.replicate(vgg_variables, mesh)
                   if programs.models.vgg is not None else None)
  common.write_json(workdir / "config.json", config.to_dict())

  # -- per model: data, provenance, checkpoint or fresh state
  iterators, states, ckpts, writers, origins = [], [], [], [], []
  for c in configs:
    d = model_dir(workdir, c.seed)
    d.mkdir(parents=True, exist_ok=True)
    common.write_json(d / "config.json", c.to_dict())
    it, _, steps_per_epoch = single.make_input(c, render=programs.render)
    common.guard_workdir(d, common.run_record(c, single.RESUMABLE_FIELDS),
                         overwrite=config.get("overwrite", False))
    ckpt = common.Checkpointer(d, max_to_keep=config.keep_checkpoints)
    state, origin = single._initial_state(c, programs, ckpt, it)  # pylint: disable=protected-access
    iterators.append(it)
    states.append(state)
    ckpts.append(ckpt)
    origins.append(origin)
    writers.append(common.MetricWriter(d))
  at = {s: int(st.step) for s, st in zip(seeds, states)}
  if len(set(at.values())) > 1:
    raise RuntimeError(
        f"the models in {workdir} are at different steps {at}; delete the "
        "seed_* directories that are behind or ahead, or rerun with "
        "--config.overwrite=True")
  step = int(states[0].step)
  num_steps = single.total_steps(config, steps_per_epoch)
  state = common.replicate(stack(states), mesh)
  del states
  steps_fn = make_steps(programs)
  k_max = max(1, int(config.steps_per_call))
  sample_keys = [jax.random.fold_in(jax.random.PRNGKey(s), 10**6)
                 for s in seeds]
  batch_sharding = jax.sharding.NamedSharding(mesh, P(None, None, "data"))
  logging.info("%s: %d models (seeds %s), %d of %d steps to go (%s)",
               config.dataset, n_models, seeds, num_steps - step, num_steps,
               origins)

  def save(at_step):
    for i, st in enumerate(unstack(state, n_models)):
      ckpts[i].save(at_step, st, iterators[i],
                    meta={"dataset": config.dataset})

  def flush(pending, now_step, t_window, s_window):
    """Writes each model's window mean; raises on a non-finite loss."""
    got = jax.device_get(pending)
    sps = ((now_step - s_window) / (time.time() - t_window)
           if now_step > s_window else None)
    last = []
    for i in range(n_models):
      rows = []
      for first, metrics in got:
        for j in range(len(next(iter(metrics.values())))):
          row = {n: float(v[j, i]) for n, v in metrics.items()}
          common.check_finite(first + j + 1, row, ckpts[i].directory)
          rows.append(row)
      mean = {n: float(np.mean([r[n] for r in rows])) for n in rows[-1]}
      if sps is not None:
        mean["steps_per_second"] = sps
      writers[i].write(now_step, mean)
      last.append(rows[-1])
    return last

  # -- loop
  start, t_window, s_window = time.time(), time.time(), step
  first_call, pending, last = True, [], None
  try:
    with common.StopSignal() as stop:
      while step < num_steps:
        k = min(k_max, num_steps - step)
        per_model = [single.stack_batches(it, k) for it in iterators]
        batches = jax.tree.map(lambda *xs: np.stack(xs, 1), *per_model)
        batches = jax.tree.map(
            lambda x: jax.make_array_from_process_local_data(batch_sharding,
                                                             x), batches)
        state, metrics = steps_fn(state, batches, vgg_variables)
        pending.append((step, metrics))
        step += k
        if first_call:
          jax.block_until_ready(state)
          for w in writers:
            w.write(step, {"compile_s": time.time() - t_window})
          first_call, t_window, s_window = False, time.time(), step
        done = step == num_steps
        crossed = functools.partial(single._crossed, step, k)  # pylint: disable=protected-access
        if crossed(config.log_every_steps) or done or stop.requested:
          if pending:
            last = flush(pending, step, t_window, s_window)
            pending, t_window, s_window = [], time.time(), step
        if crossed(config.sample_every_steps) or done:
          for i, st in enumerate(unstack(state, n_models)):
            single.save_samples(model_dir(workdir, seeds[i]) / "samples",
                                step, programs.models, st, sample_keys[i],
                                sampler=programs.sampler, writer=writers[i])
        if crossed(config.ckpt_every_steps) or done or stop.requested:
          if pending:  # never save a non-finite state
            last = flush(pending, step, t_window, s_window)
            pending, t_window, s_window = [], time.time(), step
          save(step)
        if stop.requested:
          logging.warning("stopped by signal at step %d (checkpoints "
                          "saved)", step)
          return state
  finally:
    for c_, w in zip(ckpts, writers):
      c_.close()
      w.close()

  wall = time.time() - start
  for i, (c, st) in enumerate(zip(configs, unstack(state, n_models))):
    d = model_dir(workdir, c.seed)
    export_generator(d / GENERATOR_DIR, st, c)
    common.write_json(d / "results.json", {
        "dataset": c.dataset, "step": step, "num_steps": num_steps,
        "final_losses": last[i] if last else None, "wall_s": wall,
        "started_from": origins[i], "trained_with_seeds": list(seeds)})
  common.write_json(workdir / "results.json", {
      "dataset": config.dataset, "seeds": list(seeds), "step": step,
      "num_steps": num_steps, "wall_s": wall,
      "generators": {s: str(model_dir(workdir, s) / GENERATOR_DIR)
                     for s in seeds}})
  return state
