"""ImageNet counterfactual datasets from a smoke-size CGN (SPEC §5).

One tiny random CGN (`smoke_model`: 32x32, BigGAN width 4, U²-Netp) and
one compiled generation step (`programs`, passed to every run) serve every
test here.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cgn_jax.counterfactuals import imagenet as cf
from cgn_jax.data import imagenet_classes
from cgn_jax.data import records

pytestmark = pytest.mark.usefixtures("fast_compile")

NUM, BATCH, SHARD = 10, 4, 4
FIELDS = ("background", "foreground", "mask")


@pytest.fixture(scope="module")
def cgn():
  model = cf.smoke_model()
  return model, cf.smoke_variables(model)


@pytest.fixture(scope="module")
def programs(cgn):
  return cf.build_programs(cgn[0], fields=FIELDS)


def _write(cgn, directory, programs=None, **kw):
  model, variables = cgn
  args = dict(num=NUM, seed=3, batch_size=BATCH, shard_size=SHARD,
              fields=FIELDS, progress=False, workers=2, programs=programs)
  args.update(kw)
  return cf.write_dataset(directory, model, variables, **args)


@pytest.fixture(scope="module")
def dataset(cgn, programs, tmp_path_factory):
  return _write(cgn, tmp_path_factory.mktemp("cf") / "a", programs)


def _shard_bytes(directory):
  return [p.read_bytes() for p in records.shard_paths(directory)]


def test_same_seed_same_bytes_and_labels(cgn, programs, dataset, tmp_path):
  again = _write(cgn, tmp_path / "b", programs)
  assert _shard_bytes(again) == _shard_bytes(dataset)
  src = records.CounterfactualSource(dataset)
  assert [src[i]["index"] for i in range(NUM)] == list(range(NUM))
  _, ys = cf.draw_inputs(jax.random.PRNGKey(3), jnp.arange(NUM),
                         mode="random", truncation=0.5)
  np.testing.assert_array_equal(src.labels(), np.asarray(ys))
  assert src[0]["image"].shape == (32, 32, 3)
  assert src[0]["mask"].shape == (32, 32, 1)
  meta = records.read_metadata(dataset)["metadata"]
  assert meta["seed"] == 3 and meta["mode"] == "random"
  assert meta["truncation"] == 0.5 and len(meta["cgn_sha256"]) == 64


def test_labels_name_the_mechanisms_that_made_the_image(cgn, dataset):
  """The stored shape label is the class the mask came from, etc."""
  model, variables = cgn
  src = records.CounterfactualSource(dataset)
  idx = np.array([1, 6])
  u, _ = cf.draw_inputs(jax.random.PRNGKey(3), jnp.asarray(idx),
                        mode="random", truncation=0.5)
  labels = src.labels()[idx]
  forward = jax.jit(cf.counterfactual_forward, static_argnums=(0, 4))
  out = forward(model, variables, u, tuple(jnp.asarray(labels[:, k])
                                           for k in range(3)), 0.5)
  stored = {f: np.stack([src[i][f] for i in idx]).astype(np.int32)
            for f in ("mask", "foreground", "background", "image")}
  mask = np.asarray(records.unit_to_uint8(out["mask"]), np.int32)
  assert np.abs(mask - stored["mask"]).max() <= 1     # PNG: lossless
  def jpeg(x):  # the stored images went through JPEG q75 (random CGNs
    # draw pixel noise, which JPEG changes a lot): compare after the same.
    return np.stack([records.decode_image(records.encode_jpeg(a, 75))
                     for a in np.asarray(records.to_uint8(x))]).astype(int)

  errors = {}
  for f, key in (("foreground", "foreground"), ("background", "background"),
                 ("x_gen", "image")):
    errors[f] = np.abs(jpeg(out[f]) - stored[key]).mean()
    assert errors[f] < 1, f
  # The same images from permuted labels are off by several times the JPEG
  # round trip: the labels matter. (The random smoke BigGANs, with settled
  # spectral norms, depend on the class only mildly, so this is relative.)
  swapped = forward(model, variables, u, tuple(
      jnp.asarray(labels[:, k]) for k in (1, 2, 0)), 0.5)
  err = np.abs(jpeg(swapped["x_gen"]) - stored["image"]).mean()
  print(f"x_gen error: labels as stored {errors['x_gen']:.3f}, "
        f"permuted {err:.3f}")
  assert err > max(1.0, 4 * errors["x_gen"]), (err, errors["x_gen"])
  swapped_mask = np.asarray(records.unit_to_uint8(swapped["mask"]), int)
  mask_err = np.abs(swapped_mask - stored["mask"]).mean()
  assert mask_err > max(0.05, 4 * np.abs(mask - stored["mask"]).mean())


def test_killed_run_resumes_without_gaps_or_duplicates(cgn, programs, dataset,
                                                      tmp_path, monkeypatch):
  real = records.ShardedWriter.write_shard
  calls = []

  def dying(self, i, recs):
    if calls:
      # Killed while writing the second shard: a partial temp file remains.
      (self.shard_path(i).parent / (self.shard_path(i).name + ".tmp-1")
       ).write_bytes(b"partial")
      raise KeyboardInterrupt
    calls.append(i)
    return real(self, i, recs)

  monkeypatch.setattr(records.ShardedWriter, "write_shard", dying)
  with pytest.raises(KeyboardInterrupt):
    _write(cgn, tmp_path / "c", programs)
  monkeypatch.setattr(records.ShardedWriter, "write_shard", real)
  assert len(list((tmp_path / "c").glob("*.array_record"))) == 1
  with pytest.raises(FileNotFoundError, match="incomplete"):
    records.CounterfactualSource(tmp_path / "c")
  _write(cgn, tmp_path / "c", programs)           # the rerun
  assert _shard_bytes(tmp_path / "c") == _shard_bytes(dataset)
  src = records.CounterfactualSource(tmp_path / "c", decode=False)
  assert sorted(src[i]["index"] for i in range(len(src))) == list(range(NUM))
  assert not list((tmp_path / "c").glob("*.tmp*"))
  with pytest.raises(records.DatasetMismatchError, match="seed"):
    _write(cgn, tmp_path / "c", programs, seed=4)
  # Programs of other settings are refused, not silently used.
  with pytest.raises(ValueError, match="another model or generation"):
    _write(cgn, tmp_path / "d", programs, truncation=0.4)


def test_export_round_trip(dataset, tmp_path):
  out = records.export_upstream(dataset, tmp_path / "train_run",
                                run_name="run", fields=("mask",))
  lines = (out / "labels.csv").read_text().splitlines()
  assert lines[0] == ",im_name,shape_cls,texture_cls,bg_cls"
  src = records.CounterfactualSource(dataset, decode=False)
  labels = records.CounterfactualSource(dataset).labels()
  for i, line in enumerate(lines[1:]):
    idx, name, *ys = line.split(",")
    assert (int(idx), name) == (i, f"run_{i:07d}")
    assert [int(y) for y in ys] == labels[i].tolist()
    assert (out / "ims" / f"{name}_x_gen.jpg").read_bytes() == src[i]["image"]
    assert (out / "ims" / f"{name}_mask.png").read_bytes() == src[i]["mask"]


def test_class_modes_are_per_image_draws():
  key = jax.random.PRNGKey(0)
  idx = jnp.arange(64)
  u, ys = cf.draw_inputs(key, idx, mode="best_classes", truncation=0.5)
  ys = np.asarray(ys)
  for k, allowed in enumerate(imagenet_classes.BEST_CLASSES):
    assert set(ys[:, k]) <= set(allowed)
    assert len(set(ys[:, k])) > 10
  assert float(jnp.abs(u).max()) <= 2 * 0.5
  # Image j's draw does not depend on the batch it is in.
  u2, ys2 = cf.draw_inputs(key, jnp.array([5, 63]), mode="best_classes",
                           truncation=0.5)
  np.testing.assert_array_equal(np.asarray(ys2), ys[[5, 63]])
  np.testing.assert_array_equal(np.asarray(u2), np.asarray(u)[[5, 63]])
  _, fixed = cf.draw_inputs(key, idx[:3], mode="fixed_classes",
                            classes=(207, 933, 970), truncation=0.5)
  assert np.asarray(fixed).tolist() == [[207, 933, 970]] * 3
  _, rand = cf.draw_inputs(key, idx, mode="random", truncation=0.5)
  assert 0 <= int(rand.min()) and int(rand.max()) < 1000
  with pytest.raises(ValueError, match="three classes"):
    cf.check_mode("fixed_classes", None)
  with pytest.raises(ValueError, match="not an ImageNet class"):
    cf.check_mode("fixed_classes", (1, 2, 1000))
  with pytest.raises(ValueError, match="best_classes"):
    cf.check_mode("bogus", None)
  assert cf.parse_classes("207, 933,970") == (207, 933, 970)


def test_generate_config_smoke(cgn, programs, tmp_path):
  from configs import counterfactuals_imagenet  # pylint: disable=g-import-not-at-top
  config = counterfactuals_imagenet.get_config(
      f"smoke,batch_size={BATCH}")
  config.fields = ",".join(FIELDS)   # the compiled step of this module
  config.seed = 3
  out = cf.run_config(config, tmp_path, programs=programs)
  src = records.CounterfactualSource(out["counterfactuals"])
  assert len(src) == 16 and (tmp_path / "preview.png").is_file()
  assert (out["export"] / "labels.csv").read_text().count("\n") == 17
  assert records.read_metadata(out["counterfactuals"])["metadata"][
      "cgn_sha256"] == cf.variables_sha256(cgn[1])


def test_generate_py_dispatches_imagenet_and_fails_in_one_line(tmp_path):
  import os  # pylint: disable=g-import-not-at-top
  import pathlib  # pylint: disable=g-import-not-at-top
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  root = pathlib.Path(__file__).resolve().parents[1]
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env.pop("CGN_JAX_VERBOSE", None)
  proc = subprocess.run(
      [sys.executable, "generate.py",
       "--config=configs/counterfactuals_imagenet.py",
       f"--workdir={tmp_path}", f"--config.cgn={tmp_path / 'nope'}",
       "--no-cpu-defaults"], cwd=root, env=env, capture_output=True,
      text=True, timeout=300, check=False)
  assert proc.returncode == 1, proc.stderr[-2000:]
  lines = [l for l in proc.stderr.splitlines() if l.startswith("generate.py")]
  assert len(lines) == 1 and "converters cgn-imagenet" in lines[0], (
      proc.stderr[-2000:])
  assert not (tmp_path / "counterfactuals").exists()


_TWO_DEVICES = """
import sys
import jax
assert jax.device_count() == 2, jax.devices()
from cgn_jax.counterfactuals import imagenet as cf
model = cf.smoke_model()
cf.write_dataset(sys.argv[1], model, cf.smoke_variables(model), num={num},
                 seed=3, batch_size={batch}, shard_size={shard},
                 fields={fields!r}, progress=False, workers=2)
"""


def test_batches_shard_over_two_devices(dataset, tmp_path):
  """The same dataset from a 2-device mesh (each device half a batch)."""
  import os  # pylint: disable=g-import-not-at-top
  import pathlib  # pylint: disable=g-import-not-at-top
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  root = pathlib.Path(__file__).resolve().parents[1]
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_force_host_platform_device_count=2",
             PYTHONPATH=str(root))
  script = _TWO_DEVICES.format(num=NUM, batch=BATCH, shard=SHARD,
                               fields=FIELDS)
  proc = subprocess.run([sys.executable, "-c", script, str(tmp_path / "d2")],
                        cwd=root, env=env, capture_output=True, text=True,
                        timeout=600, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  one = records.CounterfactualSource(dataset)
  two = records.CounterfactualSource(tmp_path / "d2")
  np.testing.assert_array_equal(two.labels(), one.labels())
  for i in range(NUM):
    a, b = one[i], two[i]
    assert np.abs(a["mask"].astype(int) - b["mask"]).max() <= 1
    assert np.abs(a["image"].astype(int) - b["image"]).mean() < 1
