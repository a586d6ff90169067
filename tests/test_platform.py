"""XLA:CPU and allocator defaults (cgn_jax/platform.py): explicit, opt-in."""

import json
import os
import subprocess
import sys

import pytest

from cgn_jax import platform

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _python(code: str, drop: str = "\0", **extra) -> str:
  """stdout of `code` in a fresh CPU-only interpreter at the project root,
  without the environment variables starting with `drop`, plus `extra`."""
  env = {k: v for k, v in os.environ.items()
         if not k.startswith(drop) and not k.startswith("CGN_JAX_")}
  return subprocess.run([sys.executable, "-c", code], check=True,
                        capture_output=True, text=True, cwd=_ROOT,
                        env={**env, "JAX_PLATFORMS": "cpu", **extra}).stdout

FLAG = "--xla_cpu_experimental_ynn_fusion_type="

# Whether a 64 MiB malloc is served by mmap: glibc marks such chunks with
# the IS_MMAPPED bit (2) in the size word before the pointer. With glibc's
# defaults the mmap threshold never exceeds 32 MiB, so it is mmapped; with
# `keep_freed_memory` (threshold 1 GiB) it comes from the heap.
_MMAPPED = """
import ctypes
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
def big_block_is_mmapped():
  p = libc.malloc(64 << 20)
  size_word = p - ctypes.sizeof(ctypes.c_size_t)
  bit = ctypes.c_size_t.from_address(size_word).value & 2
  libc.free(ctypes.c_void_p(p))
  return bool(bit)
"""

_IMPORT_CHANGES_NOTHING = _MMAPPED + """
import json, os
import jax, grain, orbax.checkpoint  # their own import-time settings (jax
# sets TF_CPP_MIN_LOG_LEVEL, TPU_SKIP_MDS_QUERY) are not ours to test
before = dict(os.environ)
import cgn_jax, cgn_jax.platform, cgn_jax.cli, cgn_jax.weights
import cgn_jax.models.cgn, cgn_jax.data.shards, cgn_jax.counterfactuals.mnist
import cgn_jax.train.common, cgn_jax.train.cgn_mnist
import cgn_jax.train.classifier_mnist, cgn_jax.experiments.mnist_table
after = dict(os.environ)
untouched = big_block_is_mmapped()
assert cgn_jax.platform.APPLIED == {}
applied = cgn_jax.platform.apply_cpu_defaults()
print(json.dumps({"env_same": before == after,
                  "xla_flags": after.get("XLA_FLAGS"),
                  "mmapped_after_import": untouched,
                  "applied": applied,
                  "mmapped_after_apply": big_block_is_mmapped(),
                  "xla_flags_after_apply": os.environ.get("XLA_FLAGS")}))
"""


@pytest.mark.skipif(platform._glibc() is None, reason="not Linux with glibc")
def test_importing_the_library_changes_nothing_global():
  out = json.loads(_python(_IMPORT_CHANGES_NOTHING, "XLA_FLAGS").split(
      "\n")[-2])
  assert out["env_same"] and out["xla_flags"] is None, out
  assert out["mmapped_after_import"], out  # glibc's threshold is in force
  # Positive control: the side channel sees the explicit call.
  assert "MALLOC_MMAP_THRESHOLD_" in out["applied"]["malloc"], out
  assert not out["mmapped_after_apply"], out
  if platform.applicable({}):
    assert FLAG in out["xla_flags_after_apply"], out


def test_will_use_cpu_rule(monkeypatch):
  monkeypatch.delitem(sys.modules, "jax", raising=False)  # env only
  assert platform.will_use_cpu({"JAX_PLATFORMS": "cpu"})
  assert platform.will_use_cpu({"JAX_PLATFORMS": "cpu,cuda"})
  assert not platform.will_use_cpu({"JAX_PLATFORMS": "cuda,cpu"})
  assert not platform.will_use_cpu({"JAX_PLATFORMS": "tpu"})
  # Unset: an importable accelerator plugin means "not CPU".
  monkeypatch.setattr(platform, "ACCELERATOR_PLUGINS", ("json",))
  assert not platform.will_use_cpu({})
  monkeypatch.setattr(platform, "ACCELERATOR_PLUGINS", ("no_such_plugin_x",))
  assert platform.will_use_cpu({})


def test_skipped_when_off_or_not_cpu(monkeypatch):
  monkeypatch.setattr(platform, "backend_initialized", lambda: False)
  env = {"JAX_PLATFORMS": "cpu"}
  assert platform.apply_cpu_defaults(env, enabled=False) == {} and env == {
      "JAX_PLATFORMS": "cpu"}
  env = {"JAX_PLATFORMS": "cuda"}
  monkeypatch.delitem(sys.modules, "jax", raising=False)
  assert platform.apply_cpu_defaults(env) == {} and "XLA_FLAGS" not in env
  monkeypatch.setattr(platform, "_jaxlib_version", lambda: (0, 10))
  env = {"JAX_PLATFORMS": "cpu", "CGN_JAX_CPU_DEFAULTS": "0"}
  assert platform.apply_cpu_defaults(env) == {"xla_flags": [], "malloc": []}
  assert "XLA_FLAGS" not in env


def test_too_late_once_a_backend_exists(monkeypatch):
  monkeypatch.setattr(platform, "backend_initialized", lambda: True)
  env = {"JAX_PLATFORMS": "cpu"}
  assert platform.apply_cpu_defaults(env) == {} and "XLA_FLAGS" not in env


_CONV_HLO = """
import sys
from cgn_jax import platform
if sys.argv[-1] == "apply":
  platform.apply_cpu_defaults()
import jax
conv = jax.jit(lambda x, w: jax.lax.conv_general_dilated(
    x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")))
print(conv.lower(jax.ShapeDtypeStruct((16, 32, 32, 64), "float32"),
                 jax.ShapeDtypeStruct((3, 3, 64, 64), "float32"))
      .compile().as_text())
"""


def _run(code, arg, **extra):
  env = {k: v for k, v in os.environ.items()
         if not k.startswith(("XLA_FLAGS", "CGN_JAX_"))}
  return subprocess.run([sys.executable, "-c", code, arg], check=True,
                        capture_output=True, text=True, cwd=_ROOT,
                        env={**env, "JAX_PLATFORMS": "cpu", **extra}).stdout


def test_cpu_convolutions_are_not_handed_to_ynnpack():
  """XLA really reads the flag: after the explicit call a conv compiles
  without a YNN fusion; without the call (XLA's default) into one."""
  if not platform.applicable({}):
    pytest.skip("a jaxlib the flag is not verified on")
  ours = _run(_CONV_HLO, "apply")
  assert "convolution" in ours and "__ynn_fusion" not in ours
  assert "__ynn_fusion" in _run(_CONV_HLO, "import-only")
  assert "__ynn_fusion" in _run(_CONV_HLO, "apply",
                                CGN_JAX_XLA_CPU_DEFAULTS="0")


def test_appends_to_existing_flags_once(monkeypatch):
  monkeypatch.setattr(platform, "_jaxlib_version", lambda: (0, 10))
  env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
  added = platform.add_cpu_flags(env)
  assert added and env["XLA_FLAGS"].startswith(
      "--xla_force_host_platform_device_count=2 " + FLAG)
  assert platform.add_cpu_flags(env) == []  # idempotent


def test_user_setting_wins(monkeypatch):
  monkeypatch.setattr(platform, "_jaxlib_version", lambda: (0, 10))
  env = {"XLA_FLAGS": FLAG + "-dot"}
  assert platform.add_cpu_flags(env) == []
  assert env["XLA_FLAGS"] == FLAG + "-dot"


def test_opt_out_and_unverified_jaxlib_add_nothing(monkeypatch):
  monkeypatch.setattr(platform, "_jaxlib_version", lambda: (0, 10))
  for off in ("CGN_JAX_XLA_CPU_DEFAULTS", "CGN_JAX_CPU_DEFAULTS"):
    env = {off: "0"}
    assert platform.add_cpu_flags(env) == [] and "XLA_FLAGS" not in env
  # XLA aborts on flags it does not know: only verified versions get them.
  monkeypatch.setattr(platform, "_jaxlib_version", lambda: (0, 9))
  env = {}
  assert platform.add_cpu_flags(env) == [] and "XLA_FLAGS" not in env


_FAULTS = """
import resource, sys
from cgn_jax import platform
platform.apply_cpu_defaults()
import jax
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
  assert platform.keep_freed_memory({"CGN_JAX_CPU_DEFAULTS": "0"}) == []
  # Re-applying the values already in effect is harmless; a variable the
  # user set is left to glibc.
  applied = platform.keep_freed_memory({"MALLOC_ARENA_MAX": "4"})
  assert "MALLOC_ARENA_MAX" not in applied
  assert set(applied) == {"MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_",
                          "MALLOC_TOP_PAD_"}
