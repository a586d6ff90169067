"""Opt-in XLA:CPU and allocator defaults under which our models are fast.

Nothing here runs at import: `import cgn_jax` changes no environment
variable and no allocator setting. The entry points (train.py, generate.py,
`python -m benchmarks`, `python -m cgn_jax.experiments.mnist_table`) call
`apply_cpu_defaults()` once, through `cgn_jax.cli`, before anything
initialises a JAX backend. Library users who want the same speed call it
themselves, first thing in their program.

What it sets, and why:

* XLA flags. In jaxlib 0.10, XLA:CPU hands convolutions, dots and some
  elementwise fusions to YNNPACK. On the 2-core CI machine those YNNPACK
  kernels use about one core where XLA's own (Eigen) kernels use both, so
  turning them off makes the MNIST CGN step 1.2-1.4x and the classifier step
  ~2x faster (`benchmarks/`, README "Benchmarks"). XLA reads XLA_FLAGS once,
  when it creates the CPU client, so this must happen before the backend
  exists. A flag is added only when XLA_FLAGS does not already set it, and
  only for the jaxlib versions it was verified on (XLA aborts on flags it
  does not know).
* glibc's allocator (`keep_freed_memory`). XLA:CPU allocates a step's
  temporary and output buffers afresh on every call. With glibc's defaults,
  large blocks are mmap'ed and unmapped again, and worker threads' arenas
  drop their empty heaps, so every step faults its buffers back in page by
  page: 10k page faults (40 MB zeroed by the kernel) per classifier step,
  34k per wildlife CGN step; the classifier step went from ~85 to ~65 ms
  without them. One arena that keeps what is freed makes both steps
  fault-free. The cost: the process does not hand freed memory back to the
  system (its resident size stays at its peak). Only on Linux with glibc;
  variables the user set (MALLOC_ARENA_MAX, ...) win.

When (the rule of `will_use_cpu`, decided without initialising a backend):
the run uses the CPU backend when JAX_PLATFORMS (or `jax.config.
jax_platforms`, if set in code) names 'cpu' first; when it names another
platform first, it does not. When neither is set, JAX picks the best
backend available: any installed accelerator plugin (jax_cuda*/jax_rocm*
plugins, libtpu, a `jax_plugins` entry) counts as "not CPU", so a GPU or TPU
host never gets the CPU tuning by accident; otherwise it is CPU.

Turning it off: CGN_JAX_CPU_DEFAULTS=0 (both), CGN_JAX_XLA_CPU_DEFAULTS=0
(flags only), CGN_JAX_MALLOC_DEFAULTS=0 (allocator only), or the entry
points' `--no-cpu-defaults`. What was applied is logged and kept in
`APPLIED`.
"""

import ctypes
import ctypes.util
import importlib.util
from importlib import metadata
import os
import sys

from absl import logging

# XLA's defaults minus every YNNPACK fusion type ('-' removes one).
CPU_FLAGS = {
    "xla_cpu_experimental_ynn_fusion_type":
        "-individual_convolution,-individual_dot,-eltwise,-reduce,-dot",
}
VERIFIED_JAXLIB = ((0, 10), (0, 11))  # [low, high): major.minor

# Modules whose presence means JAX would pick an accelerator by default.
ACCELERATOR_PLUGINS = ("jax_cuda12_plugin", "jax_cuda13_plugin",
                       "jax_rocm60_plugin", "jax_rocm7_plugin", "libtpu",
                       "jax_plugins")

# What `apply_cpu_defaults` did in this process (empty: nothing yet).
APPLIED: dict = {}


def _jaxlib_version() -> tuple[int, ...] | None:
  try:
    return tuple(int(p) for p in metadata.version("jaxlib").split(".")[:2])
  except (metadata.PackageNotFoundError, ValueError):
    return None


def _off(environ, name: str) -> bool:
  return environ.get(name, "1") == "0"


def applicable(environ=os.environ) -> bool:
  """Flags not opted out, and a jaxlib whose XLA knows CPU_FLAGS."""
  if _off(environ, "CGN_JAX_CPU_DEFAULTS") or _off(
      environ, "CGN_JAX_XLA_CPU_DEFAULTS"):
    return False
  version = _jaxlib_version()
  return version is not None and (
      VERIFIED_JAXLIB[0] <= version < VERIFIED_JAXLIB[1])


def _configured_platforms(environ) -> str:
  """JAX_PLATFORMS, or jax.config.jax_platforms when jax set it in code."""
  jax = sys.modules.get("jax")
  if jax is not None:
    try:
      value = jax.config.jax_platforms
    except AttributeError:
      value = None
    if value:
      return str(value)
  return environ.get("JAX_PLATFORMS", "")


def will_use_cpu(environ=os.environ) -> bool:
  """Whether JAX's default backend will be the CPU (see the module doc).

  Looks only at configuration and at which plugins are importable: it never
  initialises a backend (which would freeze XLA_FLAGS).
  """
  platforms = [p.strip().lower()
               for p in _configured_platforms(environ).split(",") if p.strip()]
  if platforms:
    return platforms[0] == "cpu"
  for name in ACCELERATOR_PLUGINS:
    try:
      if importlib.util.find_spec(name) is not None:
        return False
    except (ImportError, ValueError):
      continue
  return True


def backend_initialized() -> bool:
  """Whether a JAX backend already exists (then XLA_FLAGS are read)."""
  if "jax" not in sys.modules:
    return False
  from jax._src import xla_bridge  # pylint: disable=g-import-not-at-top
  return xla_bridge.backends_are_initialized()


def add_cpu_flags(environ=os.environ) -> list[str]:
  """Appends CPU_FLAGS missing from XLA_FLAGS; returns the flags added."""
  if not applicable(environ):
    return []
  current = environ.get("XLA_FLAGS", "")
  added = [f"--{name}={value}" for name, value in CPU_FLAGS.items()
           if f"--{name}=" not in current]
  if added:
    environ["XLA_FLAGS"] = " ".join([current, *added]).strip()
  return added


# mallopt parameters (malloc.h) and the environment variable that sets each.
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -2, -3, -8
MALLOC_OPTIONS = (
    (_M_ARENA_MAX, 1, "MALLOC_ARENA_MAX"),
    (_M_MMAP_THRESHOLD, 1 << 30, "MALLOC_MMAP_THRESHOLD_"),
    (_M_TRIM_THRESHOLD, (1 << 31) - 1, "MALLOC_TRIM_THRESHOLD_"),
    (_M_TOP_PAD, 64 << 20, "MALLOC_TOP_PAD_"),
)


def _glibc():
  if not sys.platform.startswith("linux"):
    return None
  try:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    libc.gnu_get_libc_version  # pylint: disable=pointless-statement
  except (OSError, AttributeError):  # not glibc (e.g. musl)
    return None
  return libc


def keep_freed_memory(environ=os.environ) -> list[str]:
  """Applies MALLOC_OPTIONS not set in the environment; returns their names.

  Best before the JAX backend starts its threads (arenas already handed to
  threads stay theirs).
  """
  if _off(environ, "CGN_JAX_CPU_DEFAULTS") or _off(
      environ, "CGN_JAX_MALLOC_DEFAULTS"):
    return []
  libc = _glibc()
  if libc is None:
    return []
  applied = []
  for param, value, env_name in MALLOC_OPTIONS:
    if env_name not in environ and libc.mallopt(param, value) == 1:
      applied.append(env_name)
  return applied


def apply_cpu_defaults(environ=os.environ, *, enabled: bool = True) -> dict:
  """The entry points' CPU tuning: XLA flags and allocator, if on CPU.

  Call once, first thing, before any JAX computation. Does nothing (and
  says why in the log) when `enabled` is False, an opt-out variable is 0,
  the run will not use the CPU backend (`will_use_cpu`), or a backend
  already exists (too late for XLA_FLAGS).

  Args:
    environ: the environment to read and extend (os.environ).
    enabled: False for the entry points' `--no-cpu-defaults`.

  Returns:
    {'xla_flags': [flags added], 'malloc': [options set]} ({} when skipped);
    also stored in `APPLIED`.
  """
  if not enabled:
    logging.info("CPU defaults off (--no-cpu-defaults)")
    return {}
  if not will_use_cpu(environ):
    logging.info("CPU defaults not applied: JAX will use an accelerator "
                 "(JAX_PLATFORMS=%r)", _configured_platforms(environ))
    return {}
  if backend_initialized():
    logging.warning("CPU defaults not applied: a JAX backend already "
                    "exists, call apply_cpu_defaults() before any JAX work")
    return {}
  done = {"xla_flags": add_cpu_flags(environ),
          "malloc": keep_freed_memory(environ)}
  if any(done.values()):
    logging.info("%s", summary(done))
  APPLIED.update(done)
  return done


def summary(done: dict) -> str:
  """One line saying what `apply_cpu_defaults` applied."""
  return ("CPU defaults applied (off: CGN_JAX_CPU_DEFAULTS=0 or "
          f"--no-cpu-defaults): XLA_FLAGS += "
          f"{' '.join(done.get('xla_flags', [])) or '-'}; malloc: "
          f"{', '.join(done.get('malloc', [])) or '-'}")
