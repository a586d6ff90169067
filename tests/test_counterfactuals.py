"""Counterfactual generation (SPEC §3.1), its provenance, and the shard format.

The inference form the generator runs (CGN(folded=True)) is tested against
the module in tests/test_cgn_inference.py.
"""

import hashlib
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cgn_jax import provenance
from cgn_jax.counterfactuals import mnist as cf
from cgn_jax.data import shards
from cgn_jax.models import cgn as cgn_lib

CFS = 3
SHAPES = 200  # two permutation groups of 100


def _constant_textures(variables):
  """Variables whose foreground is +1 and background -1 everywhere.

  The last BatchNorm of each texture mechanism gets scale 0 and bias +-20,
  so tanh saturates: a composite then shows the mask alone (2m - 1).
  """
  v = jax.tree.map(lambda a: a, variables)
  for name, sign in (("f_text1", 1.0), ("f_text2", -1.0)):
    bn = dict(v["params"][name]["layers_11"])
    bn["scale"] = jnp.zeros_like(bn["scale"])
    bn["bias"] = jnp.full_like(bn["bias"], 20.0 * sign)
    v["params"][name] = dict(v["params"][name], layers_11=bn)
  return v


@pytest.fixture(scope="module")
def block(model_and_variables):
  model, variables = model_and_variables
  fn = cf.Generator(model, CFS, SHAPES, 1, keep_mask=True)
  out = jax.device_get(fn(_constant_textures(variables),
                          jax.random.PRNGKey(7), 0))
  return out


def test_block_shapes_and_order(block):
  n = SHAPES * CFS
  assert block["image"].shape == (n, 32, 32, 3)
  assert block["image"].dtype == np.uint8
  for k in ("label", "fg_label", "bg_label", "shape_id"):
    assert block[k].shape == (n,) and block[k].dtype == np.int32
  assert block["mask"].shape == (SHAPES, 32, 32, 1)
  # Upstream order: group, pass, sample; each shape sample used CFS times.
  ids = block["shape_id"].reshape(SHAPES // 100, CFS, 100)
  for g in range(SHAPES // 100):
    for c in range(CFS):
      np.testing.assert_array_equal(ids[g, c], g * 100 + np.arange(100))


def test_shape_labels_are_as_drawn(block):
  # generate_fn: block b uses fold_in(key, b); its first split draws y.
  k_y = jax.random.split(jax.random.fold_in(jax.random.PRNGKey(7), 0), 3)[0]
  y = np.asarray(jax.random.randint(k_y, (SHAPES,), 0, 10, jnp.int32))
  np.testing.assert_array_equal(block["label"], y[block["shape_id"]])


def test_texture_labels_permute_the_shape_labels_per_group_and_pass(block):
  lab = block["label"].reshape(-1, 100)
  for key in ("fg_label", "bg_label"):
    other = block[key].reshape(-1, 100)
    for row in range(len(lab)):  # one row = one group in one pass
      np.testing.assert_array_equal(np.sort(other[row]), np.sort(lab[row]))
    # a permutation, not the identity (probability ~1e-100 otherwise)
    assert np.mean(other != lab) > 0.5
  assert np.mean(block["fg_label"] != block["bg_label"]) > 0.5


def test_one_mask_per_shape_sample(block):
  # With foreground +1 and background -1 an image is 2m - 1: the counter-
  # factuals of one shape sample are identical and show its stored mask.
  expect = shards.quantize(np.repeat(2.0 * block["mask"] - 1.0, 3, -1))
  got = block["image"]
  diff = np.abs(got.astype(int) - expect[block["shape_id"]].astype(int))
  assert diff.max() <= 1  # tanh(20) vs 1 and float rounding
  by_shape = got.reshape(SHAPES // 100, CFS, 100, -1)
  assert np.abs(by_shape.astype(int) - by_shape[:, :1].astype(int)).max() <= 1
  assert len(np.unique(block["mask"].reshape(SHAPES, -1), axis=0)) == SHAPES


def _digest(directory: pathlib.Path) -> dict:
  return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
          for p in sorted(directory.iterdir())}


def test_same_seed_same_bytes(model_and_variables, tmp_path):
  model, variables = model_and_variables
  kw = dict(num=650, cfs_per_shape=CFS, shapes_per_block=100,
            shard_size=128, progress=False)
  a = cf.write_counterfactuals(tmp_path / "a", variables, model, seed=3, **kw)
  b = cf.write_counterfactuals(tmp_path / "b", variables, model, seed=3,
                               blocks_per_call=2, **kw)
  c = cf.write_counterfactuals(tmp_path / "c", variables, model, seed=4, **kw)
  assert _digest(a) == _digest(b)
  assert _digest(a)["image-00000.npy"] != _digest(c)["image-00000.npy"]
  src = shards.ShardedSource(a)
  assert len(src) == cf.dataset_size(650, CFS) == 600  # upstream's floor
  assert [s["num"] for s in src.index["shards"]] == [128] * 4 + [88]
  assert not (tmp_path / "a.tmp").exists()


def test_dataset_size_rule():
  assert cf.dataset_size(100_000, 10) == 100_000
  assert cf.dataset_size(10_999, 5) == 10_500
  with pytest.raises(ValueError, match="smaller than one group"):
    cf.dataset_size(999, 10)


def test_shard_reader_round_trips(tmp_path):
  rng = np.random.default_rng(0)
  n = 53
  arrays = {"image": rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8),
            "label": rng.integers(0, 10, n).astype(np.int32)}
  shards.write_arrays(tmp_path / "d", arrays, shard_size=10, batch=7,
                  metadata={"variant": "wildlife"})
  src = shards.ShardedSource(tmp_path / "d")
  assert len(src) == n and src.metadata == {"variant": "wildlife"}
  idx = rng.permutation(n)[:31]
  got = src.gather(idx)
  for k in arrays:
    np.testing.assert_array_equal(got[k], arrays[k][idx])
  rec = src[n - 1]
  np.testing.assert_array_equal(rec["image"], arrays["image"][-1])
  assert len(src.__getitems__([0, 5])) == 2
  both = shards.ConcatSource(
      [src, shards.ShardedSource(tmp_path / "d", ["label"])])
  assert len(both) == 2 * n
  got = both.gather([n + 2, 1])
  assert set(got) == {"label"}  # fields common to both parts
  np.testing.assert_array_equal(got["label"], arrays["label"][[2, 1]])
  with pytest.raises(IndexError):
    src.gather([n])
  with pytest.raises(KeyError, match="no field"):
    shards.ShardedSource(tmp_path / "d", ["mask"])
  with pytest.raises(FileNotFoundError, match="generate.py"):
    shards.ShardedSource(tmp_path)
  with pytest.raises(FileExistsError):
    shards.ShardWriter(tmp_path / "d")


def test_quantisation_error_is_at_most_half_a_level():
  x = np.linspace(-1, 1, 10_001, dtype=np.float32)
  q = shards.quantize(x)
  assert q.dtype == np.uint8 and q.min() == 0 and q.max() == 255
  assert np.abs(shards.dequantize(q) - x).max() <= 0.5 / 127.5 + 1e-6
  np.testing.assert_array_equal(np.asarray(shards.quantize(jnp.asarray(x))), q)


def test_failed_write_leaves_nothing(tmp_path):
  with pytest.raises(RuntimeError):
    with shards.ShardWriter(tmp_path / "x", shard_size=4) as w:
      w.write({"label": np.arange(6)})
      raise RuntimeError("crash")
  assert not (tmp_path / "x").exists() and not (tmp_path / "x.tmp").exists()
