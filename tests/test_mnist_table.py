"""A tiny end-to-end run of the MNIST table command on the authors' CGN."""

import json

import jax
import pytest

from cgn_jax import paths
from cgn_jax.experiments import mnist_table

pytestmark = [pytest.mark.shared, pytest.mark.torch]


@pytest.fixture
def compile_cache(tmp_path):
  # The two classifier runs compile the same step: share the executables.
  old = (jax.config.jax_compilation_cache_dir,
         jax.config.jax_persistent_cache_min_compile_time_secs)
  jax.config.update("jax_compilation_cache_dir", str(tmp_path / "xla"))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
  yield
  jax.config.update("jax_compilation_cache_dir", old[0])
  jax.config.update("jax_persistent_cache_min_compile_time_secs", old[1])


def test_table_command_end_to_end(tmp_path, mnist_dir, compile_cache):
  del mnist_dir, compile_cache  # the fixture points CGN_MNIST_DIR at MNIST
  cgn_dir = paths.upstream_dir()  # raw cgn_<variant>_MNIST.pth files
  work = tmp_path / "table"
  rc = mnist_table.main([
      "--cgn-dir", str(cgn_dir), "--workdir", str(work), "--num", "200",
      "--cfs-per-shape", "1", "--epochs", "1", "--test-subset", "640",
      "--num-real", "640", "--variants", "wildlife"])
  assert rc == 0
  table = json.loads((work / "mnist_table.json").read_text())
  rows = {r["setting"].split(" (")[0]: r for r in table["rows"]}
  assert list(rows) == ["ours: counterfactuals only",
                        "ours: counterfactuals + real",
                        "paper: Original + CGN",
                        "[RR] pretrained CGN, with real images",
                        "[RR] pretrained CGN, without real images"]
  for r in rows.values():
    assert set(r) == {"setting", *mnist_table.VARIANTS}
  assert rows["paper: Original + CGN"]["wildlife"] == [99.2, 85.7]
  ours = rows["ours: counterfactuals only"]
  assert ours["colored"] is None  # not run
  train, test = ours["wildlife"]
  assert 0 <= train <= 100 and 0 <= test <= 100
  res = table["results"]["wildlife"]
  assert res["num_counterfactuals"] == 200
  assert res["cf_real"]["epochs"] == res["cf_only"]["epochs"] == 1
  md = (work / "mnist_table.md").read_text()
  assert md.splitlines()[0] == ("| setting | C train | C test | DC train | "
                                "DC test | W train | W test |")
  assert len(md.splitlines()) == 2 + 5
  for name in ("cf_only", "cf_real"):
    per_epoch = json.loads(
        (work / "wildlife" / name / "results.json").read_text())["epochs"]
    assert per_epoch[0]["epoch"] == 1
    assert {"train_accuracy", "test_accuracy"} <= set(per_epoch[0])
