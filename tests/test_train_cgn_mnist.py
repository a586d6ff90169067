"""The MNIST CGN trainer through train.py: runs, resumes, shards, fails well.

Runs the real entry point in-process (absl flags re-parsed per run) on the
`:smoke` configs with real MNIST digits, so it needs the shared assets.
Compiles dominate the cost: the resume test passes one `Programs` (the
trainer's jitted functions, built once) to its three runs.
"""

import json
import os
import pathlib
import struct
import subprocess
import sys
import textwrap

import chex
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from absl import flags
from cgn_jax.train import cgn_mnist as trainer
from cgn_jax.train import common

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
  sys.path.insert(0, str(ROOT))
import train  # pylint: disable=g-import-not-at-top,wrong-import-position

pytestmark = [pytest.mark.shared, pytest.mark.usefixtures("fast_compile")]

CONFIGS = ("colored", "double_colored", "wildlife")
G_TERMS = ("g_adv", "g_binary", "g_style", "g_total")
D_TERMS = ("d_real", "d_fake", "d_total")


@pytest.fixture(autouse=True)
def _mnist(mnist_dir):
  del mnist_dir  # sets CGN_MNIST_DIR


def run_train(variant: str, workdir, *overrides: str, arg: str = "smoke"):
  """`python train.py --config=configs/cgn_{variant}_mnist.py:ARG ...`."""
  config = ROOT / "configs" / f"cgn_{variant}_mnist.py"
  argv = ["train.py", f"--config={config}:{arg}", f"--workdir={workdir}",
          *overrides]
  # config_flags reads its --config.x overrides from sys.argv.
  saved, sys.argv = sys.argv, argv
  try:
    # Forget the previous run: its values and the --config.x flags that
    # config_flags registered while parsing it.
    for name in [n for n in flags.FLAGS if n.startswith("config.")]:
      delattr(flags.FLAGS, name)
    flags.FLAGS.unparse_flags()
    train.main(flags.FLAGS(argv))
  finally:
    sys.argv = saved


def saved_state(workdir, step: int):
  """The checkpointed train state of `step` as a tree of numpy arrays."""
  path = pathlib.Path(workdir) / "checkpoints" / str(step) / "state"
  with ocp.StandardCheckpointer() as ckptr:
    return jax.tree.map(np.asarray, ckptr.restore(path))


def read_metrics(workdir):
  lines = (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines()
  return [json.loads(line) for line in lines]


def read_events(directory):
  """TensorBoard event files -> ({tag: [(step, value)]}, {tag: [step]}).

  Read with tensorboardX's protos (TFRecord framing: u64 length, u32 CRC,
  payload, u32 CRC), so the test needs neither TensorFlow nor TensorBoard.
  """
  from tensorboardX.proto import event_pb2  # pylint: disable=g-import-not-at-top
  scalars, images = {}, {}
  for path in sorted(pathlib.Path(directory).glob("events.out.tfevents.*")):
    data, i = path.read_bytes(), 0
    while i < len(data):
      n = struct.unpack("<Q", data[i:i + 8])[0]
      event = event_pb2.Event.FromString(data[i + 12:i + 12 + n])
      i += 12 + n + 4
      for v in event.summary.value:
        if v.HasField("image"):
          images.setdefault(v.tag, []).append(event.step)
        else:
          scalars.setdefault(v.tag, []).append((event.step, v.simple_value))
  return scalars, images


def test_resume_is_bitwise_and_step_traced_once(tmp_path, monkeypatch):
  # Trace counting wraps the pure step before `build_programs` jits it.
  monkeypatch.setattr(trainer, "train_step",
                      chex.assert_max_traces(trainer.train_step, n=1))
  from configs import cgn_wildlife_mnist  # pylint: disable=g-import-not-at-top
  k = 2

  def config(steps=None):
    c = cgn_wildlife_mnist.get_config("smoke")
    if steps:
      c.num_train_steps = steps
    return c
  programs = trainer.build_programs(config(), with_vgg=True)
  trainer.train_and_evaluate(config(2 * k), tmp_path / "straight",
                             programs=programs)
  # :smoke stops after k steps
  trainer.train_and_evaluate(config(), tmp_path / "resumed",
                             programs=programs)
  assert (tmp_path / "resumed" / "results.json").is_file()
  trainer.train_and_evaluate(config(2 * k), tmp_path / "resumed",
                             programs=programs)
  # Three runs and 8 steps, one trace: resuming reuses the compiled step.
  straight = saved_state(tmp_path / "straight", 2 * k)
  resumed = saved_state(tmp_path / "resumed", 2 * k)
  assert int(resumed["step"]) == 2 * k
  chex.assert_trees_all_equal(straight, resumed)  # bitwise
  results = json.loads((tmp_path / "resumed" / "results.json").read_text())
  assert results["step"] == 2 * k and results["started_from"] == "checkpoint"
  # Programs of another configuration are refused, not silently reused.
  other = config()
  other.optim.lr = 1e-3
  with pytest.raises(ValueError, match="another configuration"):
    trainer.train_and_evaluate(other, tmp_path / "other", programs=programs)


@pytest.mark.parametrize("variant", CONFIGS)
def test_smoke_config_trains_two_steps(variant, tmp_path):
  run_train(variant, tmp_path)
  results = json.loads((tmp_path / "results.json").read_text())
  assert results["step"] == results["num_steps"] == 2
  losses = results["final_losses"]
  assert set(G_TERMS + D_TERMS) <= set(losses)
  assert all(np.isfinite(v) for v in losses.values())
  metrics = read_metrics(tmp_path)
  assert [m["step"] for m in metrics if "g_adv" in m] == [1, 2]
  assert "steps_per_second" in metrics[-1]
  sheets = sorted((tmp_path / "samples").glob("*.png"))
  names = {p.name for p in sheets}
  assert {f"0000002_{n}.png" for n in ("x_gen", "mask", "foreground",
                                        "background", "sheet")} == names
  from PIL import Image  # pylint: disable=g-import-not-at-top
  # 10 class rows of 3 images at 64 px with 2 px padding (upstream's sheet).
  assert Image.open(tmp_path / "samples" / "0000002_x_gen.png").size == (
      3 * 66 + 2, 10 * 66 + 2)
  # The combined sheet: per class row, 3 x_gen | 3 masks | 3 fg | 3 bg.
  sheet = np.asarray(Image.open(tmp_path / "samples" / "0000002_sheet.png"))
  assert sheet.shape == (10 * 66 + 2, 12 * 66 + 2, 3)
  masks = sheet[:, 2 + 3 * 66:6 * 66].astype(int)  # grey: R = G = B
  assert (masks == masks[..., :1]).all()
  assert (tmp_path / "checkpoints" / "2").is_dir()
  # TensorBoard: the same scalars as metrics.jsonl, and the sample sheet.
  scalars, images = read_events(tmp_path / "tensorboard")
  assert set(G_TERMS + D_TERMS) <= set(scalars), scalars
  assert [step for step, _ in scalars["g_adv"]] == [1, 2]
  by_step = {m["step"]: m for m in metrics}
  for step, value in scalars["g_adv"]:
    assert value == pytest.approx(by_step[step]["g_adv"], rel=1e-6)
  assert images == {"samples": [2]}


def test_unknown_config_field_fails(tmp_path):
  with pytest.raises(AttributeError, match="bogus"):
    run_train("wildlife", tmp_path, "--config.bogus=1")
  with pytest.raises(flags.Error, match="unknown config argument 'bogus'"):
    run_train("wildlife", tmp_path, arg="smoke,bogus")


def test_missing_vgg16_weights_say_how_to_get_them(tmp_path):
  missing = tmp_path / "no_vgg16_here"
  with pytest.raises(FileNotFoundError,
                     match=r"(?s)no_vgg16_here.*python -m converters vgg16"):
    run_train("colored", tmp_path / "w",
              f"--config.perceptual.vgg16={missing}")
  assert not (tmp_path / "w" / "checkpoints").exists()


def test_resuming_with_another_config_is_refused(tmp_path):
  run_train("colored", tmp_path, "--config.perceptual.vgg16=none")
  stored = json.loads((tmp_path / "provenance.json").read_text())
  assert stored["config"]["optim"]["lr"] == 2e-4
  # A longer run of the same config resumes (loop length may change) ...
  run_train("colored", tmp_path, "--config.perceptual.vgg16=none",
            "--config.num_train_steps=3")
  # ... another learning rate does not: the error names the field.
  from cgn_jax import provenance  # pylint: disable=g-import-not-at-top
  with pytest.raises(provenance.ProvenanceMismatch,
                     match=r"config\.optim\.lr: stored 0\.0002, now 0\.001"):
    run_train("colored", tmp_path, "--config.perceptual.vgg16=none",
              "--config.num_train_steps=4", "--config.optim.lr=1e-3")
  assert common.Checkpointer(tmp_path).latest_step() == 3


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
  # lr 1e30: step 1's loss is finite, its update blows the weights up, and
  # step 2's loss is not; the step-1 checkpoint must survive untouched.
  with pytest.raises(common.NonFiniteLossError,
                     match=r"non-finite loss at step 2: .*d_"):
    run_train("colored", tmp_path, "--config.optim.lr=1e30",
              "--config.perceptual.vgg16=none", "--config.ckpt_every_steps=1",
              "--config.num_train_steps=3")
  assert common.Checkpointer(tmp_path).latest_step() == 1
  assert not (tmp_path / "results.json").exists()


_TWO_DEVICES = textwrap.dedent("""
    import json, sys
    import jax, numpy as np
    sys.path.insert(0, {root!r})
    jax.config.update("jax_disable_most_optimizations", True)
    from configs import cgn_colored_mnist
    from cgn_jax.train import cgn_mnist as trainer
    from cgn_jax.train import common
    assert jax.device_count() == 2, jax.devices()
    config = cgn_colored_mnist.get_config("smoke")
    rng = np.random.default_rng(0)
    host = {{"digits": rng.integers(0, 256, (1, 4, 28, 28), np.uint8),
             "label": np.array([[0, 3, 7, 9]], np.int32)}}
    out = []
    for devices in (jax.devices()[:1], jax.devices()):
      mesh = jax.sharding.Mesh(np.array(devices), ("data",))
      programs = trainer.build_programs(config, with_vgg=False, mesh=mesh)
      state = jax.device_put(
          trainer.create_train_state(config, programs.models,
                                     jax.random.PRNGKey(0),
                                     programs=programs),
          common.replicated(mesh))
      steps = programs.steps
      batch = trainer.shard_stacked(host, mesh)
      assert len(batch["label"].sharding.device_set) == len(devices)
      state, metrics = steps(state, batch, None)
      out.append(jax.device_get((state, metrics)))
    (s1, m1), (s2, m2) = out
    def diff(a, b):
      return max(jax.tree.leaves(jax.tree.map(
          lambda x, y: float(np.max(np.abs(x - y), initial=0)), a, b)))
    def scale(a):
      return max(float(np.max(np.abs(x), initial=0))
                 for x in jax.tree.leaves(a))
    print(json.dumps({{
        "metrics": diff(m1, m2),
        "batch_stats": diff(s1.g_batch_stats, s2.g_batch_stats),
        "grads": max(diff(s1.g_opt_state[0].mu, s2.g_opt_state[0].mu)
                     / scale(s1.g_opt_state[0].mu),
                     diff(s1.d_opt_state[0].mu, s2.d_opt_state[0].mu)
                     / scale(s1.d_opt_state[0].mu)),
        "params": diff((s1.g_params, s1.d_params),
                       (s2.g_params, s2.d_params)),
        "lr": config.optim.lr}}))
""")


def test_two_device_mesh_matches_one_device(mnist_dir):
  del mnist_dir
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_force_host_platform_device_count=2")
  proc = subprocess.run(
      [sys.executable, "-c", _TWO_DEVICES.format(root=str(ROOT))],
      env=env, cwd=ROOT, capture_output=True, text=True, timeout=600,
      check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  diff = json.loads(proc.stdout.strip().splitlines()[-1])
  # Same math, another reduction order over the two shards: losses, BN
  # statistics and gradients (Adam's first moment, relative to its largest
  # entry) agree to float32 rounding.
  assert diff["metrics"] < 1e-5, diff
  assert diff["batch_stats"] < 1e-5, diff
  assert diff["grads"] < 1e-4, diff
  # Adam's first step moves every weight by ±lr·g/|g|: a gradient that
  # rounds across zero could flip a sign, never more than 2·lr.
  assert diff["params"] <= 2 * diff["lr"] + 1e-6, diff
