"""Several processes, one program: JAX's multi-controller runtime.

Every entry point calls `initialize()` (usually through
`initialize_from_flags()` after `define_flags()`) before any JAX
computation. It starts `jax.distributed` when the environment says that this
is one process of several, and does nothing on one process:

* explicit: `--coordinator=HOST:PORT --num_processes=N --process_id=I`, or
  the environment variables `JAX_COORDINATOR_ADDRESS`, `JAX_NUM_PROCESSES`,
  `JAX_PROCESS_ID` (the same on every process except the id);
* SLURM (`srun`, more than one task) and Open MPI (`mpirun`, more than one
  rank): jax.distributed.initialize() reads everything from the launcher;
* `--distributed` (or `CGN_DISTRIBUTED=1`): call jax.distributed.initialize()
  and let JAX detect any environment it supports (Cloud TPU pods,
  Kubernetes JobSets, mpi4py).

After that, the code is the same on one process or many: a one-axis 'data'
mesh over all devices (`data_mesh`), each process reads only its rows of
every global batch (`process_rows`) and builds the global array from them
(`global_batch`); parameters are replicated and XLA all-reduces gradients
across hosts. Side effects that must happen once (sample sheets, metrics,
results.json, progress bars) check `is_main_process()`; orbax checkpoints
are written by all processes together (each writes its shards, process 0
finalises).

A failure in one process stops all: the failing process publishes its error
through the coordination service and exits; every other process prints that
error and exits within about a second instead of hanging in a collective
(JAX's own heartbeat would take minutes).
"""

import os
import sys
import threading
import traceback
from typing import Any, Sequence

from absl import flags
from absl import logging
import jax
import numpy as np

P = jax.sharding.PartitionSpec

_ERROR_KEY = "cgn_jax/failed"
_POLL_S = 0.5
_watcher: dict[str, Any] = {}


# -------------------------------------------------------------------- flags --


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """Registers --coordinator, --num_processes, --process_id, --distributed.

  Call it once in an entry point (importing this module defines nothing).
  """
  if "coordinator" in flag_values:
    return
  flags.DEFINE_string(
      "coordinator", None, "HOST:PORT of process 0's coordination service "
      "(multi-process runs; same value on every process).",
      flag_values=flag_values)
  flags.DEFINE_integer("num_processes", None,
                       "Number of processes (multi-process runs).",
                       flag_values=flag_values)
  flags.DEFINE_integer("process_id", None,
                       "This process's index in [0, num_processes).",
                       flag_values=flag_values)
  flags.DEFINE_bool(
      "distributed", None, "Force jax.distributed.initialize() with JAX's "
      "cluster auto-detection (TPU pods, Kubernetes, mpi4py).",
      flag_values=flag_values)


def pop_args(argv: Sequence[str]) -> tuple[list[str], dict[str, Any]]:
  """Takes the `define_flags()` options out of an argparse-style argv.

  Returns:
    (the other arguments, keyword arguments for `initialize`).
  """
  names = {"--coordinator": ("coordinator", str),
           "--num_processes": ("num_processes", int),
           "--process_id": ("process_id", int)}
  rest, found = [], {}
  args = list(argv)
  while args:
    a = args.pop(0)
    name, eq, value = a.partition("=")
    if a == "--distributed":
      found["force"] = True
    elif name in names:
      if not eq:
        if not args:
          raise ValueError(f"{name} needs a value")
        value = args.pop(0)
      key, kind = names[name]
      try:
        found[key] = kind(value)
      except ValueError:
        raise ValueError(f"{name}={value!r} is not an integer") from None
    else:
      rest.append(a)
  return rest, found


def initialize_from_flags(flag_values: flags.FlagValues = flags.FLAGS
                          ) -> bool:
  """`initialize()` with the values of `define_flags()`'s flags."""
  return initialize(coordinator=flag_values.coordinator,
                    num_processes=flag_values.num_processes,
                    process_id=flag_values.process_id,
                    force=flag_values.distributed)


# ----------------------------------------------------------- initialisation --


def _env_int(name: str) -> int | None:
  value = os.environ.get(name)
  if value in (None, ""):
    return None
  try:
    return int(value)
  except ValueError:
    raise ValueError(f"environment variable {name}={value!r} is not an "
                     "integer") from None


def _env_bool(name: str) -> bool:
  return os.environ.get(name, "").lower() in ("1", "true", "yes")


def launcher_process_count() -> int | None:
  """Processes a cluster launcher started (SLURM, Open MPI), or None."""
  slurm = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS",
           "SLURM_PROCID", "SLURM_LOCALID")
  if all(v in os.environ for v in slurm):  # what JAX's detection needs
    return _env_int("SLURM_NTASKS")
  if "OMPI_MCA_orte_hnp_uri" in os.environ:
    return _env_int("OMPI_COMM_WORLD_SIZE")
  return None


def slurm_local_device_ids() -> list[int] | None:
  """All GPUs of the node when SLURM runs one task per node.

  JAX's SLURM detection gives each process only GPU number SLURM_LOCALID
  (one process per GPU). With one task per node that would leave 7 of 8
  GPUs idle, so the task takes every GPU the node grants it
  (`SLURM_GPUS_ON_NODE`); JAX_LOCAL_DEVICE_IDS overrides both.
  """
  if "JAX_LOCAL_DEVICE_IDS" in os.environ:
    return None
  per_node = os.environ.get("SLURM_NTASKS_PER_NODE",
                            os.environ.get("SLURM_TASKS_PER_NODE", ""))
  gpus = _env_int("SLURM_GPUS_ON_NODE")
  if per_node.split("(")[0] == "1" and gpus:
    return list(range(gpus))
  return None


def initialize(coordinator: str | None = None,
               num_processes: int | None = None,
               process_id: int | None = None, *,
               force: bool | None = None) -> bool:
  """Starts jax.distributed if this is one process of several.

  Args:
    coordinator: HOST:PORT of process 0 (default $JAX_COORDINATOR_ADDRESS).
    num_processes: number of processes (default $JAX_NUM_PROCESSES).
    process_id: this process's index (default $JAX_PROCESS_ID).
    force: initialise even without explicit values or a known launcher,
      with JAX's auto-detection (default $CGN_DISTRIBUTED).

  Returns:
    True when this is a multi-process run (now initialised), False on one
    process. Calling it again returns the same answer.

  Raises:
    ValueError: an incomplete or inconsistent explicit setting.
  """
  if jax.distributed.is_initialized():
    return jax.process_count() > 1
  coordinator = coordinator or os.environ.get("JAX_COORDINATOR_ADDRESS")
  num_processes = (num_processes if num_processes is not None
                   else _env_int("JAX_NUM_PROCESSES"))
  process_id = (process_id if process_id is not None
                else _env_int("JAX_PROCESS_ID"))
  force = _env_bool("CGN_DISTRIBUTED") if force is None else force
  explicit = (coordinator, num_processes, process_id)
  kwargs = {}
  if any(v is not None for v in explicit):
    if num_processes == 1:
      return False
    launched = launcher_process_count()
    if None in explicit and not launched and not force:
      missing = [n for n, v in zip(("--coordinator", "--num_processes",
                                    "--process_id"), explicit) if v is None]
      raise ValueError(
          f"multi-process run with {', '.join(missing)} unset: pass all of "
          "--coordinator=HOST:PORT (process 0's address, same on every "
          "process), --num_processes=N and --process_id=I, or launch with "
          "srun/mpirun")
    if num_processes is not None and process_id is not None and not (
        0 <= process_id < num_processes):
      raise ValueError(f"--process_id={process_id} is not in [0, "
                       f"--num_processes={num_processes})")
  elif not force:
    launched = launcher_process_count()
    if not launched or launched <= 1:
      return False
  if (ids := slurm_local_device_ids()) is not None:
    kwargs["local_device_ids"] = ids
  _use_cpu_collectives()
  jax.distributed.initialize(coordinator_address=coordinator,
                             num_processes=num_processes,
                             process_id=process_id, **kwargs)
  logging.info("process %d of %d: %d local of %d devices",
               jax.process_index(), jax.process_count(),
               jax.local_device_count(), jax.device_count())
  if jax.process_count() > 1:
    _install_failure_propagation()
  return jax.process_count() > 1


def _use_cpu_collectives() -> None:
  """Cross-process collectives on CPU go through gloo (JAX needs one)."""
  if jax.config.jax_cpu_collectives_implementation is None:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")


# --------------------------------------------------------- failure handling --


def _client():
  from jax._src import distributed as jax_distributed  # pylint: disable=g-import-not-at-top
  return jax_distributed.global_state.client


def _install_failure_propagation() -> None:
  """An uncaught error in any process stops every process, error shown.

  Without this, the other processes wait in their next collective until
  JAX's heartbeat timeout (minutes) and the run looks hung.
  """
  previous_hook = sys.excepthook

  def hook(exc_type, exc, tb):
    previous_hook(exc_type, exc, tb)
    if issubclass(exc_type, (SystemExit, KeyboardInterrupt)):
      return
    last = "".join(traceback.format_exception_only(exc_type, exc)).strip()
    report_failure(f"process {jax.process_index()} failed: {last}")

  sys.excepthook = hook
  stop = threading.Event()
  thread = threading.Thread(target=_watch, args=(stop,), daemon=True,
                            name="cgn_jax-failure-watch")
  thread.start()
  _watcher.update(stop=stop, thread=thread)
  # atexit runs last-registered first: this stops the watcher before JAX's
  # own atexit shuts the distributed client down.
  import atexit  # pylint: disable=g-import-not-at-top
  atexit.register(_stop_watcher)


def report_failure(message: str) -> None:
  """Publishes `message` to every process and exits this one (status 1)."""
  _stop_watcher()
  try:
    client = _client()
    if client is not None:
      client.key_value_set(_ERROR_KEY, message)
  except Exception:  # pylint: disable=broad-except
    pass  # another process already reported: exiting is what matters
  sys.stdout.flush()
  sys.stderr.flush()
  # No interpreter shutdown: JAX's shutdown barrier would wait for the
  # processes that are stuck in a collective with this one.
  os._exit(1)  # pylint: disable=protected-access


def _watch(stop: threading.Event) -> None:
  while not stop.wait(_POLL_S):
    client = _client()
    if client is None:
      return
    try:
      message = client.key_value_try_get(_ERROR_KEY)
    except Exception:  # pylint: disable=broad-except
      continue  # not set yet
    logging.error("%s; stopping process %d", message, jax.process_index())
    print(f"{message}; stopping process {jax.process_index()}",
          file=sys.stderr, flush=True)
    os._exit(1)  # pylint: disable=protected-access


def _stop_watcher() -> None:
  stop, thread = _watcher.pop("stop", None), _watcher.pop("thread", None)
  if stop is not None:
    stop.set()
    if thread is not threading.current_thread():
      thread.join(timeout=5 * _POLL_S)


# ------------------------------------------------------------ process roles --


def is_multi_process() -> bool:
  """True after `initialize` joined several processes (starts no backend)."""
  return jax.distributed.is_initialized() and jax.process_count() > 1


def process_index() -> int:
  return jax.process_index()


def is_main_process() -> bool:
  """True on process 0: the one that writes logs, sheets and results."""
  return jax.process_index() == 0


def sync(name: str) -> None:
  """Waits until every process reaches the barrier `name` (no-op alone)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices(name)


def any_process(flag: bool) -> bool:
  """Whether `flag` is True on any process (a collective: all must call)."""
  if jax.process_count() == 1:
    return bool(flag)
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  flags_ = multihost_utils.process_allgather(np.asarray([flag], np.int32))
  return bool(np.any(flags_))


# --------------------------------------------------------------------- data --


def data_mesh(devices=None) -> jax.sharding.Mesh:
  """A one-axis 'data' mesh over all devices, process-major.

  Devices are ordered by (process, id), so process p's devices hold one
  contiguous block of rows of every batch sharded over 'data', and that
  block is rows [p*b, (p+1)*b) (b = global batch / processes) when every
  process has the same number of devices. `process_rows` relies on it.
  """
  devices = jax.devices() if devices is None else devices
  devices = sorted(devices, key=lambda d: (d.process_index, d.id))
  return jax.sharding.Mesh(np.array(devices), ("data",),
                           axis_types=(jax.sharding.AxisType.Auto,))


def process_rows(global_size: int, process_index: int | None = None,
                 process_count: int | None = None) -> slice:
  """The rows of a global batch that process `process_index` reads.

  Args:
    global_size: rows of the global batch (all processes together).
    process_index: default jax.process_index().
    process_count: default jax.process_count().

  Returns:
    slice(p*b, (p+1)*b) with b = global_size / process_count.

  Raises:
    ValueError: the global batch does not split evenly over processes.
  """
  p = jax.process_index() if process_index is None else process_index
  n = jax.process_count() if process_count is None else process_count
  if global_size % n:
    raise ValueError(f"global batch size {global_size} is not divisible by "
                     f"the {n} processes; use a multiple of {n}")
  b = global_size // n
  return slice(p * b, (p + 1) * b)


def global_batch(local_batch, sharding: jax.sharding.Sharding):
  """Process-local numpy rows -> global jax.Arrays with `sharding`.

  Each process passes its own rows (`process_rows`) of the global batch;
  the result is one array of the global shape, split over every device of
  every process. On one process this is a device_put.

  Args:
    local_batch: a pytree of numpy arrays, this process's rows.
    sharding: e.g. NamedSharding(data_mesh(), P('data')) (or P(None,
      'data') for [k, B, ...] stacks of batches).
  """
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding,
                                                       np.asarray(x)),
      local_batch)


def replicate(tree, mesh: jax.sharding.Mesh):
  """Puts every leaf on every device of `mesh`, across processes.

  Use it instead of `jax.device_put(tree, NamedSharding(mesh, P()))`: with
  several processes (jax 0.10), device_put of a process-local jax.Array to
  a sharding that spans processes either fails (committed arrays) or builds
  an array orbax cannot save (uncommitted ones). Leaves go through host
  memory instead; leaves already replicated on `mesh` are kept as they are.
  Every process must pass the same values (e.g. the same seed's init). On
  one process this is that device_put.
  """
  sharding = jax.sharding.NamedSharding(mesh, P())
  if jax.process_count() == 1:
    return jax.device_put(tree, sharding)
  leaves, treedef = jax.tree.flatten(tree)
  todo = [i for i, x in enumerate(leaves)
          if not (isinstance(x, jax.Array) and not x.is_fully_addressable
                  and x.sharding.is_equivalent_to(sharding, x.ndim))]
  if todo:
    # One jitted identity for all leaves: per-leaf device_puts to a
    # cross-process sharding cost a compile and a sync each (~0.1 s).
    moved = jax.jit(lambda xs: xs, out_shardings=sharding)(
        [np.asarray(leaves[i]) for i in todo])
    for i, x in zip(todo, moved):
      leaves[i] = x
  return jax.tree.unflatten(treedef, leaves)


def gather_rows(tree):
  """Process-local numpy rows -> the rows of every process, on every process.

  The inverse of `process_rows` for small host arrays (labels, masks):
  each leaf becomes the concatenation, in process order, of every process's
  leaf (a collective: all must call it with the same shapes). On one
  process the tree is returned as it is.
  """
  if jax.process_count() == 1:
    return tree
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

  def gather(x):
    x = np.asarray(x)
    wire = x.astype(np.int32) if x.dtype == bool else x
    out = np.asarray(multihost_utils.process_allgather(wire, tiled=True))
    return out.astype(x.dtype)
  return jax.tree.map(gather, tree)


def to_host(tree):
  """A replicated or sharded global pytree as numpy on every process.

  For values every process needs whole (e.g. test-set predictions): arrays
  that are fully addressable are fetched directly, others are gathered
  across processes first.
  """
  def fetch(x):
    if not isinstance(x, jax.Array) or x.is_fully_addressable:
      return np.asarray(jax.device_get(x))
    if x.sharding.is_fully_replicated:
      return np.asarray(x.addressable_data(0))
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return jax.tree.map(fetch, tree)
