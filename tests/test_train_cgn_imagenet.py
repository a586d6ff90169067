"""The ImageNet CGN trainer at smoke size (random weights, CPU).

One accumulated update changes only the three mechanisms, each by its own
learning rate (Adam's first step moves every entry with a nonzero gradient
by about lr); biggan_gt and U²-Net stay bitwise equal. A run interrupted
after one update and resumed ends bitwise equal to an uninterrupted one.
Bad input (missing weights, truncation, Programs of another config) fails
before anything compiles.

Cost: one compile of the update (under a minute on 2 CPU cores), shared by
every run through one `Programs`, for a tiny model: the smoke CGN (BigGAN-
deep at channel width 4, U²-Netp) in a 3-block, 32² BigGAN-deep layout
registered for this module only. XLA's optimisations stay on here (no
`fast_compile`): unoptimised, an update executes ~20x slower, which costs
more than the faster compile saves.
"""

import jax
import numpy as np
import pytest

from cgn_jax.models import biggan as biggan_lib
from cgn_jax.models import imagenet_cgn
from cgn_jax.train import cgn_imagenet as trainer
from cgn_jax.train import common
from configs import cgn_imagenet as config_lib


# BigGAN-deep with three up-blocks (4 -> 32 pixels) and self-attention at
# 16²: a third of the blocks of BigGAN-deep-128 and 1/16 of its pixels, so
# the update compiles in half the time and runs in a tenth; the code path
# is the same.
TINY_BIGGAN = "biggan-deep-32-test"


@pytest.fixture(scope="module", autouse=True)
def tiny_biggan():
  layout = dict(biggan_lib.BIGGAN_CONFIGS["biggan-deep-128"], output_dim=32,
                layers=((True, 16, 8), (True, 8, 4), (True, 4, 2)),
                attention_layer_position=2)
  with pytest.MonkeyPatch.context() as mp:
    mp.setitem(biggan_lib.BIGGAN_CONFIGS, TINY_BIGGAN, layout)
    yield


def _config(**overrides):
  c = config_lib.get_config("smoke")
  c.model.biggan = TINY_BIGGAN
  c.batch_size, c.batch_acc = 1, 2
  c.sheet_classes = (15, 251)
  c.save_every = 1
  for k, v in overrides.items():
    c[k] = v
  return c


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  config = _config()
  traces = []
  # On CPU ('auto' -> 'host') the update is one jitted micro-step per
  # accumulation step and a jitted Adam step; count the micro-step's traces.
  traced = trainer.accumulate_micro_step

  def counted(*args, **kwargs):
    traces.append(1)
    return traced(*args, **kwargs)

  # `build_programs` jits what it finds.
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(trainer, "accumulate_micro_step", counted)
    programs = trainer.build_programs(config)
  initial = jax.device_get(trainer.load_variables(config, programs.model))
  workdir = tmp_path_factory.mktemp("run")
  config.num_updates = 1
  state = trainer.train_and_evaluate(config, workdir, programs=programs)
  first = jax.device_get(state)
  # The uninterrupted reference: the loop's next update, in memory (the
  # run returned its live state).
  vgg = common.replicate(trainer.load_vgg(config.weights.vgg16),
                         programs.mesh)
  final = jax.device_get(programs.update(state, vgg)[0])
  config.num_updates = 2  # resumes from the checkpoint of update 1
  again = jax.device_get(trainer.train_and_evaluate(config, workdir,
                                                    programs=programs))
  return dict(config=config, initial=initial, first=first, final=final,
              again=again, workdir=workdir, programs=programs,
              traces=len(traces))


def test_one_update_moves_each_mechanism_by_its_lr(runs):
  before, after = runs["initial"], trainer.variables_of(runs["first"])
  lrs = {"f_shape": 8e-6, "f_text": 3e-5, "f_bg": 1e-5}
  for name, lr in lrs.items():
    deltas = np.concatenate([
        np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).ravel()
        for a, b in zip(jax.tree.leaves(after["params"][name]),
                        jax.tree.leaves(before["params"][name]))])
    moved = deltas[deltas > 0]
    assert moved.size > 0.5 * deltas.size, name
    # |Adam step| = lr * |g| / (|g| + eps) <= lr; ~lr unless |g| ~ eps.
    assert deltas.max() <= lr * 1.01, (name, deltas.max())
    assert abs(np.median(moved) / lr - 1) < 0.01, (name, np.median(moved))
    # The spectral-norm state moved too (power iteration per forward).
    u_before = jax.tree.leaves(before["spectral"][name])
    u_after = jax.tree.leaves(after["spectral"][name])
    assert any(not np.array_equal(a, b) for a, b in zip(u_after, u_before))
  for name in imagenet_cgn.FROZEN:
    jax.tree.map(np.testing.assert_array_equal, after["params"][name],
                 before["params"][name])
  for col in ("spectral", "batch_stats"):
    jax.tree.map(np.testing.assert_array_equal, after[col]["biggan_gt"],
                 before[col]["biggan_gt"])
  assert int(runs["first"].step) == 1


def test_resume_is_bitwise_and_update_traced_once(runs):
  a, b = runs["final"], runs["again"]
  assert int(a.step) == int(b.step) == 2
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)
  # Two runs (one resumed) and three updates: one trace, one compile.
  assert runs["traces"] == 1


def test_scan_and_host_loops_make_the_same_update(runs):
  """The accelerator path (one lax.scan) against the CPU path (host loop).

  The scan side also rematerialises (`model.remat`), which changes memory,
  not arithmetic: one compile checks both.
  """
  config = _config(accumulation_loop="scan")
  config.model.remat = True
  programs = trainer.build_programs(config)
  assert trainer.accumulation_loop(runs["config"]) == "host"  # on CPU
  vgg = common.replicate(trainer.load_vgg(config.weights.vgg16),
                         programs.mesh)
  state = trainer.place(trainer.state_from_variables(
      runs["initial"], programs.tx, config.seed), programs.sharding)
  scanned, metrics = jax.device_get(programs.update(state, vgg))
  first = runs["first"]
  assert int(scanned.step) == 1
  record = {}
  import json  # pylint: disable=g-import-not-at-top
  for line in (runs["workdir"] / "metrics.jsonl").read_text().splitlines():
    record = json.loads(line) if json.loads(line)["step"] == 1 else record
  for k, v in metrics.items():
    assert float(v) == pytest.approx(record[k], rel=1e-5, abs=1e-6), k
  a = np.concatenate([np.ravel(x) for x in jax.tree.leaves(scanned.params)])
  b = np.concatenate([np.ravel(x) for x in jax.tree.leaves(first.params)])
  # Fusion order may flip Adam's first step where |g| ~ rounding.
  assert np.mean(np.abs(a - b) > 1e-9) < 0.01
  for x, y in zip(jax.tree.leaves(scanned.spectral),
                  jax.tree.leaves(first.spectral)):
    np.testing.assert_allclose(x, y, rtol=0, atol=1e-5)


def test_programs_of_another_config_are_refused(runs, tmp_path):
  programs = runs["programs"]
  other = _config()
  other.lr.texture = 1e-4
  with pytest.raises(ValueError, match=r"another configuration.*lr\.texture"):
    trainer.train_and_evaluate(other, tmp_path, programs=programs)
  assert not (tmp_path / "checkpoints").exists()  # refused before anything
  # Loop length, seed and weights do not change the programs.
  trainer.check_programs(programs, _config(num_updates=7, seed=3))


def test_resuming_with_another_config_is_refused(runs):
  from cgn_jax import provenance  # pylint: disable=g-import-not-at-top
  other = _config(num_updates=3)
  other.lr.texture = 1e-4
  with pytest.raises(provenance.ProvenanceMismatch,
                     match=r"lr\.texture.*overwrite=True"):
    trainer.train_and_evaluate(other, runs["workdir"])
  assert (runs["workdir"] / "checkpoints" / "2").is_dir()  # nothing lost


def test_sheets_at_the_start_every_save_and_the_end(runs):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  sheets = sorted((runs["workdir"] / "samples").glob("*.png"))
  assert [p.name for p in sheets] == [f"sheet_{i:07d}.png" for i in range(3)]
  # One row per class, six 32² columns, 2 px padding.
  with Image.open(sheets[-1]) as im:
    assert im.size == (6 * 34 + 2, 2 * 34 + 2)


def test_metrics_name_every_loss(runs):
  import json  # pylint: disable=g-import-not-at-top
  lines = (runs["workdir"] / "metrics.jsonl").read_text().splitlines()
  record = json.loads(lines[-1])
  for key in ("l1", "perc", "binary", "mask", "perc_text", "bg", "total",
              "mask_mean"):
    assert np.isfinite(record[key]), key


@pytest.mark.parametrize("field,match", [
    ("biggan", "weights.biggan.*converters biggan"),
    ("u2net", "weights.u2net.*converters u2net"),
    ("vgg16", "weights.vgg16.*converters vgg16"),
    ("cgn", "weights.cgn.*converters cgn-imagenet"),
])
def test_missing_weights(tmp_path, field, match):
  config = _config()
  config.weights[field] = str(tmp_path / "nowhere")
  with pytest.raises(FileNotFoundError, match=match):
    trainer.train_and_evaluate(config, tmp_path / "run")


@pytest.mark.parametrize("truncation", [0.0, 1.2])
def test_truncation_out_of_range(tmp_path, truncation):
  with pytest.raises(ValueError, match=r"truncation must be in \(0, 1\]"):
    trainer.train_and_evaluate(_config(truncation=truncation), tmp_path)


def test_config_schedules_and_ablations():
  c = config_lib.get_config()
  assert c.batch_size * c.batch_acc == 2048 and c.num_updates == 50
  assert (c.lr.shape, c.lr.texture, c.lr.bg) == (8e-6, 3e-5, 1e-5)
  assert (c.accumulate, c.class_per, c.truncation) == ("sum", "batch", 1.0)
  up = config_lib.get_config("upstream")
  assert (up.batch_size, up.batch_acc, up.num_updates) == (1, 4000, 300)
  base = c.lambdas.to_dict()
  zeroed = {"no_shape": {"binary", "mask"}, "no_text": {"text"},
            "no_bg": {"bg"}, "no_rec": {"l1", "perc"}}
  for arg, keys in zeroed.items():
    lam = config_lib.get_config(arg).lambdas.to_dict()
    changed = {k for k in base if lam[k] != base[k]}
    assert changed == keys, arg
    assert all(not any(np.atleast_1d(lam[k])) for k in keys), arg

