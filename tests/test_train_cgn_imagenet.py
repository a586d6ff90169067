"""The ImageNet CGN trainer at smoke size (random weights, CPU).

One accumulated update changes only the three mechanisms, each by its own
learning rate (Adam's first step moves every entry with a nonzero gradient
by about lr); biggan_gt and U²-Net stay bitwise equal. A run interrupted
after one update and resumed ends bitwise equal to an uninterrupted one.
Bad input (missing weights, truncation) fails before anything compiles.
"""

import jax
import numpy as np
import pytest

from cgn_jax.models import imagenet_cgn
from cgn_jax.train import cgn_imagenet as trainer
from configs import cgn_imagenet as config_lib

pytestmark = pytest.mark.usefixtures("fast_compile")


def _config(**overrides):
  c = config_lib.get_config("smoke")
  # The smoke model in BigGAN-deep-128's layout: 128² images make VGG16 and
  # U²-Netp (most of a step) 4x cheaper; the code path is the same.
  c.model.biggan = "biggan-deep-128"
  c.batch_size, c.batch_acc = 1, 2
  c.sheet_classes = ()  # a sheet compiles the eval forward: not needed here
  c.save_every = 1
  for k, v in overrides.items():
    c[k] = v
  return c


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  config = _config()
  model = trainer.create_model(config)
  initial = jax.device_get(trainer.load_variables(config, model))
  straight = tmp_path_factory.mktemp("straight")
  config.num_updates = 2
  final = jax.device_get(trainer.train_and_evaluate(config, straight))
  resumed = tmp_path_factory.mktemp("resumed")
  config.num_updates = 1
  first = jax.device_get(trainer.train_and_evaluate(config, resumed))
  config.num_updates = 2
  again = jax.device_get(trainer.train_and_evaluate(config, resumed))
  return dict(config=config, initial=initial, first=first, final=final,
              again=again, workdir=resumed)


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


def test_resume_is_bitwise(runs):
  a, b = runs["final"], runs["again"]
  assert int(a.step) == int(b.step) == 2
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)


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
