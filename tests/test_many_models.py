"""K models in one vmapped program give the numbers of K separate runs.

Classifier: two seeds through `classifier_mnist_many` against two runs of
`classifier_mnist` on a tiny synthetic shard dataset (no shared assets).
CGN: two seeds through `cgn_mnist_many` against two runs of `cgn_mnist` at
the `:smoke` size (needs the MNIST digits).
"""

import json
import pathlib

import jax
import numpy as np
import pytest

from cgn_jax.counterfactuals import mnist as cf_mnist
from cgn_jax.data import shards


SEEDS = (0, 1)


def _synthetic(root: pathlib.Path, n: int, seed: int, split: str):
  """Digits stand-ins: a class-dependent mean colour plus noise."""
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, 10, n).astype(np.int32)
  base = (labels[:, None, None, None] * 25).astype(np.float32)
  images = np.clip(base + rng.normal(0, 40, (n, 32, 32, 3)), 0, 255)
  shards.write_arrays(root / split, {"image": images.astype(np.uint8),
                                     "label": labels},
                      shard_size=256,
                      metadata={"provenance": {"synthetic": split}})


@pytest.fixture(scope="module")
def real_dir(tmp_path_factory):
  root = tmp_path_factory.mktemp("synthetic")
  _synthetic(root, 256, 0, cf_mnist.REAL_TRAIN_DIR)
  _synthetic(root, 200, 1, cf_mnist.REAL_TEST_DIR)
  return root


def _classifier_config(real_dir, many: bool):
  from configs import classifier_mnist, classifier_mnist_many  # pylint: disable=g-import-not-at-top
  c = (classifier_mnist_many.get_config("colored,original,seeds=2,epochs=2")
       if many else classifier_mnist.get_config("colored,original,epochs=2"))
  c.real_dir = str(real_dir)
  c.test_batch_size = 64
  c.log_every_steps = 4
  c.read_threads = 1
  return c


def _metrics(workdir):
  lines = (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines()
  return [json.loads(line) for line in lines]


def _params(workdir, step):
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  path = pathlib.Path(workdir) / "checkpoints" / str(step) / "state"
  with ocp.StandardCheckpointer() as ckptr:
    return jax.tree.map(np.asarray, ckptr.restore(path))


def test_vmapped_classifiers_equal_separate_runs(real_dir, tmp_path,
                                                 compile_cache):
  del compile_cache
  from cgn_jax.train import classifier_mnist, classifier_mnist_many  # pylint: disable=g-import-not-at-top
  c = _classifier_config(real_dir, many=True)
  out = classifier_mnist_many.train_and_evaluate(c, tmp_path / "many")
  steps = 2 * (256 // 64)
  for s in SEEDS:
    single = _classifier_config(real_dir, many=False)
    single.seed = s
    ref = classifier_mnist.train_and_evaluate(single, tmp_path / f"one{s}")
    got = json.loads((tmp_path / "many" / f"seed_{s}" / "results.json")
                     .read_text())
    assert got["config"] == ref["config"]
    assert len(got["epochs"]) == 2
    for e_got, e_ref in zip(got["epochs"], ref["epochs"]):
      for k in ("train_accuracy", "test_accuracy"):
        assert e_got[k] == e_ref[k], (s, k)
      for k in ("train_loss", "test_loss", "lr"):
        np.testing.assert_allclose(e_got[k], e_ref[k], rtol=1e-6, atol=0)
    a = _params(tmp_path / "many" / f"seed_{s}", steps)
    b = _params(tmp_path / f"one{s}", steps)
    assert int(a["step"]) == int(b["step"]) == steps
    diff = jax.tree.map(lambda x, y: float(np.max(np.abs(x - y))), a, b)
    assert max(jax.tree.leaves(diff)) <= 1e-6, diff
  # The two seeds are different models, and the summary says N=2.
  assert out["summary"]["n"] == 2
  acc = out["summary"]["test_accuracy"]
  assert len(acc["values"]) == 2
  assert np.isclose(acc["mean"], np.mean(acc["values"]))
  summary = json.loads((tmp_path / "many" / "results.json").read_text())
  assert summary["seeds"] == list(SEEDS)


@pytest.mark.shared
@pytest.mark.usefixtures("fast_compile")
def test_vmapped_cgns_equal_separate_runs(mnist_dir, tmp_path):
  del mnist_dir  # sets CGN_MNIST_DIR
  from cgn_jax.models import cgn_weights  # pylint: disable=g-import-not-at-top
  from cgn_jax.train import cgn_mnist, cgn_mnist_many  # pylint: disable=g-import-not-at-top
  from configs import cgn_mnist_many as many_config  # pylint: disable=g-import-not-at-top
  c = many_config.get_config("double_colored,smoke,seeds=2")
  one = cgn_mnist_many.model_config(c, 0)
  programs = cgn_mnist.build_programs(one, with_vgg=True)
  cgn_mnist_many.train_and_evaluate(c, tmp_path / "many", programs=programs)
  steps = c.num_train_steps
  for s in SEEDS:
    cfg = cgn_mnist_many.model_config(c, s)
    cgn_mnist.train_and_evaluate(cfg, tmp_path / f"one{s}",
                                 programs=programs)
    d = tmp_path / "many" / f"seed_{s}"
    a, b = _params(d, steps), _params(tmp_path / f"one{s}", steps)
    assert int(a["step"]) == int(b["step"]) == steps
    # Vmapped convolutions (grouped, per-model weights) sum in another
    # order: the losses agree to float rounding (~1e-7 relative, every
    # step, below), but Adam's first steps are ~lr·sign(grad), so a gradient
    # entry within rounding of zero can flip its update (2·lr per step).
    # So: no entry beyond that bound, and almost all within 1e-6.
    params = lambda t: np.concatenate(
        [np.ravel(v) for v in jax.tree.leaves((t["g_params"],
                                               t["d_params"]))])
    delta = np.abs(params(a) - params(b))
    assert delta.max() <= 2 * c.optim.lr * steps, delta.max()
    assert np.mean(delta > 1e-6) < 0.01, np.mean(delta > 1e-6)
    for m_got, m_ref in zip(_metrics(d), _metrics(tmp_path / f"one{s}")):
      assert m_got.keys() == m_ref.keys()
      for k in m_got:
        if k not in ("compile_s", "steps_per_second"):
          np.testing.assert_allclose(m_got[k], m_ref[k], rtol=1e-5,
                                     atol=1e-7, err_msg=k)
    got = json.loads((d / "results.json").read_text())["final_losses"]
    ref = json.loads((tmp_path / f"one{s}" / "results.json").read_text())[
        "final_losses"]
    assert got.keys() == ref.keys()
    for k in got:
      np.testing.assert_allclose(got[k], ref[k], rtol=1e-5, atol=1e-6)
    assert (d / "samples").is_dir()
    # The exported generator loads like a converted authors' checkpoint.
    variables, meta = cgn_weights.load_cgn(d / cgn_mnist_many.GENERATOR_DIR,
                                           with_metadata=True)
    for x, y in zip(jax.tree.leaves(variables["params"]),
                    jax.tree.leaves(a["g_params"])):
      np.testing.assert_array_equal(x, y)
    assert meta["dataset"] == "double_colored_MNIST"
  summary = json.loads((tmp_path / "many" / "results.json").read_text())
  assert summary["seeds"] == list(SEEDS) and summary["step"] == steps
