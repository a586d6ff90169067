"""What every trainer shares: mesh, checkpoints, metrics, progress, signals.

Trainers (`cgn_mnist.py`, `classifier_mnist.py`, ...) keep their own state
and step functions; this module owns the plumbing around them so that every
trainer resumes, logs and stops the same way:

* one-axis 'data' mesh: batches sharded over all devices, params replicated;
* orbax checkpoints of the whole train state plus the grain iterator state,
  written atomically (orbax finalises a step directory only when complete)
  and restored automatically from the workdir;
* metrics as JSON lines (WORKDIR/metrics.jsonl) and TensorBoard event files
  (WORKDIR/tensorboard/, written with tensorboardX, no TensorFlow), through
  one `MetricWriter`, with a non-finite check that names the step;
* provenance: `guard_workdir` refuses to resume a checkpoint made with
  another config or other data (WORKDIR/provenance.json), or starts over
  when the config says `overwrite`;
* SIGTERM: finish the current step, save, exit cleanly.
"""

import json
import math
import os
import pathlib
import shutil
import signal
from typing import Any, Iterable, Mapping

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from PIL import Image

from cgn_jax import distributed
from cgn_jax import provenance

P = jax.sharding.PartitionSpec
TENSORBOARD_DIR = "tensorboard"  # WORKDIR/tensorboard: the event files


# ---------------------------------------------------------------- sharding --


def make_mesh() -> jax.sharding.Mesh:
  """A one-axis mesh named 'data' over every device (all hosts).

  Process-major (`distributed.data_mesh`): process p's devices hold rows
  [p*b, (p+1)*b) of every batch, the rows its pipeline reads.
  """
  return distributed.data_mesh()


def batch_sharding(mesh) -> jax.sharding.NamedSharding:
  """Leading (batch) axis split over 'data'."""
  return jax.sharding.NamedSharding(mesh, P("data"))


def replicated(mesh) -> jax.sharding.NamedSharding:
  return jax.sharding.NamedSharding(mesh, P())


def replicate(tree, mesh):
  """`tree` on every device of every process (`distributed.replicate`)."""
  return distributed.replicate(tree, mesh)


def shard_batch(batch, mesh):
  """Host-local numpy batch -> global jax arrays sharded on the batch axis.

  Each process passes its own shard of the global batch (the grain pipeline
  already takes `process_index`'s share).
  """
  return distributed.global_batch(batch, batch_sharding(mesh))


def check_global_batch(batch_size: int) -> None:
  """The global batch must split evenly over the devices."""
  n = jax.device_count()
  if batch_size % n:
    raise ValueError(
        f"batch_size {batch_size} is not divisible by the {n} devices; set "
        f"--config.batch_size to a multiple of {n}")


# -------------------------------------------------------------- checkpoints --


class Checkpointer:
  """Orbax checkpoints of `{state, data iterator, meta}` in WORKDIR/checkpoints.

  Saving is synchronous: a save returns only when the step directory is
  final, so a SIGTERM handler can save and exit. Orbax writes each step to a
  temporary directory and renames it when complete, so an interrupted save
  never replaces the last good checkpoint.
  """

  def __init__(self, workdir, max_to_keep: int = 2):
    self.directory = pathlib.Path(workdir).resolve() / "checkpoints"
    self._mngr = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, create=True,
            enable_async_checkpointing=False))

  def latest_step(self) -> int | None:
    return self._mngr.latest_step()

  def save(self, step: int, state, data_iterator=None,
           meta: Mapping[str, Any] | None = None) -> None:
    import grain  # pylint: disable=g-import-not-at-top
    args = {"state": ocp.args.StandardSave(state),
            "meta": ocp.args.JsonSave(dict(meta or {}, step=int(step)))}
    if data_iterator is not None:
      args["data"] = grain.checkpoint.CheckpointSave(data_iterator)
    self._mngr.save(int(step), args=ocp.args.Composite(**args), force=True)
    self._mngr.wait_until_finished()

  def restore(self, abstract_state, data_iterator=None):
    """Restores the latest step into the structure of `abstract_state`.

    Args:
      abstract_state: a state tree (arrays or ShapeDtypeStructs with
        shardings) giving structure, dtypes and placement.
      data_iterator: a grain iterator whose position is restored in place.

    Returns:
      (state, meta) or None when the workdir has no checkpoint.
    """
    import grain  # pylint: disable=g-import-not-at-top
    step = self._mngr.latest_step()
    if step is None:
      return None
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_state)
    args = {"state": ocp.args.StandardRestore(abstract),
            "meta": ocp.args.JsonRestore()}
    if data_iterator is not None:
      check_process_count(self.directory / str(step) / "data")
      args["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
    try:
      restored = self._mngr.restore(step, args=ocp.args.Composite(**args))
    except Exception as e:  # pylint: disable=broad-except
      raise RuntimeError(
          f"checkpoint {self.directory / str(step)} could not be restored "
          f"({type(e).__name__}: {e}). It is corrupt or from another config: "
          "delete that step directory to fall back to the previous one, or "
          "use a fresh --workdir.") from e
    logging.info("restored checkpoint step %d from %s", step, self.directory)
    return restored["state"], restored["meta"]

  def close(self):
    self._mngr.close()


def check_process_count(data_dir) -> None:
  """The iterator states in `data_dir` must be one per process of this run.

  grain saves one position per process (`process_I-of-N.json`): each
  process reads its own rows of every global batch, so a checkpoint resumes
  only with the same number of processes.
  """
  data_dir = pathlib.Path(data_dir)
  counts = {p.stem.rsplit("-of-", 1)[-1]
            for p in data_dir.glob("process_*-of-*.json")}
  if counts and counts != {str(jax.process_count())}:
    raise ValueError(
        f"{data_dir.parent} was written by {'/'.join(sorted(counts))} "
        f"processes but this run has {jax.process_count()}: resume it with "
        "the same number of processes (each saved its own data position), "
        "or start a fresh --workdir")


# ------------------------------------------------------------------ metrics --


class NonFiniteLossError(FloatingPointError):
  """A logged loss became NaN or Inf; training stopped."""


class MetricWriter:
  """Logs scalars (and images) where researchers look.

  Every `write(step, metrics)` appends one JSON object to
  WORKDIR/metrics.jsonl and adds each value as a TensorBoard scalar to the
  event file in WORKDIR/tensorboard/ (`tensorboard --logdir WORKDIR`).
  `image(tag, step, image)` adds an image (e.g. a sample sheet) to the
  event file. Only process 0 writes TensorBoard events; without tensorboardX
  installed only metrics.jsonl is written (with a warning). Trainers call
  `close()` at the end (also a context manager).
  """

  def __init__(self, workdir, *, tensorboard: bool = True):
    self.path = pathlib.Path(workdir) / "metrics.jsonl"
    self.path.parent.mkdir(parents=True, exist_ok=True)
    self.tb_dir = pathlib.Path(workdir) / TENSORBOARD_DIR
    self._tb = None
    if tensorboard and jax.process_index() == 0:
      try:
        from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      except ImportError:
        logging.warning("tensorboardX is not installed: metrics go to %s "
                        "only (pip install tensorboardX)", self.path)
      else:
        self._tb = SummaryWriter(logdir=str(self.tb_dir), flush_secs=30)

  def write(self, step: int, metrics: Mapping[str, Any]) -> None:
    if not distributed.is_main_process():
      return  # one log per run, written by process 0
    record = {"step": int(step)}
    record.update({k: float(v) for k, v in metrics.items()})
    with open(self.path, "a") as f:
      f.write(json.dumps(record) + "\n")
    if self._tb is not None:
      for k, v in record.items():
        if k != "step":
          self._tb.add_scalar(k, v, int(step))

  def image(self, tag: str, step: int, image) -> None:
    """Adds an [H, W, 3] image (uint8, or float in [0, 1]) to TensorBoard."""
    if self._tb is not None:
      self._tb.add_image(tag, np.asarray(image), int(step),
                         dataformats="HWC")

  def flush(self) -> None:
    if self._tb is not None:
      self._tb.flush()

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()
      self._tb = None

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()
    return False


def check_finite(step: int, metrics: Mapping[str, Any],
                 checkpoint_dir=None) -> None:
  """Raises NonFiniteLossError naming the step and the offending metrics."""
  bad = sorted(k for k, v in metrics.items() if not math.isfinite(float(v)))
  if bad:
    where = (f"; the last good checkpoint is kept in {checkpoint_dir}"
             if checkpoint_dir else "")
    raise NonFiniteLossError(
        f"non-finite loss at step {step}: {', '.join(bad)}{where}. Lower the "
        "learning rate or check the inputs.")


def write_json(path, obj) -> None:
  """Writes JSON atomically (temporary file + rename), on process 0 only."""
  if not distributed.is_main_process():
    return
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_suffix(path.suffix + ".tmp")
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=1)
  os.replace(tmp, path)


# --------------------------------------------------------------- provenance --


def has_checkpoint(workdir) -> bool:
  """Whether WORKDIR/checkpoints holds a step (without opening orbax)."""
  d = pathlib.Path(workdir) / "checkpoints"
  return d.is_dir() and any(p.name.isdigit() for p in d.iterdir())


def run_record(config, ignore: Iterable[str] = (), **extra) -> dict:
  """A trainer's provenance record: its config minus the fields that may
  change on resume (`ignore`: loop lengths, logging), plus `extra` (e.g.
  the provenance of its input data)."""
  cfg = {k: v for k, v in config.to_dict().items() if k not in set(ignore)}
  return provenance.normalise(dict(config=cfg, **extra))


def guard_workdir(workdir, record: Mapping[str, Any], *,
                  overwrite: bool = False) -> None:
  """Before a trainer restores: refuse a checkpoint made differently.

  If WORKDIR holds a checkpoint, its WORKDIR/provenance.json must equal
  `record` (then training resumes), else `provenance.ProvenanceMismatch`
  names the differing fields; with `overwrite` the checkpoints, metrics and
  TensorBoard events of that other run are deleted instead and training
  starts over. Then `record` is written.
  """
  workdir = pathlib.Path(workdir)
  if has_checkpoint(workdir):
    try:
      provenance.check(
          provenance.read(workdir), record,
          what=f"the checkpoint in {workdir / 'checkpoints'}",
          fix="rerun with --config.overwrite=True to start over, or use "
          "another --workdir")
    except provenance.ProvenanceMismatch as e:
      if not overwrite:
        raise
      logging.warning("overwrite: deleting the checkpoints and logs in %s "
                      "(%s)", workdir, e)
      if distributed.is_main_process():
        for name in ("checkpoints", TENSORBOARD_DIR):
          shutil.rmtree(workdir / name, ignore_errors=True)
        for name in ("metrics.jsonl", "results.json"):
          (workdir / name).unlink(missing_ok=True)
  if distributed.is_main_process():
    provenance.write(workdir, record)
  # Nobody opens the checkpoints before process 0 has cleaned them.
  distributed.sync("cgn_jax.guard_workdir")


def check_programs_key(built: str, wanted: str, build: str) -> None:
  """Refuses jitted programs built for another config, naming the fields.

  Args:
    built: the JSON key the programs were built with.
    wanted: the JSON key of the config now asked for.
    build: how to build the right ones (shown in the error).

  Raises:
    ValueError: the keys differ (each differing field with both values).
  """
  if built == wanted:
    return
  a, b = provenance.flatten(json.loads(built)), provenance.flatten(
      json.loads(wanted))
  diff = [f"{k}: {json.dumps(a.get(k))} in the Programs, "
          f"{json.dumps(b.get(k))} in the config"
          for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
  raise ValueError("the given Programs were built for another configuration "
                   f"({'; '.join(diff)}); build them with {build}")


# ----------------------------------------------------------------- signals --


class StopSignal:
  """Turns SIGTERM into a flag the training loop polls between steps.

  With several processes, reading `requested` is a collective (every
  process reads it at the same points of the same loop): it is True on all
  of them as soon as any one got the signal, so they all save the same step
  and stop together instead of one waiting for the others in a collective.
  """

  def __init__(self):
    self._got = False
    self._previous = None

  @property
  def requested(self) -> bool:
    if distributed.is_multi_process():
      return distributed.any_process(self._got)
    return self._got

  def __enter__(self):
    def handler(signum, frame):
      del frame
      logging.warning("signal %d: saving a checkpoint and stopping", signum)
      self._got = True
    try:
      self._previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: no signal handling
      self._previous = None
    return self

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
    return False


# ------------------------------------------------------------------- images --


def save_image_grid(path, images, nrow: int, *, normalize: str = "range",
                    scale: int = 1, padding: int = 2) -> None:
  """Writes images [N, H, W, C] (C = 1 or 3) as one PNG grid, `nrow` per row.

  Args:
    path: output PNG.
    images: float array; values in [-1, 1] when `normalize='range'`, any
      range with `normalize='minmax'` (per-grid min-max, as upstream sheets).
    nrow: images per row.
    scale: nearest upsampling factor (upstream shows 32px digits at 64px).
    padding: pixels between images.
  """
  x = np.asarray(images, np.float32)
  if normalize == "minmax":
    x = (x - x.min()) / max(float(x.max() - x.min()), 1e-8)
  else:
    x = (x + 1.0) / 2.0
  x = np.clip(x, 0.0, 1.0)
  if x.shape[-1] == 1:
    x = np.repeat(x, 3, axis=-1)
  if scale > 1:
    x = x.repeat(scale, axis=1).repeat(scale, axis=2)
  n, h, w, c = x.shape
  rows = -(-n // nrow)
  grid = np.ones((rows * (h + padding) + padding,
                  nrow * (w + padding) + padding, c), np.float32)
  for i in range(n):
    r, col = divmod(i, nrow)
    y0, x0 = padding + r * (h + padding), padding + col * (w + padding)
    grid[y0:y0 + h, x0:x0 + w] = x[i]
  if not distributed.is_main_process():
    return  # every process computes the sheet; process 0 writes it
  pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray((grid * 255 + 0.5).astype(np.uint8)).save(path)


# ---------------------------------------------- many models in one program --


def seed_dir(workdir, seed: int) -> pathlib.Path:
  """WORKDIR/seed_<s>: one model's outputs in a many-model run."""
  return pathlib.Path(workdir) / f"seed_{int(seed)}"


def stack_trees(trees):
  """K pytrees of the same structure -> one with a leading axis K."""
  return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def unstack_tree(tree, k: int):
  """The inverse of `stack_trees`: K pytrees (still on the device)."""
  return [jax.tree.map(lambda x, i=i: x[i], tree) for i in range(k)]


def check_seeds(seeds) -> tuple[int, ...]:
  """config.seeds of a many-model run as distinct ints, or a clear error."""
  seeds = tuple(int(s) for s in seeds)
  if not seeds or len(set(seeds)) != len(seeds):
    raise ValueError(f"config.seeds must be distinct seeds, got {seeds}; "
                     "e.g. --config.seeds='(0, 1, 2)'")
  return seeds


def seed_config(config, seed: int, trainer: str, drop=("seeds",)):
  """The single-model config of one seed in a many-model run.

  What that model's provenance records: the many-model config without its
  own fields (`drop`), naming the single-model `trainer`.
  """
  import ml_collections  # pylint: disable=g-import-not-at-top
  d = config.to_dict()
  for name in drop:
    d.pop(name, None)
  c = ml_collections.ConfigDict(d)
  c.trainer = trainer
  c.seed = int(seed)
  return c
