"""The MNIST invariant classifier (SPEC §3.2) and its trainer's pieces."""

import functools

from flax import linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cgn_jax.models import classifier
from cgn_jax.train import classifier_mnist as cm
from cgn_jax.train import common
from configs import classifier_mnist as cfg

UPSTREAM_PARAMS = 67_760  # BN 6 + convs 2,432/9,248/18,496/36,928 + fc 650


@pytest.fixture(scope="module")
def variables():
  return jax.eval_shape(lambda: classifier.init_variables(
      classifier.CNN(), jax.random.PRNGKey(0)))


def _count(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def test_parameter_count_pinned(variables):
  assert _count(variables["params"]) == UPSTREAM_PARAMS


def _torch_cnn():
  import torch  # pylint: disable=g-import-not-at-top
  from torch import nn  # pylint: disable=g-import-not-at-top
  torch.manual_seed(0)
  # Upstream mnists/models/classifier.py, rebuilt from torch.nn.
  model = nn.Sequential(
      nn.BatchNorm2d(3), nn.Conv2d(3, 32, 5, 1, 2), nn.ReLU(),
      nn.MaxPool2d(3, 2, 1), nn.Conv2d(32, 32, 3, 1, 1), nn.ReLU(),
      nn.Conv2d(32, 64, 3, 2, 1), nn.ReLU(), nn.Conv2d(64, 64, 3, 1, 1),
      nn.ReLU(), nn.AvgPool2d(7), nn.Flatten())
  return model, nn.Sequential(nn.Linear(64, 10), nn.LogSoftmax(dim=1))


def _as_flax(body, head, get):
  """Torch CNN tensors (`get(param)`: weights or grads) as the flax tree."""
  conv = lambda m: {"kernel": get(m.weight).transpose(2, 3, 1, 0),
                    "bias": get(m.bias)}
  return {"model_0": {"scale": get(body[0].weight),
                      "bias": get(body[0].bias)},
          "model_1": conv(body[1]), "model_4": conv(body[4]),
          "model_6": conv(body[6]), "model_8": conv(body[8]),
          "cls_0": {"kernel": get(head[0].weight).T,
                    "bias": get(head[0].bias)}}


@pytest.mark.torch
def test_matches_torch_reference():
  import torch  # pylint: disable=g-import-not-at-top
  body, head = _torch_cnn()
  assert sum(p.numel() for p in list(body.parameters())
             + list(head.parameters())) == UPSTREAM_PARAMS
  with torch.no_grad():  # non-trivial BN statistics
    body[0].running_mean.copy_(torch.tensor([0.1, -0.2, 0.3]))
    body[0].running_var.copy_(torch.tensor([0.5, 1.5, 2.0]))
    body[0].weight.copy_(torch.tensor([1.1, 0.9, 1.2]))
  t = lambda m: m.detach().numpy()
  params = _as_flax(body, head, t)
  stats = {"model_0": {"mean": t(body[0].running_mean),
                       "var": t(body[0].running_var)}}
  x = np.random.default_rng(0).uniform(-1, 1, (4, 32, 32, 3)).astype(
      np.float32)
  body.eval()
  with torch.no_grad():
    ref = head(body(torch.from_numpy(x.transpose(0, 3, 1, 2)))).numpy()
  got, aux = jax.jit(lambda v, x: classifier.CNN().apply(v, x, train=False))(
      {"params": params, "batch_stats": stats}, x)
  assert set(aux) == set(classifier.AUX_KEYS)
  assert np.abs(np.asarray(got) - ref).max() <= 1e-5


@pytest.mark.torch
def test_train_mode_step_matches_torch():
  """Batch-statistics forward, every gradient and the running statistics.

  The model folds the input BatchNorm's affine part into the first conv
  (`_FoldedConv`) and pools with separable slices: same function, so the
  same gradients as torch's layers.
  """
  import torch  # pylint: disable=g-import-not-at-top
  body, head = _torch_cnn()
  with torch.no_grad():
    body[0].weight.copy_(torch.tensor([1.1, 0.9, 1.2]))
    body[0].bias.copy_(torch.tensor([0.1, -0.3, 0.2]))
  t = lambda m: m.detach().numpy()
  params = _as_flax(body, head, t)
  stats = {"model_0": {"mean": np.zeros(3, np.float32),
                       "var": np.ones(3, np.float32)}}
  rng = np.random.default_rng(1)
  x = rng.uniform(-1, 1, (8, 32, 32, 3)).astype(np.float32)
  y = rng.integers(0, 10, 8)
  body.train()
  logp = head(body(torch.from_numpy(x.transpose(0, 3, 1, 2))))
  torch.nn.functional.nll_loss(logp, torch.from_numpy(y)).backward()

  def loss(params):
    (lp, _), mut = classifier.CNN().apply(
        {"params": params, "batch_stats": stats}, x, train=True,
        mutable=["batch_stats"])
    return -jnp.mean(lp[jnp.arange(8), y]), (lp, mut["batch_stats"])

  grads, (lp, new_stats) = jax.jit(jax.grad(loss, has_aux=True))(params)
  assert np.abs(np.asarray(lp) - logp.detach().numpy()).max() <= 1e-5
  expected = _as_flax(body, head, lambda p: p.grad.numpy())
  for path, want in jax.tree_util.tree_leaves_with_path(expected):
    got = np.asarray(functools.reduce(lambda d, k: d[k.key], path, grads))
    assert np.abs(got - want).max() <= 1e-5 * max(1, np.abs(want).max()), (
        path)
  np.testing.assert_allclose(np.asarray(new_stats["model_0"]["mean"]),
                             t(body[0].running_mean), atol=1e-6)
  np.testing.assert_allclose(np.asarray(new_stats["model_0"]["var"]),
                             t(body[0].running_var), atol=1e-6)


def test_max_pool_matches_reduce_window():
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 16, 16, 4))
  ref = nn.max_pool(jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)),
                            constant_values=-jnp.inf), (3, 3), (2, 2))
  np.testing.assert_array_equal(
      np.asarray(classifier.max_pool_torch(x, 3, 2, 1)), np.asarray(ref))


def test_avgpool_quirk_ignores_last_row_and_column():
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 8, 8, 5))
  y = x.at[:, 7, :, :].set(100.0).at[:, :, 7, :].set(-100.0)
  pool = jax.jit(lambda x: classifier.avg_pool_torch(x, 7))
  a, b = pool(x), pool(y)
  assert a.shape == (2, 1, 1, 5)
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  np.testing.assert_allclose(np.asarray(a[:, 0, 0]),
                             np.asarray(x[:, :7, :7].mean((1, 2))), atol=1e-6)


def test_lr_schedule_decays_by_0_7_per_epoch():
  config = cfg.get_config("wildlife")
  spe = 13
  sched = cm.lr_schedule(config, spe)
  for epoch in range(10):
    for k in (0, spe - 1):
      assert float(sched(epoch * spe + k)) == pytest.approx(0.7**epoch,
                                                            rel=1e-6)


@pytest.mark.torch
def test_adadelta_matches_torch():
  import torch  # pylint: disable=g-import-not-at-top
  config = cfg.get_config("wildlife")
  tx = cm.make_optimizer(config, steps_per_epoch=2)
  w0 = np.random.default_rng(0).normal(size=5).astype(np.float32)
  w = jnp.asarray(w0)
  state = tx.init(w)
  tw = torch.tensor(w0, requires_grad=True)
  opt = torch.optim.Adadelta([tw], lr=1.0)
  sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.7)
  for step in range(6):
    g = np.cos(np.arange(5) + step).astype(np.float32)
    upd, state = tx.update(jnp.asarray(g), state, w)
    w = w + upd
    tw.grad = torch.tensor(g)
    opt.step()
    if step % 2 == 1:  # two steps per "epoch"
      sched.step()
  np.testing.assert_allclose(np.asarray(w), tw.detach().numpy(), atol=1e-6)


def test_accuracy_is_exact_on_a_fixed_fake_model():
  n, classes, batch = 1_001, 10, 640  # a padded last batch
  rng = np.random.default_rng(0)
  labels = rng.integers(0, classes, n).astype(np.int32)
  pred = np.where(rng.random(n) < 0.37, labels, (labels + 1) % classes)
  images = np.zeros((n, 32, 32, 3), np.uint8)
  images[:, 0, 0, 0] = pred  # the fake model reads its answer here

  def fake_apply(variables, x):
    del variables
    p = jnp.round((x[:, 0, 0, 0] + 1) * 127.5).astype(jnp.int32)
    return jax.nn.log_softmax(10.0 * jax.nn.one_hot(p, classes))

  m = cm.evaluate(fake_apply, {}, images, labels, batch, common.make_mesh())
  k = int(np.sum(pred == labels))
  assert m["correct"] == k and m["num"] == n
  assert m["accuracy"] == k / n
  logp = np.asarray(fake_apply(None, jnp.asarray(images / 127.5 - 1)))
  expected_nll = -logp[np.arange(n), labels].mean()
  assert m["loss"] == pytest.approx(expected_nll, rel=1e-5)


def test_configs_and_ablation():
  assert cfg.get_config("wildlife").train_on == "counterfactual"
  assert cfg.get_config("wildlife,real").train_on == "counterfactual+real"
  assert cfg.get_config("colored,original").train_on == "real"
  with pytest.raises(ValueError, match="variant"):
    cfg.get_config("mnist")
  hyper = cfg.get_hyper("double_colored")
  assert len(hyper) == 12
  assert {h["train"]["num_counterfactuals"] for h in hyper} == {
      10_000, 100_000, 1_000_000}
  assert {h["generate"]["cfs_per_shape"] for h in hyper} == {1, 5, 10, 20}
  assert len(cfg.get_hyper("colored")) == 9
