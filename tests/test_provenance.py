"""Reruns never silently reuse stale work (provenance records, overwrite)."""

import json

import jax
import numpy as np
import pytest

from cgn_jax import provenance
from cgn_jax import weights
from cgn_jax.counterfactuals import mnist as cf
from cgn_jax.data import shards
from cgn_jax.models import cgn_weights
from cgn_jax.train import common
from configs import classifier_mnist as cls_config
from configs import counterfactuals_mnist as gen_config

pytestmark = pytest.mark.usefixtures("fast_compile")


def test_differences_name_every_field():
  stored = {"a": 1, "b": {"c": 2, "d": [1, 2]}, "e": "x"}
  wanted = {"a": 1, "b": {"c": 3, "d": (1, 2)}, "f": True}
  assert provenance.differences(stored, wanted) == [
      "b.c: stored 2, now 3", 'e: stored "x", now (absent)',
      "f: stored (absent), now true"]
  provenance.check(stored, dict(stored), what="X", fix="Y")  # equal: fine
  with pytest.raises(provenance.ProvenanceMismatch,
                     match=r"^X was made differently \(b\.c: stored 2, now 3"
                     r".*\); Y$"):
    provenance.check(stored, wanted, what="X", fix="Y")
  with pytest.raises(provenance.ProvenanceMismatch, match="no provenance"):
    provenance.check(None, wanted, what="X", fix="Y")


def _random_cgn(directory, seed: int):
  """A converted-CGN directory with random weights (no init to compile)."""
  rng = np.random.default_rng(seed)
  variables = jax.tree.map(
      lambda s: (rng.uniform(0.5, 1.5, s.shape) if s.shape else
                 np.float32(1)).astype(np.float32) * 0.1,
      cgn_weights.abstract_variables())
  weights.save_variables(directory, variables, {"model": cgn_weights.MODEL})
  return directory


def _gen_config(cgn, **kw):
  c = gen_config.get_config("wildlife,smoke")
  c.cgn, c.num, c.cfs_per_shape, c.shapes_per_block = str(cgn), 100, 1, 100
  c.write_real = False
  for k, v in kw.items():
    setattr(c, k, v)
  return c


def test_generate_refuses_a_set_made_differently(tmp_path):
  cgn_a = _random_cgn(tmp_path / "cgn_a", 0)
  cgn_b = _random_cgn(tmp_path / "cgn_b", 1)
  work = tmp_path / "work"
  out = cf.run_config(_gen_config(cgn_a), work)["counterfactuals"]
  index = out / shards.INDEX
  stamp = index.stat().st_mtime_ns
  record = shards.read_index(out)["metadata"]["provenance"]
  assert record["cgn_sha256"] == weights.fingerprint(
      cgn_weights.load_cgn(cgn_a))
  assert (record["num"], record["cfs_per_shape"], record["seed"]) == (
      100, 1, 0)
  # Same config: the complete set is kept as it is.
  cf.run_config(_gen_config(cgn_a), work)
  assert index.stat().st_mtime_ns == stamp
  # Another seed, num, cfs_per_shape or CGN: refused, naming the field.
  for kw, field in (({"seed": 1}, "seed: stored 0, now 1"),
                    ({"num": 200}, "num: stored 100, now 200"),
                    ({"cfs_per_shape": 2, "num": 200},
                     "cfs_per_shape: stored 1, now 2"),
                    ({"cgn": str(cgn_b)}, "cgn_sha256: stored ")):
    with pytest.raises(provenance.ProvenanceMismatch, match=field) as e:
      cf.run_config(_gen_config(**{"cgn": cgn_a, **kw}), work)
    assert "--config.overwrite=True" in str(e.value)
  assert index.stat().st_mtime_ns == stamp
  # overwrite: regenerated with the new provenance.
  cf.run_config(_gen_config(cgn_b, overwrite=True), work)
  record = shards.read_index(out)["metadata"]["provenance"]
  assert record["cgn_sha256"] == weights.fingerprint(
      cgn_weights.load_cgn(cgn_b))


def _tiny_data(root, cf_seed: int):
  rng = np.random.default_rng(0)
  def arrays(n):
    return {"image": rng.integers(0, 256, (n, 32, 32, 3), np.uint8),
            "label": rng.integers(0, 10, (n,), np.int32)}
  shards.write_arrays(root / cf.CF_DIR, arrays(64), overwrite=True,
                      metadata={"variant": "wildlife", "provenance": {
                          "kind": "counterfactual", "seed": cf_seed}})
  shards.write_arrays(root / cf.REAL_TEST_DIR, arrays(64), overwrite=True,
                      metadata={"variant": "wildlife", "provenance": {
                          "kind": "real", "split": "test"}})


def _cls_config(data, **kw):
  c = cls_config.get_config("wildlife,smoke")
  c.counterfactuals, c.num_counterfactuals, c.test_subset = str(data), 0, 64
  c.test_batch_size = 64
  for k, v in kw.items():
    setattr(c, k, v)
  return c


def test_classifier_refuses_a_checkpoint_made_differently(tmp_path):
  from cgn_jax.train import classifier_mnist  # pylint: disable=g-import-not-at-top
  data, work = tmp_path / "data", tmp_path / "work"
  _tiny_data(data, cf_seed=0)
  classifier_mnist.train_and_evaluate(_cls_config(data), work)
  assert common.has_checkpoint(work)
  stored = json.loads((work / provenance.FILE).read_text())
  assert stored["data"]["counterfactuals"] == {"kind": "counterfactual",
                                               "seed": 0}
  # Another seed: refused before any training, naming the field.
  with pytest.raises(provenance.ProvenanceMismatch,
                     match=r"config\.seed: stored 0, now 1"):
    classifier_mnist.train_and_evaluate(_cls_config(data, seed=1), work)
  # Regenerated data under the same path: refused too.
  _tiny_data(data, cf_seed=5)
  with pytest.raises(provenance.ProvenanceMismatch,
                     match=r"data\.counterfactuals\.seed: stored 0, now 5"):
    classifier_mnist.train_and_evaluate(_cls_config(data), work)
  # overwrite: starts over on the new data.
  results = classifier_mnist.train_and_evaluate(
      _cls_config(data, overwrite=True), work)
  assert [e["epoch"] for e in results["epochs"]] == [1]
  stored = json.loads((work / provenance.FILE).read_text())
  assert stored["data"]["counterfactuals"]["seed"] == 5


def test_guard_workdir_without_a_checkpoint_just_records(tmp_path):
  common.guard_workdir(tmp_path, {"config": {"a": 1}})
  common.guard_workdir(tmp_path, {"config": {"a": 2}})  # nothing to protect
  assert provenance.read(tmp_path) == {"config": {"a": 2}}
  (tmp_path / "checkpoints" / "7").mkdir(parents=True)
  with pytest.raises(provenance.ProvenanceMismatch, match="config.a"):
    common.guard_workdir(tmp_path, {"config": {"a": 3}})
  common.guard_workdir(tmp_path, {"config": {"a": 3}}, overwrite=True)
  assert not (tmp_path / "checkpoints").exists()
