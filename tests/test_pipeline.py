"""The grain input pipeline: order, sharding, rendering and checkpointing."""

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from cgn_jax.data import mnist
from cgn_jax.data import pipeline
from cgn_jax.data import variants



def _toy(n=50):
  digits = np.arange(n, dtype=np.uint8)[:, None, None] * np.ones(
      (1, 28, 28), np.uint8)
  return digits, np.arange(n, dtype=np.int32) % 10


def _batches(ds, k):
  it = iter(ds.to_iter_dataset())
  return [next(it) for _ in range(k)]


def test_batches_keys_shapes_and_epochs():
  digits, labels = _toy(50)
  ds = pipeline.make_dataset(digits, labels, 16, seed=0, num_epochs=2,
                             process_index=0, process_count=1)
  batches = list(ds.to_iter_dataset())
  assert len(batches) == 2 * (50 // 16)  # drop_remainder within each epoch
  for b in batches:
    assert set(b) == {"digits", "label"}
    assert b["digits"].shape == (16, 28, 28) and b["digits"].dtype == np.uint8
    assert b["label"].shape == (16,) and b["label"].dtype == np.int32
    np.testing.assert_array_equal(b["digits"][:, 0, 0] % 10, b["label"])
  first = np.concatenate([b["digits"][:, 0, 0] for b in batches[:3]])
  second = np.concatenate([b["digits"][:, 0, 0] for b in batches[3:]])
  assert len(set(first)) == 48 and len(set(second)) == 48  # no repeats
  assert not np.array_equal(first, second)  # reshuffled each epoch
  again = pipeline.make_dataset(digits, labels, 16, seed=0, num_epochs=2,
                                process_index=0, process_count=1)
  np.testing.assert_array_equal(first, np.concatenate(
      [b["digits"][:, 0, 0] for b in _batches(again, 3)]))
  other = pipeline.make_dataset(digits, labels, 16, seed=1, process_index=0,
                                process_count=1)
  assert not np.array_equal(first, np.concatenate(
      [b["digits"][:, 0, 0] for b in _batches(other, 3)]))


def test_processes_split_the_global_batch():
  digits, labels = _toy(64)
  whole = _batches(pipeline.make_dataset(digits, labels, 8, seed=5,
                                         process_index=0, process_count=1), 5)
  parts = [_batches(pipeline.make_dataset(digits, labels, 8, seed=5,
                                          process_index=p, process_count=4),
                    5) for p in range(4)]
  for t in range(5):
    assert parts[0][t]["label"].shape == (2,)
    np.testing.assert_array_equal(
        np.concatenate([parts[p][t]["digits"] for p in range(4)]),
        whole[t]["digits"])
  with pytest.raises(ValueError, match="divisible"):
    pipeline.make_dataset(digits, labels, 6, seed=0, process_index=0,
                          process_count=4)


def test_iterator_checkpoint_through_orbax(tmp_path):
  digits, labels = _toy(40)

  def fresh():
    ds = pipeline.make_dataset(digits, labels, 8, seed=7, process_index=0,
                               process_count=1)
    return iter(ds.to_iter_dataset(grain.ReadOptions(
        num_threads=1, prefetch_buffer_size=2)))

  it = fresh()
  for _ in range(3):
    next(it)
  params = {"w": np.arange(3.)}
  with ocp.CheckpointManager(tmp_path / "ckpt") as mngr:
    mngr.save(3, args=ocp.args.Composite(
        state=ocp.args.StandardSave(params),
        data=pipeline.iterator_save_args(it)))
    mngr.wait_until_finished()
    # Past the epoch boundary (5 batches an epoch), so epochs must resume too.
    expected = [next(it) for _ in range(6)]
    it2 = fresh()
    restored = mngr.restore(3, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(params),
        data=pipeline.iterator_restore_args(it2)))
  np.testing.assert_array_equal(restored["state"]["w"], params["w"])
  for want in expected:
    got = next(it2)
    np.testing.assert_array_equal(got["digits"], want["digits"])
    np.testing.assert_array_equal(got["label"], want["label"])


@pytest.mark.shared
def test_train_iterator_and_device_render(tfds_dir, tmp_path):
  it = pipeline.make_train_iterator("wildlife", 32, seed=0, data_dir=tfds_dir)
  batch = next(it)
  assert batch["digits"].shape == (32, 28, 28)
  assert pipeline.steps_per_epoch("wildlife", 32, data_dir=tfds_dir) == (
      50000 // 32)
  render = jax.jit(pipeline.device_render("wildlife", "train"))
  images = render(batch, jax.random.key(0))
  assert images.shape == (32, 32, 32, 3) and images.dtype == np.float32
  assert -1 <= float(images.min()) and float(images.max()) <= 1

  state = it.get_state()
  want = [next(it)["label"] for _ in range(2)]
  it2 = pipeline.make_train_iterator("wildlife", 32, seed=0,
                                     data_dir=tfds_dir)
  it2.set_state(state)
  for w in want:
    np.testing.assert_array_equal(next(it2)["label"], w)


def test_lntl_batches_carry_rgb_images(tmp_path, monkeypatch):
  rng = np.random.default_rng(0)
  data = {f"{s}_image": rng.integers(0, 256, (8, 28, 28, 3), np.uint8)
          for s in ("train", "test")}
  data.update({f"{s}_label": np.arange(8) for s in ("train", "test")})
  path = tmp_path / "lntl.npy"
  np.save(path, data, allow_pickle=True)
  monkeypatch.setenv(variants.COLORED_NPY_ENV, str(path))
  it = pipeline.make_train_iterator("colored", 4, seed=0)
  batch = next(it)
  assert set(batch) == {"image", "label"}
  assert batch["image"].shape == (4, 28, 28, 3)
  images = jax.jit(pipeline.device_render("colored"))(batch, jax.random.key(0))
  assert images.shape == (4, 32, 32, 3)
