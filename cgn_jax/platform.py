"""XLA:CPU defaults under which this package's models are fast on CPUs.

In jaxlib 0.10, XLA:CPU hands convolutions, dots and some elementwise
fusions to YNNPACK. On the 2-core CI machine those YNNPACK kernels use about
one core where XLA's own (Eigen) kernels use both, so turning them off
makes the MNIST CGN step 1.2-1.4x and the classifier step ~2x faster
(`benchmarks/`, README "Benchmarks"). The flag only affects the CPU
compiler; GPU and TPU programs are unchanged.

`apply_cpu_defaults()` runs when `cgn_jax` is imported, before any JAX
backend exists (XLA reads XLA_FLAGS once, when it creates the CPU client).
It adds a flag only when XLA_FLAGS does not already set it, and only for the
jaxlib versions it was verified on: XLA aborts on flags it does not know.
Set CGN_JAX_XLA_CPU_DEFAULTS=0 to keep XLA's own defaults.

`keep_freed_memory()`, also run at import, tunes glibc's allocator. XLA:CPU
allocates a step's temporary and output buffers afresh on every call. With
glibc's defaults, large blocks are mmap'ed and unmapped again, and worker
threads' arenas drop their empty heaps, so every step faults its buffers
back in page by page: 10k page faults (40 MB zeroed by the kernel) per
classifier step, 34k per wildlife CGN step; the classifier step went from
~85 to ~65 ms without them. One arena that keeps what is freed makes both
steps fault-free. The cost: the process does not hand freed memory back
to the system (its resident size stays at its peak). Only on Linux with
glibc; variables the user set (MALLOC_ARENA_MAX, ...) win. Set
CGN_JAX_MALLOC_DEFAULTS=0 to keep glibc's defaults.
"""

import ctypes
import ctypes.util
from importlib import metadata
import os
import sys

# XLA's defaults minus every YNNPACK fusion type ('-' removes one).
CPU_FLAGS = {
    "xla_cpu_experimental_ynn_fusion_type":
        "-individual_convolution,-individual_dot,-eltwise,-reduce,-dot",
}
VERIFIED_JAXLIB = ((0, 10), (0, 11))  # [low, high): major.minor


def _jaxlib_version() -> tuple[int, ...] | None:
  try:
    return tuple(int(p) for p in metadata.version("jaxlib").split(".")[:2])
  except (metadata.PackageNotFoundError, ValueError):
    return None


def applicable(environ=os.environ) -> bool:
  """Not opted out, and a jaxlib whose XLA knows CPU_FLAGS."""
  if environ.get("CGN_JAX_XLA_CPU_DEFAULTS", "1") == "0":
    return False
  version = _jaxlib_version()
  return version is not None and (
      VERIFIED_JAXLIB[0] <= version < VERIFIED_JAXLIB[1])


def apply_cpu_defaults(environ=os.environ) -> list[str]:
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
  if environ.get("CGN_JAX_MALLOC_DEFAULTS", "1") == "0":
    return []
  libc = _glibc()
  if libc is None:
    return []
  applied = []
  for param, value, env_name in MALLOC_OPTIONS:
    if env_name not in environ and libc.mallopt(param, value) == 1:
      applied.append(env_name)
  return applied
