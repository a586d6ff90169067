"""XLA:CPU and allocator defaults (cgn_jax/platform.py)."""

import os
import subprocess
import sys

import pytest

from cgn_jax import platform

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _python(code: str, drop: str, **extra) -> str:
  """stdout of `code` in a fresh CPU-only interpreter at the project root,
  without the environment variables starting with `drop`, plus `extra`."""
  env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
  return subprocess.run([sys.executable, "-c", code], check=True,
                        capture_output=True, text=True, cwd=_ROOT,
                        env={**env, "JAX_PLATFORMS": "cpu", **extra}).stdout

FLAG = "--xla_cpu_experimental_ynn_fusion_type="


def test_flags_are_in_effect_for_this_process():
  # cgn_jax is imported before any backend exists (conftest, collection).
  if platform.applicable():
    assert FLAG in os.environ["XLA_FLAGS"]
  assert platform.apply_cpu_defaults(dict(os.environ)) == []


_CONV_HLO = """
import cgn_jax, jax
conv = jax.jit(lambda x, w: jax.lax.conv_general_dilated(
    x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")))
print(conv.lower(jax.ShapeDtypeStruct((16, 32, 32, 64), "float32"),
                 jax.ShapeDtypeStruct((3, 3, 64, 64), "float32"))
      .compile().as_text())
"""


def test_cpu_convolutions_are_not_handed_to_ynnpack():
  """XLA really reads the flag: with it a conv compiles without a YNN
  fusion, with the opt-out (XLA's default) it compiles into one."""
  if not platform.applicable():
    pytest.skip("opted out, or a jaxlib the flag is not verified on")
  ours = _python(_CONV_HLO, "XLA_FLAGS")
  assert "convolution" in ours and "__ynn_fusion" not in ours
  assert "__ynn_fusion" in _python(_CONV_HLO, "XLA_FLAGS",
                                   CGN_JAX_XLA_CPU_DEFAULTS="0")


def test_appends_to_existing_flags_once(monkeypatch):
  monkeypatch.setattr(platform, "_jaxlib_version", lambda: (0, 10))
  env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
  added = platform.apply_cpu_defaults(env)
  assert added and env["XLA_FLAGS"].startswith(
      "--xla_force_host_platform_device_count=2 " + FLAG)
  assert platform.apply_cpu_defaults(env) == []  # idempotent


def test_user_setting_wins(monkeypatch):
  monkeypatch.setattr(platform, "_jaxlib_version", lambda: (0, 10))
  env = {"XLA_FLAGS": FLAG + "-dot"}
  assert platform.apply_cpu_defaults(env) == []
  assert env["XLA_FLAGS"] == FLAG + "-dot"


def test_opt_out_and_unverified_jaxlib_add_nothing(monkeypatch):
  monkeypatch.setattr(platform, "_jaxlib_version", lambda: (0, 10))
  env = {"CGN_JAX_XLA_CPU_DEFAULTS": "0"}
  assert platform.apply_cpu_defaults(env) == [] and "XLA_FLAGS" not in env
  # XLA aborts on flags it does not know: only verified versions get them.
  monkeypatch.setattr(platform, "_jaxlib_version", lambda: (0, 9))
  env = {}
  assert platform.apply_cpu_defaults(env) == [] and "XLA_FLAGS" not in env


_FAULTS = """
import resource
import cgn_jax, jax
from benchmarks import bench_mnist_cf
run = bench_mnist_cf._classifier_setup(64, 1)()   # one classifier step
for _ in range(5):
  jax.block_until_ready(run())
per_step = []
for _ in range(5):
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  jax.block_until_ready(run())
  per_step.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(min(per_step))
"""


def test_classifier_step_runs_without_page_faults():
  """With glibc's defaults every classifier step faults ~10k pages (its
  buffers are unmapped after each step); with ours it reuses them. The
  fewest faults of five steps is compared: the kernel may still reclaim
  some retained pages in between (a CI run once saw a 4k-fault mean with
  ours), but a step that reuses its buffers faults none."""
  if platform._glibc() is None:
    pytest.skip("not Linux with glibc")

  def faults(**extra):
    return float(_python(_FAULTS, "MALLOC_", **extra).split()[-1])

  ours, glibc = faults(), faults(CGN_JAX_MALLOC_DEFAULTS="0")
  assert glibc > 8_000 and ours < glibc / 4, (ours, glibc)


def test_malloc_options_respect_the_environment():
  if platform._glibc() is None:
    pytest.skip("not Linux with glibc")
  assert platform.keep_freed_memory({"CGN_JAX_MALLOC_DEFAULTS": "0"}) == []
  # Re-applying the values already in effect is harmless; a variable the
  # user set is left to glibc.
  applied = platform.keep_freed_memory({"MALLOC_ARENA_MAX": "4"})
  assert "MALLOC_ARENA_MAX" not in applied
  assert set(applied) == {"MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_",
                          "MALLOC_TOP_PAD_"}
