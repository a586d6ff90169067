"""ResNet-50, the invariant ensemble and its training step vs upstream goldens.

../shared/reference/classifiers/ (README "classifiers/"): torchvision
ResNet-50 logits (formula weights seed 5151), upstream InvariantEnsemble's
five eval outputs (seed 5050) and ONE upstream training step (SGD lr 1e-3,
momentum 0.9, weight decay 1e-4, BatchNorm frozen). The weights are rebuilt
with `formula_weights.py` over the state-dict key lists of
classifiers_config.json and converted with `converters.resnet50` (so the
converter's rule table is checked on every key too). No torch needed,
except for the CLI round trip.
"""

import functools
import json
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from cgn_jax.models import ensemble as ensemble_lib
from cgn_jax.models import resnet as resnet_lib
from cgn_jax.train import classifier_imagenet as trainer
from converters import common
from converters import resnet50 as convert

pytestmark = pytest.mark.shared


@pytest.fixture(scope="module")
def ref(shared_dir):
  d = shared_dir / "reference"
  sys.path.insert(0, str(d))
  try:
    from formula_weights import formula_weights  # pylint: disable=g-import-not-at-top
  finally:
    sys.path.remove(str(d))
  config = json.loads((d / "classifiers" / "classifiers_config.json")
                      .read_text())
  golden = dict(np.load(d / "classifiers" / "classifiers_golden.npz"))
  return config, golden, formula_weights


@pytest.fixture(scope="module")
def ensemble_state_dict(ref):
  config, _, formula_weights = ref
  return formula_weights(config["ensemble_state_keys"],
                         config["ensemble_seed"])


@pytest.fixture(scope="module")
def ensemble_variables(ensemble_state_dict):
  return convert.convert_ensemble(ensemble_state_dict)


def _nhwc(x):
  return np.ascontiguousarray(x.transpose(0, 2, 3, 1))


def _leaf(tree, torch_key, ndim):
  """The converted array for a torch key (same rule table as the converter)."""
  _, path, perm = convert._flax_path(torch_key, ndim)  # pylint: disable=protected-access
  for p in path:
    tree = tree[p]
  return np.asarray(tree), perm


def _rel(got, want):
  return float(np.abs(np.asarray(got) - want).max() / np.abs(want).max())


def test_resnet50_logits(ref):
  config, golden, formula_weights = ref
  sd = formula_weights(config["resnet50_state_keys"], config["resnet50_seed"])
  variables = convert.convert_resnet50(sd)
  n = sum(x.size for x in jax.tree.leaves(variables["params"]))
  assert n == 25_557_032  # torchvision's resnet50() parameter count
  model = resnet_lib.resnet50()
  logits, aux = jax.jit(lambda v, x: model.apply(v, x))(
      variables, _nhwc(golden["input_224"]))
  assert aux["features"].shape == (2, 2048)
  err = _rel(logits, golden["resnet50/logits"])
  assert err <= 1e-4, f"resnet50 logits: max rel {err}"


def test_ensemble_eval_outputs(ref, ensemble_variables):
  _, golden, _ = ref
  model = ensemble_lib.InvariantEnsemble()
  avg, out = jax.jit(lambda v, x: model.apply(v, x))(
      ensemble_variables, _nhwc(golden["input_224"]))
  assert set(ensemble_lib.OUTPUTS) <= set(out)
  np.testing.assert_array_equal(avg, out["avg"])
  for name in ensemble_lib.OUTPUTS:
    err = _rel(out[name], golden[f"ensemble/eval/{name}_preds"])
    assert err <= 1e-4, f"{name}: max rel {err}"


@pytest.fixture(scope="module")
def one_step(ref, ensemble_variables):
  """(state before, state after, step metrics, the optimizer's update)."""
  config, golden, _ = ref
  sgd = config["sgd"]
  c = ml_collections.ConfigDict(dict(
      learning_rate=sgd["lr"], momentum=sgd["momentum"],
      weight_decay=sgd["weight_decay"], lr_decay=0.1,
      lr_decay_every_epochs=15))
  tx = trainer.make_optimizer(c, steps_per_epoch=100)
  model = ensemble_lib.InvariantEnsemble()
  state = trainer.create_train_state(
      jax.tree.map(jnp.asarray, ensemble_variables), tx)
  label = lambda k: golden[k].astype(np.int32)
  batch = {"real": {"image": _nhwc(golden["step/x_real"]),
                    "label": label("step/y_real")},
           "cf": {"image": _nhwc(golden["step/x_cf"]),
                  "shape": label("step/y_shape"),
                  "texture": label("step/y_texture"),
                  "bg": label("step/y_bg")}}

  @jax.jit
  def step(state, batch):
    # The update before it is added to θ as well: its Σ| | is free of the
    # float32 rounding of θ_after (see test_step_update_sums).
    grads, _ = jax.grad(functools.partial(trainer.losses, model=model),
                        has_aux=True)(state.params, state.batch_stats, batch)
    update, _ = tx.update(grads, state.opt_state, state.params)
    new, metrics = trainer.train_step(state, batch, model=model, tx=tx)
    return new, metrics, update

  new, metrics, update = jax.device_get(step(state, batch))
  return jax.device_get(state), new, metrics, update


def test_step_losses(ref, one_step):
  _, golden, _ = ref
  _, _, metrics, _ = one_step
  for name in ("loss_real", "loss_cf"):
    want = float(golden[f"step/{name}"])
    err = abs(float(metrics[name]) - want) / abs(want)
    assert err <= 1e-5, f"{name}: {float(metrics[name])} vs {want}"


def test_step_update_sums(ref, ensemble_state_dict, one_step):
  """Σ|θ_after − θ_before| of every parameter within 1e-4 relative.

  The golden's Σ is over float32 θ_after, so each element is quantised to
  ulp(θ): for a BatchNorm scale (θ ≈ 1, ulp 1.2e-7) moved by ~2e-5 that is
  a rounding noise of std ≈ sqrt(Σ ulp²/12) ≈ 9e-5 of the sum for 256
  channels. The exact step (float64 throughout, then θ_after rounded to
  float32) is itself up to 6.7e-5 away from the golden. So the check uses
  our update before it is rounded into θ (only the golden's rounding
  remains) and allows 1e-4 relative plus three standard deviations of
  that rounding noise; on all but a few small BatchNorm tensors the noise
  term is far below 1e-5.
  """
  _, golden, _ = ref
  before, after, _, update = one_step
  prefix = "step/abs_update_sum/"
  names = [k[len(prefix):] for k in golden if k.startswith(prefix)]
  assert len(names) == len(jax.tree.leaves(before.params))  # all of them
  failures = []
  for name in names:
    want = float(golden[prefix + name])
    ndim = ensemble_state_dict[name].ndim
    u, _ = _leaf(update, name, ndim)
    theta, _ = _leaf(before.params, name, ndim)
    got = float(np.abs(u.astype(np.float64)).sum())
    noise = float(np.sqrt(np.sum(
        np.spacing(np.abs(theta).astype(np.float32)).astype(np.float64)**2)
                          / 12))
    if abs(got - want) > 1e-4 * abs(want) + 3 * noise:
      failures.append(f"{name}: {got} vs {want}")
    # The update really lands in the parameters.
    new, _ = _leaf(after.params, name, ndim)
    np.testing.assert_allclose(new - theta, u, rtol=0,
                               atol=float(np.spacing(np.abs(theta).max())))
  assert not failures, failures


def test_step_updated_tensors(ref, ensemble_state_dict, one_step):
  _, golden, _ = ref
  _, after, _, _ = one_step
  prefix = "step/updated/"
  names = [k[len(prefix):] for k in golden if k.startswith(prefix)]
  assert names
  for name in names:
    got, perm = _leaf(after.params, name, ensemble_state_dict[name].ndim)
    if perm is not None:
      got = got.transpose(np.argsort(perm))
    err = np.abs(got - golden[prefix + name]).max()
    assert err <= 1e-6, f"{name}: max-abs {err}"


def test_step_keeps_batchnorm_statistics(ref, one_step):
  _, golden, _ = ref
  before, after, _, _ = one_step
  np.testing.assert_array_equal(after.batch_stats["backbone"]["bn1"]["var"],
                                golden["step/backbone.1.running_var_after"])
  jax.tree.map(np.testing.assert_array_equal, after.batch_stats,
               before.batch_stats)
  assert int(after.step) == 1


# --------------------------------------------------------------- converter --


def test_converter_is_strict(ensemble_state_dict):
  sd = dict(ensemble_state_dict)
  with pytest.raises(common.ConversionError, match="backbone.9.weight"):
    convert.convert_ensemble({**sd, "backbone.9.weight": np.zeros(3)})
  missing = {k: v for k, v in sd.items() if k != "m_bg.1.bias"}
  with pytest.raises(common.ConversionError, match="missing keys"):
    convert.convert_ensemble(missing)
  bad = {**sd, "m_shape.1.weight": np.zeros((10, 2048), np.float32)}
  with pytest.raises(common.ConversionError, match="mis-shaped"):
    convert.convert_ensemble(bad)
  # A torchvision ResNet-50 is not an ensemble.
  with pytest.raises(common.ConversionError):
    convert.convert_resnet50(sd)


def test_converter_accepts_dataparallel_prefix(ensemble_state_dict,
                                               ensemble_variables):
  sd = {"module." + k: v for k, v in ensemble_state_dict.items()}
  got = convert.convert_ensemble(sd)
  jax.tree.map(np.testing.assert_array_equal, got, ensemble_variables)


def test_heads_have_torch_default_init():
  model = ensemble_lib.InvariantEnsemble(num_classes=1000, stage_sizes=(1,),
                                         width=512)  # 2048 features
  v = jax.jit(functools.partial(ensemble_lib.init_variables, model,
                                image_size=8))(jax.random.PRNGKey(0))
  bound = 1 / np.sqrt(2048)
  for head in ensemble_lib.HEADS:
    p = v["params"][f"m_{head}_1"]
    assert p["kernel"].shape == (2048, 1000)
    for leaf in (p["kernel"], p["bias"]):
      assert float(jnp.abs(leaf).max()) <= bound
      assert float(jnp.abs(leaf).max()) > 0.99 * bound  # uniform, full range


@pytest.mark.torch
def test_converter_cli_round_trip(ref, tmp_path):
  import torch  # pylint: disable=g-import-not-at-top
  from converters import __main__ as cli  # pylint: disable=g-import-not-at-top
  config, _, formula_weights = ref
  sd = formula_weights(config["resnet50_state_keys"], 1)
  path = tmp_path / "resnet50.pth"
  torch.save({k: torch.from_numpy(v) for k, v in sd.items()}, path)
  out = tmp_path / "resnet50_flax"
  assert cli.main(["resnet50", "--input", str(path), "--output",
                   str(out)]) == 0
  got = convert.load_resnet50(out)
  jax.tree.map(np.testing.assert_array_equal, got,
               convert.convert_resnet50(sd))
  with pytest.raises(FileNotFoundError, match="converters resnet50"):
    convert.load_resnet50(tmp_path / "nowhere")
