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

pytestmark = pytest.mark.usefixtures("fast_compile")

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
  _synthetic(root, 640, 0, cf_mnist.REAL_TRAIN_DIR)
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


def _params(workdir, step):
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  path = pathlib.Path(workdir) / "checkpoints" / str(step) / "state"
  with ocp.StandardCheckpointer() as ckptr:
    return jax.tree.map(np.asarray, ckptr.restore(path))


def test_vmapped_classifiers_equal_separate_runs(real_dir, tmp_path):
  from cgn_jax.train import classifier_mnist, classifier_mnist_many  # pylint: disable=g-import-not-at-top
  c = _classifier_config(real_dir, many=True)
  c.steps_per_call = 3  # a scan of 3 vmapped steps, cut at epoch ends
  out = classifier_mnist_many.train_and_evaluate(c, tmp_path / "many")
  steps = 2 * (640 // 64)
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
