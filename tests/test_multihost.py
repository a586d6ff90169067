"""Several real processes on localhost, joined by jax.distributed (CPU, gloo).

Each test launches 2 Python processes with `--coordinator/--num_processes/
--process_id` (1 or 2 CPU devices each) and compares them with one process
holding the same total number of devices, so the global batches, the mesh
and the partitioned program are the same and only the transport of the
all-reduce differs: results must agree bitwise (within 1e-6 where noted).
"""

import atexit
import json
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time

import numpy as np
import pytest

from cgn_jax import distributed

ROOT = pathlib.Path(__file__).resolve().parents[1]
TIMEOUT_S = 300
_CACHE_DIR = pathlib.Path(tempfile.mkdtemp(prefix="cgn_multihost_jit_"))
atexit.register(shutil.rmtree, _CACHE_DIR, ignore_errors=True)


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def child_env(devices: int) -> dict:
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             # Reruns of one topology (a restart) reuse compiled programs.
             JAX_COMPILATION_CACHE_DIR=str(_CACHE_DIR),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
             XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
             JAX_DISABLE_MOST_OPTIMIZATIONS="1",
             PYTHONPATH=os.pathsep.join(
                 [str(ROOT)] + [p for p in os.environ.get(
                     "PYTHONPATH", "").split(os.pathsep) if p]),
             PYTHONUNBUFFERED="1")
  for name in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES",
               "JAX_PROCESS_ID", "CGN_DISTRIBUTED"):
    env.pop(name, None)
  return env


def _children_cpu_s() -> float:
  t = os.times()
  return t.children_user + t.children_system


def launch(argv: list[str], processes: int, devices: int,
           timeout: float = TIMEOUT_S) -> list[subprocess.CompletedProcess]:
  """Runs `python ARGV --coordinator=... --process_id=I` in `processes` copies.

  With processes=1 no distributed flag is passed (a plain run).

  Returns:
    One CompletedProcess per process (stdout/stderr captured), in order.
  """
  port = free_port()
  procs = []
  for i in range(processes):
    extra = ([f"--coordinator=localhost:{port}",
              f"--num_processes={processes}", f"--process_id={i}"]
             if processes > 1 else [])
    procs.append(subprocess.Popen(
        [sys.executable, *argv, *extra], cwd=ROOT, env=child_env(devices),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
  start, cpu0 = time.time(), _children_cpu_s()
  deadline = start + timeout
  results = []
  try:
    for p in procs:
      out, err = p.communicate(timeout=max(deadline - time.time(), 1))
      results.append(subprocess.CompletedProcess(p.args, p.returncode, out,
                                                 err))
    print(f"{processes} x {devices} devices: {time.time() - start:.1f} s "
          f"wall, {_children_cpu_s() - cpu0:.1f} s CPU: {argv[-1]}")
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
  return results


def check_ok(results) -> None:
  for i, r in enumerate(results):
    assert r.returncode == 0, (f"process {i} of {r.args[2:]} exited "
                               f"{r.returncode}:\n"
                               f"{r.stderr[-4000:]}")


def last_json(result) -> dict:
  return json.loads(result.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------- plain SGD run --

_SGD = textwrap.dedent("""
    import json, sys
    from absl import app, flags
    import jax, jax.numpy as jnp, numpy as np
    from cgn_jax import distributed
    distributed.define_flags()

    def main(argv):
      multi = distributed.initialize_from_flags()
      assert multi == (jax.process_count() > 1)
      mesh = distributed.data_mesh()
      rows = jax.sharding.NamedSharding(mesh, distributed.P("data"))
      rep = jax.sharding.NamedSharding(mesh, distributed.P())
      rng = np.random.default_rng(0)
      x_all = rng.normal(size=(6, 16, 5)).astype(np.float32)  # 6 batches
      y_all = rng.normal(size=(6, 16)).astype(np.float32)
      w = jax.device_put(jnp.zeros(5, jnp.float32), rep)

      @jax.jit
      def step(w, x, y):
        g = jax.grad(lambda w: jnp.mean((x @ w - y) ** 2))(w)
        return w - 0.1 * g

      seen = []
      for x, y in zip(x_all, y_all):
        mine = distributed.process_rows(len(x))
        seen.append([int(v) for v in np.arange(16)[mine]])
        batch = distributed.global_batch({"x": x[mine], "y": y[mine]}, rows)
        assert batch["x"].shape == (16, 5)
        w = step(w, batch["x"], batch["y"])
      print(json.dumps({"w": distributed.to_host(w).tolist(),
                        "main": distributed.is_main_process(),
                        "process": jax.process_index(),
                        "devices": jax.device_count(), "rows": seen[0]}))

    app.run(main)
""")


@pytest.fixture(scope="module")
def sgd_script(tmp_path_factory):
  path = tmp_path_factory.mktemp("sgd") / "sgd.py"
  path.write_text(_SGD)
  return str(path)


@pytest.mark.parametrize("devices_per_process", [1, 2])
def test_data_parallel_sgd_matches_one_process(sgd_script,
                                               devices_per_process):
  total = 2 * devices_per_process
  (single,) = launch([sgd_script], 1, total)
  check_ok([single])
  multi = launch([sgd_script], 2, devices_per_process)
  check_ok(multi)
  ref = last_json(single)
  outs = [last_json(r) for r in multi]
  assert ref["devices"] == total and all(o["devices"] == total for o in outs)
  assert [o["main"] for o in outs] == [True, False]
  # The two processes read disjoint halves of each global batch.
  assert outs[0]["rows"] == list(range(8))
  assert outs[1]["rows"] == list(range(8, 16))
  for o in outs:
    np.testing.assert_allclose(o["w"], ref["w"], rtol=0, atol=1e-6)


# ------------------------------------------------------- initialise helper --


def test_initialize_does_nothing_on_one_process(monkeypatch):
  for name in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES",
               "JAX_PROCESS_ID", "CGN_DISTRIBUTED", "SLURM_JOB_ID",
               "OMPI_MCA_orte_hnp_uri"):
    monkeypatch.delenv(name, raising=False)
  calls = []
  monkeypatch.setattr(distributed.jax.distributed, "initialize",
                      lambda **kw: calls.append(kw))
  assert distributed.initialize() is False
  assert distributed.initialize(num_processes=1) is False
  # A one-task SLURM allocation is one process, not a cluster.
  monkeypatch.setenv("SLURM_JOB_ID", "1")
  monkeypatch.setenv("SLURM_STEP_NODELIST", "node1")
  monkeypatch.setenv("SLURM_NTASKS", "1")
  monkeypatch.setenv("SLURM_PROCID", "0")
  monkeypatch.setenv("SLURM_LOCALID", "0")
  assert distributed.initialize() is False
  assert not calls


def test_initialize_detects_slurm_and_explicit_settings(monkeypatch):
  for name in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES",
               "JAX_PROCESS_ID", "CGN_DISTRIBUTED", "JAX_LOCAL_DEVICE_IDS",
               "OMPI_MCA_orte_hnp_uri", "SLURM_NTASKS_PER_NODE",
               "SLURM_TASKS_PER_NODE", "SLURM_GPUS_ON_NODE"):
    monkeypatch.delenv(name, raising=False)
  calls = []
  monkeypatch.setattr(distributed.jax.distributed, "initialize",
                      lambda **kw: calls.append(kw))
  monkeypatch.setattr(distributed, "_install_failure_propagation",
                      lambda: None)
  # Incomplete explicit settings outside a launcher: one clear error.
  with pytest.raises(ValueError, match="--coordinator=HOST:PORT"):
    distributed.initialize(num_processes=2, process_id=0)
  with pytest.raises(ValueError, match="not in"):
    distributed.initialize("h:1", 2, 2)
  distributed.initialize("h:1", 2, 1)
  assert calls[-1] == dict(coordinator_address="h:1", num_processes=2,
                           process_id=1)
  # srun with 2 tasks on 2 nodes of 8 GPUs, one task per node: JAX detects
  # the rest; the task keeps all 8 GPUs (JAX alone would give it one).
  for k, v in dict(SLURM_JOB_ID="7", SLURM_STEP_NODELIST="n[1-2]",
                   SLURM_NTASKS="2", SLURM_PROCID="1", SLURM_LOCALID="0",
                   SLURM_NTASKS_PER_NODE="1",
                   SLURM_GPUS_ON_NODE="8").items():
    monkeypatch.setenv(k, v)
  distributed.initialize()
  assert calls[-1] == dict(coordinator_address=None, num_processes=None,
                           process_id=None, local_device_ids=list(range(8)))
  # One task per GPU: JAX's own SLURM_LOCALID choice stands.
  monkeypatch.setenv("SLURM_NTASKS_PER_NODE", "8")
  distributed.initialize()
  assert "local_device_ids" not in calls[-1]


def test_resume_with_another_process_count_says_so(tmp_path):
  from cgn_jax.train import common  # pylint: disable=g-import-not-at-top
  data = tmp_path / "checkpoints" / "4" / "data"
  data.mkdir(parents=True)
  common.check_process_count(data)  # no iterator state: nothing to check
  for i in range(2):
    (data / f"process_{i}-of-2.json").write_text("{}")
  with pytest.raises(ValueError, match="written by 2 processes but this run "
                     "has 1: resume it with the same number"):
    common.check_process_count(data)


def test_process_rows_split_the_global_batch():
  assert distributed.process_rows(8, 0, 2) == slice(0, 4)
  assert distributed.process_rows(8, 1, 2) == slice(4, 8)
  assert distributed.process_rows(8) == slice(0, 8)
  with pytest.raises(ValueError, match="not divisible by the 3 processes"):
    distributed.process_rows(8, 0, 3)


# ----------------------------------------------------- no example twice --


def _epoch_rows(batches, steps):
  return [np.asarray(next(batches)["label"]) for _ in range(steps)]


def test_cgn_pipeline_reads_each_example_once_per_epoch():
  from cgn_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  n, batch, steps = 40, 8, 5  # one epoch
  inputs = np.zeros((n, 28, 28), np.uint8)
  labels = np.arange(n)  # the label is the example's index
  one = _epoch_rows(iter(pipeline.make_dataset(inputs, labels, batch, 3,
                                               process_index=0,
                                               process_count=1)), steps)
  parts = [_epoch_rows(iter(pipeline.make_dataset(
      inputs, labels, batch, 3, process_index=p, process_count=2)), steps)
           for p in (0, 1)]
  for step in range(steps):  # process 0's rows, then process 1's
    np.testing.assert_array_equal(
        np.concatenate([parts[0][step], parts[1][step]]), one[step])
  seen = np.concatenate(parts[0] + parts[1])
  assert sorted(seen.tolist()) == list(range(n))


def test_classifier_iterator_reads_each_example_once_per_epoch():
  from cgn_jax.train import classifier_mnist  # pylint: disable=g-import-not-at-top

  class Source:
    def __len__(self):
      return 44  # 5 batches of 8, 4 dropped

    def gather(self, idx):
      idx = np.asarray(idx)
      return {"image": idx, "label": idx}

  def rows(p, count):
    it = classifier_mnist.make_train_iterator(
        Source(), 8, 2, seed=1, threads=0, prefetch=0, process_index=p,
        process_count=count)
    return _epoch_rows(it, 10)  # two epochs

  one, parts = rows(0, 1), [rows(p, 2) for p in (0, 1)]
  for step in range(10):
    np.testing.assert_array_equal(
        np.concatenate([parts[0][step], parts[1][step]]), one[step])
  for epoch in (slice(0, 5), slice(5, 10)):
    seen = np.concatenate(parts[0][epoch] + parts[1][epoch])
    assert len(set(seen.tolist())) == len(seen) == 40


# ------------------------------------------------------- failure handling --

_FAIL = textwrap.dedent("""
    import sys, time
    import jax, jax.numpy as jnp, numpy as np
    from cgn_jax import cli, distributed

    def main(argv):  # run as the entry points run: cli.run_absl_app
      assert distributed.is_multi_process()
      mesh = distributed.data_mesh()
      rows = jax.sharding.NamedSharding(mesh, distributed.P("data"))
      f = jax.jit(jnp.sum)
      x = distributed.global_batch(np.ones(2, np.float32), rows)
      print("sum", float(f(x)), flush=True)
      if jax.process_index() == 1:
        raise OSError("disk full on process 1")
      time.sleep(120)  # stands for a collective that never completes

    cli.run_absl_app(main)
""")


def test_failure_in_one_process_stops_all(tmp_path):
  script = tmp_path / "fail.py"
  script.write_text(_FAIL)
  t0 = time.time()
  results = launch([str(script)], 2, 1, timeout=100)
  elapsed = time.time() - t0
  assert [r.returncode for r in results] == [1, 1], [
      r.stderr[-2000:] for r in results]
  # The entry points' one-line error, then the same line in process 0,
  # which says why it stopped and does not wait for the sleep.
  assert "fail.py: error: disk full on process 1" in results[1].stderr
  assert ("process 1 failed: fail.py: error: disk full on process 1; "
          "stopping process 0") in results[0].stderr
  assert elapsed < 60, elapsed


# ---------------------------------------------------------------- trainers --


def saved_state(workdir, step: int):
  """A checkpointed train state as numpy, whatever topology saved it."""
  import jax  # pylint: disable=g-import-not-at-top
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  path = pathlib.Path(workdir) / "checkpoints" / str(step) / "state"
  with ocp.PyTreeCheckpointer() as ckptr:
    meta = ckptr.metadata(path).item_metadata.tree
    args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray),
                        meta)
    return ckptr.restore(path, restore_args=args)


def assert_states_equal(a, b, atol=0.0):
  import jax  # pylint: disable=g-import-not-at-top
  diffs = jax.tree.leaves(jax.tree.map(
      lambda x, y: float(np.max(np.abs(np.asarray(x, np.float64) - y),
                                initial=0)), a, b))
  assert diffs and max(diffs) <= atol, max(diffs)


def metric_records(workdir, drop=("steps_per_second", "compile_s")):
  lines = (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines()
  records = [json.loads(l) for l in lines]
  return [{k: v for k, v in r.items() if k not in drop} for r in records
          if set(r) - set(drop) - {"step"}]


def only_main_wrote(results) -> None:
  """Process 0 logged; the others stayed silent on the shared workdir."""
  for r in results:
    assert "Traceback" not in r.stderr, r.stderr[-3000:]


@pytest.mark.slow
@pytest.mark.shared
def test_cgn_mnist_two_processes_match_one_and_resume(tmp_path, tfds_dir):
  # The children inherit CGN_MNIST_DIR and CGN_TFDS_DIR, prepared once here:
  # two processes never build the TFDS dataset at the same time.
  del tfds_dir
  argv = ["train.py", "--config=configs/cgn_colored_mnist.py:smoke",
          "--config.perceptual.vgg16=none", "--config.ckpt_every_steps=1",
          "--config.sample_every_steps=1"]
  ref, multi = tmp_path / "one", tmp_path / "two"
  check_ok(launch([*argv, f"--workdir={ref}",
                   "--config.num_train_steps=2"], 1, 2))
  # Two processes of one device each (the same 2-device mesh): a run
  # stopped after step 1, then both processes restarted to step 2.
  first = launch([*argv, f"--workdir={multi}", "--config.num_train_steps=1"],
                 2, 1)
  check_ok(first)
  second = launch([*argv, f"--workdir={multi}",
                   "--config.num_train_steps=2"], 2, 1)
  check_ok(second)
  for step in (1, 2):
    assert_states_equal(saved_state(ref, step), saved_state(multi, step))
  # Each process checkpointed its own data iterator position.
  data = sorted(p.name for p in (multi / "checkpoints" / "2" / "data").glob(
      "process_*"))
  assert data == ["process_0-of-2.json", "process_1-of-2.json"]
  # One log line per step (process 0's), equal to the one-process run.
  assert metric_records(multi) == metric_records(ref)
  results = json.loads((multi / "results.json").read_text())
  assert results["step"] == 2 and results["started_from"] == "checkpoint"
  # Sheets of every step (and the end of each run), from the same params.
  sheets = sorted(p.name for p in (ref / "samples").iterdir())
  assert sorted(p.name for p in (multi / "samples").iterdir()) == sheets
  for name in sheets:
    assert (multi / "samples" / name).read_bytes() == (
        ref / "samples" / name).read_bytes(), name
  only_main_wrote(first + second)


def _classifier_data(root: pathlib.Path) -> pathlib.Path:
  """A tiny generate.py-style workdir: random images, real labels shape."""
  from cgn_jax.counterfactuals import mnist as cf_mnist  # pylint: disable=g-import-not-at-top
  from cgn_jax.data import shards  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  for sub, n in ((cf_mnist.CF_DIR, 256), (cf_mnist.REAL_TEST_DIR, 96)):
    shards.write_arrays(root / sub, {
        "image": rng.integers(0, 256, (n, 28, 28, 3), np.uint8),
        "label": rng.integers(0, 10, n).astype(np.int32)},
                    metadata={"variant": "wildlife"})
  return root


@pytest.mark.slow
def test_classifier_two_processes_match_one_and_resume(tmp_path):
  data = _classifier_data(tmp_path / "data")
  argv = ["train.py", "--config=configs/classifier_mnist.py:wildlife,smoke",
          f"--config.counterfactuals={data}", "--config.num_counterfactuals=0",
          "--config.test_subset=0", "--config.batch_size=32",
          "--config.test_batch_size=64", "--config.log_every_steps=4"]
  ref, multi = tmp_path / "one", tmp_path / "two"
  check_ok(launch([*argv, f"--workdir={ref}", "--config.epochs=2"], 1, 2))
  first = launch([*argv, f"--workdir={multi}", "--config.epochs=1"], 2, 1)
  check_ok(first)
  second = launch([*argv, f"--workdir={multi}", "--config.epochs=2"], 2, 1)
  check_ok(second)
  for step in (8, 16):  # 256 / 32 = 8 steps per epoch
    assert_states_equal(saved_state(ref, step), saved_state(multi, step))
  a = json.loads((ref / "results.json").read_text())["epochs"]
  b = json.loads((multi / "results.json").read_text())["epochs"]
  assert len(a) == len(b) == 2
  for ra, rb in zip(a, b):
    assert ra["train_accuracy"] == rb["train_accuracy"]
    assert ra["test_accuracy"] == rb["test_accuracy"]
    assert abs(ra["test_loss"] - rb["test_loss"]) <= 1e-6
  assert metric_records(multi) == metric_records(ref)
  only_main_wrote(first + second)


def test_argparse_entry_points_take_the_distributed_options_out():
  rest, found = distributed.pop_args(
      ["--cgn-dir", "x", "--coordinator=h:5", "--num_processes", "2",
       "--process_id=1", "--distributed", "--workdir=w"])
  assert rest == ["--cgn-dir", "x", "--workdir=w"]
  assert found == dict(coordinator="h:5", num_processes=2, process_id=1,
                       force=True)
  with pytest.raises(ValueError, match="--num_processes=.two. is not an integer"):
    distributed.pop_args(["--num_processes=two"])


# ------------------------------------------------- counterfactual datasets --

_GENERATE = textwrap.dedent("""
    import sys
    import jax
    from cgn_jax import cli
    from cgn_jax.counterfactuals import mnist as cf
    from cgn_jax.models import cgn as cgn_lib

    def main(argv):
      model = cgn_lib.CGN(ngf=8)  # narrow, as tests/test_counterfactuals.py
      variables = jax.jit(lambda k: cgn_lib.init_variables(model, k))(
          jax.random.PRNGKey(0))
      cf.write_counterfactuals(argv[1], variables, model, num=1250,
                               cfs_per_shape=3, shapes_per_block=100,
                               shard_size=128, seed=3, progress=False)

    cli.run_absl_app(main)
""")


def test_counterfactuals_split_by_process_into_one_dataset(tmp_path):
  from cgn_jax.data import shards  # pylint: disable=g-import-not-at-top
  script = tmp_path / "generate.py"
  script.write_text(_GENERATE)
  check_ok(launch([str(script), str(tmp_path / "one")], 1, 1))
  check_ok(launch([str(script), str(tmp_path / "two")], 2, 1))
  one = shards.ShardedSource(tmp_path / "one")
  two = shards.ShardedSource(tmp_path / "two")
  assert len(one) == len(two) == 1200  # 4 calls of 300: 2 per process
  a, b = one.gather(np.arange(1200)), two.gather(np.arange(1200))
  assert set(a) == set(b)
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)
  # Each process wrote its own shards; one index lists them in order.
  files = [f for s in two.index["shards"] for f in s["files"].values()]
  assert {f.split("/")[0] for f in files} == {"part-00000", "part-00001"}
  assert two.index["metadata"]["processes"] == 2
  assert not (tmp_path / "two.parts").exists()


# ------------------------------------------------------------------ SIGTERM --

_SIGTERM = textwrap.dedent("""
    import json, os, signal
    import jax, jax.numpy as jnp, numpy as np
    from cgn_jax import cli, distributed
    from cgn_jax.train import common

    def main(argv):
      mesh = distributed.data_mesh()
      rows = jax.sharding.NamedSharding(mesh, distributed.P("data"))
      step_fn = jax.jit(jnp.sum)
      with common.StopSignal() as stop:
        for step in range(1, 50):
          step_fn(distributed.global_batch(np.ones(2, np.float32), rows))
          if jax.process_index() == 1 and step == 3:
            os.kill(os.getpid(), signal.SIGTERM)  # only process 1 is told
          if stop.requested:
            break
      print(json.dumps({"stopped_at": step}))

    cli.run_absl_app(main)
""")


def test_sigterm_to_one_process_stops_all_at_the_same_step(tmp_path):
  script = tmp_path / "sigterm.py"
  script.write_text(_SIGTERM)
  results = launch([str(script)], 2, 1, timeout=120)
  check_ok(results)
  assert [last_json(r)["stopped_at"] for r in results] == [3, 3]


def test_sigterm_on_one_process_is_a_flag():
  import signal  # pylint: disable=g-import-not-at-top
  from cgn_jax.train import common  # pylint: disable=g-import-not-at-top
  with common.StopSignal() as stop:
    assert not stop.requested
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(0.1)
    assert stop.requested


# ------------------------------------------------------ ImageNet classifier --

_CLASSIFIER_IMAGENET = textwrap.dedent("""
    import json, pathlib
    from absl import flags
    from ml_collections import config_flags
    from cgn_jax import cli, distributed, weights
    from cgn_jax.train import classifier_imagenet as trainer

    _CONFIG = config_flags.DEFINE_config_file("config", None, "config")
    _WORKDIR = flags.DEFINE_string("workdir", None, "workdir")
    _SUITE = flags.DEFINE_string("suite_val", None, "an ImageFolder val set")
    READS = []  # [source name, index] of every example this process read

    class Logged:
      def __init__(self, source, name):
        self.source, self.name = source, name

      def __len__(self):
        return len(self.source)

      def get(self, index, rng=None):
        READS.append([self.name, int(index)])
        return self.source.get(index, rng)

    def logged_sources(config):
      s = trainer.synthetic_sources(config)
      return trainer.Sources(**{k: Logged(getattr(s, k), k) for k in (
          "real_train", "real_val", "cf_train", "cf_val")})

    trainer.SOURCES["logged"] = logged_sources

    def main(argv):
      del argv
      config = _CONFIG.value
      programs = trainer.build_programs(
          config, config.data.synthetic.num_train // config.batch_size)
      trainer.train_and_evaluate(config, _WORKDIR.value, programs=programs)
      # The evaluation suite's path (real data): the best variables on
      # JPEGs of an ImageFolder, each process decoding its rows.
      variables, _ = weights.load_variables(
          pathlib.Path(_WORKDIR.value) / "best")
      config.data.root, config.data.counterfactuals = _SUITE.value, ""
      suite = trainer._run_suite(  # pylint: disable=protected-access
          programs, distributed.replicate(variables, programs.mesh), config)
      print(json.dumps({"reads": READS, "suite": suite}))

    cli.run_absl_app(main)
""")


def _reads(result, name) -> list[int]:
  return [i for n, i in last_json(result)["reads"] if n == name]


@pytest.mark.slow
def test_classifier_imagenet_two_processes_match_one(tmp_path):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  script = tmp_path / "classifier_imagenet.py"
  script.write_text(_CLASSIFIER_IMAGENET)
  val = tmp_path / "val"  # 3 classes x 2 JPEGs for the suite's path
  rng = np.random.default_rng(0)
  for c in ("ant", "bee", "cat"):
    (val / c).mkdir(parents=True)
    for i in range(2):
      Image.fromarray(rng.integers(0, 256, (20, 24, 3), np.uint8)).save(
          val / c / f"{i}.JPEG")
  # Smoke, one epoch of 2 steps: 8 real + 8 of 12 counterfactual images;
  # 6 + 6 validation images in global batches of 4 (the last one half
  # padding, which process 1 holds alone); the same for the 6 JPEGs.
  argv = [str(script), "--config=configs/classifier_imagenet.py:smoke",
          "--config.data.source=logged", "--config.epochs=1",
          "--config.data.synthetic.num_train=8", "--config.log_every_steps=1",
          "--config.read_threads=1", f"--suite_val={val}"]
  ref, multi = tmp_path / "one", tmp_path / "two"
  (single,) = launch([*argv, f"--workdir={ref}"], 1, 2)
  check_ok([single])
  results = launch([*argv, f"--workdir={multi}"], 2, 1)
  check_ok(results)
  # The same global batches, all-reduced over gloo instead of in-process:
  # the sum of two per-device gradients is the same float either way.
  assert_states_equal(saved_state(ref, 2), saved_state(multi, 2))
  one = json.loads((ref / "results.json").read_text())
  two = json.loads((multi / "results.json").read_text())
  assert two == one
  assert metric_records(multi) == metric_records(ref)
  # Every example is read once, by one process: the training batches split
  # between the processes, each validation image counted once.
  for name in ("real_train", "cf_train", "real_val", "cf_val"):
    parts = [_reads(r, name) for r in results]
    assert not set(parts[0]) & set(parts[1]), name
    assert sorted(parts[0] + parts[1]) == sorted(_reads(single, name)), name
    assert len(set(parts[0] + parts[1])) == len(parts[0] + parts[1]), name
  assert sorted(_reads(results[0], "real_val") + _reads(
      results[1], "real_val")) == list(range(6))
  # The suite's evaluation (JPEGs decoded by rows, labels gathered): the
  # numbers of one process, on both, each image counted once.
  suite = last_json(single)["suite"]
  assert suite["imagenet_val/num_images"] == 6
  assert [last_json(r)["suite"] for r in results] == [suite, suite]
  # One set of outputs: the files a single process writes (no temporary
  # ones left), the same best variables, plus each process's own
  # data-iterator position.
  assert sorted(p.name for p in multi.iterdir()) == sorted(
      p.name for p in ref.iterdir())
  assert not list(multi.rglob("*.tmp*"))
  from cgn_jax import weights  # pylint: disable=g-import-not-at-top
  (best_one, meta_one), (best_two, meta_two) = (
      weights.load_variables(d / "best") for d in (ref, multi))
  assert meta_two == meta_one
  assert_states_equal(best_one, best_two)
  data = sorted(p.name for p in (multi / "checkpoints" / "2" / "data").glob(
      "process_*"))
  assert data == ["process_0-of-2.json", "process_1-of-2.json"]
  only_main_wrote(results)


# ------------------------------------------ ImageNet counterfactual datasets --

_GENERATE_IMAGENET = textwrap.dedent("""
    from cgn_jax import cli
    from cgn_jax.counterfactuals import imagenet as cf

    def main(argv):
      model = cf.smoke_model()
      cf.write_dataset(argv[1], model, cf.smoke_variables(model), num=10,
                       seed=3, batch_size=2, shard_size=4, progress=False,
                       workers=1)

    cli.run_absl_app(main)
""")


def test_imagenet_counterfactuals_split_by_process_into_one_dataset(
    tmp_path):
  from cgn_jax.data import records  # pylint: disable=g-import-not-at-top
  script = tmp_path / "generate_imagenet.py"
  script.write_text(_GENERATE_IMAGENET)
  one, two = tmp_path / "one", tmp_path / "two"
  check_ok(launch([str(script), str(one)], 1, 1))
  # A killed two-process run left shard 0 and a partial file: the rerun
  # splits the two missing shards (4 and 2 images) over the processes.
  two.mkdir()
  for name in (records.METADATA, records.shard_name(0, 3)):
    shutil.copy(one / name, two / name)
  (two / (records.shard_name(1, 3) + ".tmp-1")).write_bytes(b"partial")
  check_ok(launch([str(script), str(two)], 2, 1))
  # The same files, byte for byte: one metadata.json (the index), 3 shards.
  names = sorted(p.name for p in one.iterdir())
  assert sorted(p.name for p in two.iterdir()) == names
  assert len(names) == 4
  for name in names:
    assert (two / name).read_bytes() == (one / name).read_bytes(), name
  src = records.CounterfactualSource(two, decode=False)
  assert [src[i]["index"] for i in range(len(src))] == list(range(10))
