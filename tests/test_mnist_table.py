"""A tiny end-to-end run of the MNIST table command on the authors' CGN.

The table run is far too small to learn (its accuracies are only checked to
be percentages), so a second test trains the same classifier on the run's
real training images and checks that it learned.
"""

import json

import jax
import pytest

from cgn_jax import paths
from cgn_jax.experiments import mnist_table

pytestmark = [pytest.mark.shared, pytest.mark.torch]

VARIANT = "double_colored"


@pytest.fixture(scope="module")
def table_run(tmp_path_factory, mnist_dir, compile_cache):
  """The table command at N=200, 1 epoch; returns its workdir."""
  del mnist_dir, compile_cache  # the fixture points CGN_MNIST_DIR at MNIST
  cgn_dir = paths.upstream_dir()  # raw cgn_<variant>_MNIST.pth files
  work = tmp_path_factory.mktemp("table")
  rc = mnist_table.main([
      "--cgn-dir", str(cgn_dir), "--workdir", str(work), "--num", "200",
      "--cfs-per-shape", "1", "--epochs", "1", "--test-subset", "640",
      "--num-real", "640", "--variants", VARIANT])
  assert rc == 0
  return work


def test_table_command_end_to_end(table_run):
  work = table_run
  table = json.loads((work / "mnist_table.json").read_text())
  rows = {r["setting"].split(" (")[0]: r for r in table["rows"]}
  assert list(rows) == ["ours: counterfactuals only",
                        "ours: counterfactuals + real",
                        "paper: Original + CGN",
                        "[RR] pretrained CGN, with real images",
                        "[RR] pretrained CGN, without real images"]
  for r in rows.values():
    assert set(r) == {"setting", *mnist_table.VARIANTS}
  assert rows["paper: Original + CGN"]["double_colored"] == [97.4, 89.0]
  ours = rows["ours: counterfactuals only"]
  assert ours["colored"] is None and ours["wildlife"] is None  # not run
  train, test = ours[VARIANT]
  assert 0 <= train <= 100 and 0 <= test <= 100
  res = table["results"][VARIANT]
  assert res["num_counterfactuals"] == 200
  assert res["cf_real"]["epochs"] == res["cf_only"]["epochs"] == 1
  md = (work / "mnist_table.md").read_text()
  assert md.splitlines()[0] == ("| setting | C train | C test | DC train | "
                                "DC test | W train | W test |")
  assert len(md.splitlines()) == 2 + 5
  for name in ("cf_only", "cf_real"):
    per_epoch = json.loads(
        (work / VARIANT / name / "results.json").read_text())["epochs"]
    assert per_epoch[0]["epoch"] == 1
    assert {"train_accuracy", "test_accuracy"} <= set(per_epoch[0])


def test_a_tiny_real_run_learns(table_run, tmp_path):
  """The table's classifier on the run's 640 real training images.

  In the double-colored train split the colours give the label away, so 30
  steps learn it: measured 24 -> 49 -> 81 % training accuracy over the
  three epochs (seed 0). A pipeline that loses the tie between images and
  labels (shuffled or misaligned shards, a wrong label column, a dead
  optimiser) stays near 10 %. The test accuracy stays near chance, as it
  should: the test colours are drawn independently of the label.
  """
  from configs import classifier_mnist  # pylint: disable=g-import-not-at-top
  from cgn_jax.train import classifier_mnist as trainer  # pylint: disable=g-import-not-at-top
  config = classifier_mnist.get_config(f"{VARIANT},original,epochs=3")
  config.counterfactuals = str(table_run / VARIANT / "data")
  config.test_subset = 640
  result = trainer.train_and_evaluate(config, tmp_path / "real")
  acc = [e["train_accuracy"] for e in result["epochs"]]
  assert len(acc) == 3 and acc[0] < 0.4, acc
  assert acc[-1] > 0.6, acc
