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
"""

from importlib import metadata
import os

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
