"""The benchmark harness: warm up (compile), block until ready, time repeats.

A benchmark's `setup()` builds everything it needs (models, data on device,
jitted functions) and returns a zero-argument `step` whose result is blocked
on. The first call is timed alone as compilation; the next `repeats` calls
are timed one by one and summarised as median, min and max.
"""

import dataclasses
import importlib
import os
import pkgutil
import statistics
import time
from typing import Any, Callable

import jax


@dataclasses.dataclass(frozen=True)
class Benchmark:
  """One named measurement.

  Attributes:
    name: 'group/variant', e.g. 'mnist_variants/wildlife'.
    setup: builds the state and returns `step`, a function of no arguments
      that runs `iters_per_call` iterations and returns arrays to block on.
    batch: images per iteration.
    iters_per_call: iterations one `step()` performs (e.g. a scan of steps).
    repeats: timed calls after the warm-up.
    extra: anything else worth recording (dtype, config name, ...).
  """
  name: str
  setup: Callable[[], Callable[[], Any]]
  batch: int
  iters_per_call: int = 1
  repeats: int = 10
  extra: dict = dataclasses.field(default_factory=dict)


def discover() -> list[Benchmark]:
  """All benchmarks of every `benchmarks/bench_*.py` module, in name order."""
  import benchmarks  # pylint: disable=g-import-not-at-top
  found = []
  for info in pkgutil.iter_modules(benchmarks.__path__):
    if info.name.startswith("bench_"):
      module = importlib.import_module(f"benchmarks.{info.name}")
      found.extend(module.BENCHMARKS)
  names = [b.name for b in found]
  dupes = {n for n in names if names.count(n) > 1}
  if dupes:
    raise ValueError(f"duplicate benchmark names: {sorted(dupes)}")
  return sorted(found, key=lambda b: b.name)


def select(all_benchmarks, patterns) -> list[Benchmark]:
  """Benchmarks named by `patterns`, in name order.

  A pattern that is a benchmark's full name selects that benchmark only
  (`cgn_mnist_epoch/wildlife` is not also `.../wildlife/scan100`); any other
  pattern selects the group of names that start with `pattern/`.
  """
  if not patterns:
    return list(all_benchmarks)
  names = {b.name for b in all_benchmarks}

  def wanted(name):
    return any(name == p if p in names else
               name.startswith(p.rstrip("/") + "/") for p in patterns)
  chosen = [b for b in all_benchmarks if wanted(b.name)]
  if not chosen:
    raise ValueError(f"no benchmark matches {patterns}; see --list")
  return chosen


def run(bench: Benchmark, repeats: int | None = None) -> dict:
  """Runs one benchmark and returns its JSON record."""
  repeats = bench.repeats if repeats is None else repeats
  t0 = time.perf_counter()
  step = bench.setup()
  setup_s = time.perf_counter() - t0
  t0 = time.perf_counter()
  jax.block_until_ready(step())
  compile_s = time.perf_counter() - t0  # first call: trace + compile + run
  times, cpu = [], []
  for _ in range(repeats):
    t0, c0 = time.perf_counter(), time.process_time()
    jax.block_until_ready(step())
    times.append(time.perf_counter() - t0)
    cpu.append(time.process_time() - c0)
  median = statistics.median(times)
  device = jax.devices()[0]
  return {
      "name": bench.name,
      "backend": jax.default_backend(),
      "device": getattr(device, "device_kind", str(device)),
      "num_devices": jax.device_count(),
      "batch": bench.batch,
      "iters_per_call": bench.iters_per_call,
      "repeats": repeats,
      "setup_s": setup_s,
      "compile_s": compile_s,
      "median_s": median / bench.iters_per_call,
      "min_s": min(times) / bench.iters_per_call,
      "max_s": max(times) / bench.iters_per_call,
      # CPU seconds of all this process's threads per iteration: on a shared
      # machine the wall time also counts waits for a core (the PyTorch
      # baselines report the same field).
      "median_cpu_s": statistics.median(cpu) / bench.iters_per_call,
      "it_per_s": bench.iters_per_call / median,
      "img_per_s": bench.iters_per_call * bench.batch / median,
      "jax_version": jax.__version__,
      "xla_flags": os.environ.get("XLA_FLAGS", ""),
      **bench.extra,
  }
