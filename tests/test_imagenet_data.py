"""ImageNet / counterfactual input pipelines on tiny synthetic folders."""

import numpy as np
from PIL import Image
import pytest

from cgn_jax.data import imagenet
from cgn_jax.data import transforms as T

WNIDS = ("n01440764", "n01443537", "n15075141")  # class indices 0, 1, 999


def _write_images(folder, n, seed, size=(40, 30), ext=".JPEG"):
  folder.mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(seed)
  for i in range(n):
    x = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(x).save(folder / f"img_{i:03d}{ext}",
                            format="PNG" if ext == ".png" else "JPEG")


@pytest.fixture
def folder(tmp_path):
  for c, name in enumerate(WNIDS):
    _write_images(tmp_path / "train" / name, 3 + c, seed=c)
  (tmp_path / "train" / WNIDS[0] / "notes.txt").write_text("not an image")
  return tmp_path


def _write_cf(root, split, n, seed=0):
  sub = root / f"{split}_run0"
  _write_images(sub / "ims", 0, seed)
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, 1000, (n, 3))
  # upstream's own (index-column) header form
  lines = [",im_name,shape_cls,texture_cls,bg_cls"]
  for i in range(n):
    name = f"RUN_{i:07d}"
    x = rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)
    Image.fromarray(x).save(sub / "ims" / f"{name}_x_gen.jpg")
    lines.append(f",{name},{labels[i, 0]},{labels[i, 1]},{labels[i, 2]}")
  (sub / "labels.csv").write_text("\n".join(lines) + "\n")
  return labels


def test_class_index_follows_imagenet_json(folder):
  src = imagenet.imagenet_split(folder, "train")
  assert len(src) == 3 + 4 + 5
  np.testing.assert_array_equal(np.bincount(src.labels["label"],
                                            minlength=1000)[[0, 1, 999]],
                                [3, 4, 5])
  assert src.classes[999] == "n15075141" and len(src.classes) == 1000
  rec = src[0]
  assert rec["label"] == 0 and rec["encoded"][:2] == b"\xff\xd8"


def test_other_folder_names_are_sorted(tmp_path):
  for name in ("zebra", "apple", "mango"):
    _write_images(tmp_path / name, 2, seed=1, ext=".png")
  src = imagenet.image_folder(tmp_path)
  assert src.classes == ("apple", "mango", "zebra")
  np.testing.assert_array_equal(src.labels["label"], [0, 0, 1, 1, 2, 2])


def test_missing_folder_names_data_and_source(tmp_path):
  with pytest.raises(imagenet.DataError, match="image-net.org"):
    imagenet.imagenet_split(tmp_path, "val")
  (tmp_path / "val" / "n01440764").mkdir(parents=True)
  with pytest.raises(imagenet.DataError, match="no class folders"):
    imagenet.imagenet_split(tmp_path, "val")
  with pytest.raises(imagenet.DataError, match="generate.py"):
    imagenet.counterfactual_source(tmp_path / "nope")


def test_missing_tfds_dataset_explains_tensorflow(tmp_path):
  with pytest.raises(imagenet.DataError,
                     match="needs TensorFlow to prepare.*imagenet_tfds.prep"):
    imagenet.tfds_source("validation", data_dir=tmp_path)


def test_eval_batches_pad_and_normalise(folder):
  src = imagenet.imagenet_split(folder, "train")
  ds = imagenet.eval_dataset(src, 5, size=32)
  assert len(ds) == 3  # 12 images: 5 + 5 + 2 (padded)
  got = list(imagenet.batches(ds))
  assert [b["mask"].sum() for b in got] == [5, 5, 2]
  last = got[-1]
  assert last["image"].shape == (5, 32, 32, 3)
  assert last["image"].dtype == np.float32 and last["label"].dtype == np.int32
  np.testing.assert_array_equal(last["label"][:2], [999, 999])
  want = T.normalize(T.eval_image(T.load_rgb(src.paths[-1]), 36, 32))
  np.testing.assert_array_equal(last["image"][1], want)
  labels = np.concatenate([b["label"][b["mask"]] for b in got])
  np.testing.assert_array_equal(labels, src.labels["label"])


def test_eval_shards_partition_each_global_batch(folder):
  src = imagenet.imagenet_split(folder, "train")
  whole = list(imagenet.batches(imagenet.eval_dataset(src, 4, size=32)))
  parts = [list(imagenet.batches(imagenet.eval_dataset(
      src, 4, size=32, shard_index=i, shard_count=2))) for i in range(2)]
  for w, p0, p1 in zip(whole, *parts):
    for k in ("image", "label", "mask"):
      np.testing.assert_array_equal(w[k], np.concatenate([p0[k], p1[k]]))


def test_counterfactual_upstream_layout(tmp_path):
  labels = _write_cf(tmp_path, "train", 5)
  _write_cf(tmp_path, "val", 2, seed=1)
  src = imagenet.counterfactual_source(tmp_path, "train")
  assert len(src) == 5
  for j, k in enumerate(imagenet.CF_LABELS):
    np.testing.assert_array_equal(src.labels[k], labels[:, j])
  assert len(imagenet.counterfactual_source(tmp_path, "val")) == 2
  batch = next(imagenet.batches(imagenet.eval_dataset(src, 8, size=32)))
  assert set(batch) == {"image", "mask", *imagenet.CF_LABELS}
  np.testing.assert_array_equal(batch["texture_label"][:5], labels[:, 1])


def test_counterfactual_pool_resampling():
  rng = np.random.default_rng(0)
  # Pool of 4, epoch needs 10: replicated 3x (12), 10 drawn without
  # replacement, so every image appears 2 or 3 times.
  idx = imagenet.counterfactual_pool(4, 10, rng)
  counts = np.bincount(idx, minlength=4)
  assert counts.sum() == 10 and counts.min() >= 2 and counts.max() <= 3
  # A pool larger than the epoch: a subset without repeats.
  idx = imagenet.counterfactual_pool(100, 30, rng)
  assert len(set(idx.tolist())) == 30
  assert imagenet.counterfactual_pool(5, 0, rng).shape == (0,)


def test_mixed_epoch_shapes_labels_and_resampling(folder, tmp_path):
  real = imagenet.imagenet_split(folder, "train")
  cf_labels = _write_cf(tmp_path / "cf", "train", 7)
  cf = imagenet.counterfactual_source(tmp_path / "cf", "train")
  ds = imagenet.mixed_epoch(real, cf, 4, cf_ratio=0.5, seed=3, size=32)
  assert len(ds) == 3  # 12 real // 4
  steps = list(imagenet.batches(ds))
  b = steps[0]
  assert b["real"]["image"].shape == (4, 32, 32, 3)
  assert b["cf"]["image"].shape == (2, 32, 32, 3)
  assert b["real"]["image"].dtype == np.float32
  real_idx, cf_idx = imagenet.epoch_order(len(real), len(cf), 4, 0.5, 3, 0)
  for s, batch in enumerate(steps):
    np.testing.assert_array_equal(batch["real"]["label"],
                                  real.labels["label"][real_idx[s]])
    for j, k in enumerate(imagenet.CF_LABELS):
      np.testing.assert_array_equal(batch["cf"][k], cf_labels[cf_idx[s], j])
  # Every real image at most once per epoch; a fresh draw next epoch.
  assert len(set(real_idx.ravel().tolist())) == 12
  real1, cf1 = imagenet.epoch_order(len(real), len(cf), 4, 0.5, 3, 1)
  assert not np.array_equal(cf_idx, cf1)
  assert not np.array_equal(real_idx, real1)
  # The same seed and epoch give the same pixels.
  again = next(imagenet.batches(imagenet.mixed_epoch(
      real, cf, 4, cf_ratio=0.5, seed=3, size=32)))
  np.testing.assert_array_equal(again["cf"]["image"], b["cf"]["image"])
  np.testing.assert_array_equal(again["real"]["image"], b["real"]["image"])
  other = next(imagenet.batches(imagenet.mixed_epoch(
      real, cf, 4, cf_ratio=0.5, seed=4, size=32)))
  assert not np.array_equal(other["real"]["image"], b["real"]["image"])


def test_mixed_epoch_real_only_and_errors(folder):
  real = imagenet.imagenet_split(folder, "train")
  b = next(imagenet.batches(imagenet.mixed_epoch(real, None, 6, cf_ratio=0,
                                                 size=32, normalize=False)))
  assert set(b) == {"real"} and b["real"]["image"].dtype == np.uint8
  with pytest.raises(imagenet.DataError, match="cf_ratio=0"):
    imagenet.mixed_epoch(real, None, 6, cf_ratio=1)
  with pytest.raises(ValueError, match="fewer than one"):
    imagenet.mixed_epoch(real, None, 64, cf_ratio=0)


def test_mixed_epoch_shards_and_workers_give_the_same_batches(folder,
                                                              tmp_path):
  real = imagenet.imagenet_split(folder, "train")
  _write_cf(tmp_path / "cf", "train", 5)
  cf = imagenet.counterfactual_source(tmp_path / "cf", "train")
  kw = dict(cf_ratio=1.0, seed=1, epoch=2, size=32, normalize=False)
  whole = list(imagenet.batches(imagenet.mixed_epoch(real, cf, 4, **kw)))
  halves = [list(imagenet.batches(imagenet.mixed_epoch(
      real, cf, 4, shard_index=i, shard_count=2, **kw))) for i in range(2)]
  for w, h0, h1 in zip(whole, *halves):
    for part in ("real", "cf"):
      for k in w[part]:
        np.testing.assert_array_equal(
            w[part][k], np.concatenate([h0[part][k], h1[part][k]]))
  # Two decoding processes: the very same batches, in order.
  mp = list(imagenet.iterate(imagenet.mixed_epoch(real, cf, 4, **kw),
                             worker_count=2))
  assert len(mp) == len(whole)
  for w, m in zip(whole, mp):
    np.testing.assert_array_equal(w["real"]["image"], m["real"]["image"])
    np.testing.assert_array_equal(w["cf"]["bg_label"], m["cf"]["bg_label"])


def test_example_source_for_trainers(folder, tmp_path):
  real = imagenet.imagenet_split(folder, "train")
  ex = imagenet.ExampleSource(real).get(11)
  assert ex["label"] == 999 and ex["image"].shape == (224, 224, 3)
  np.testing.assert_array_equal(
      ex["image"], T.normalize(T.eval_image(T.load_rgb(real.paths[11]))))
  _write_cf(tmp_path / "cf", "train", 3)
  cf = imagenet.ExampleSource(
      imagenet.counterfactual_source(tmp_path / "cf"),
      rename={"shape_label": "shape", "texture_label": "texture",
              "bg_label": "bg"}, size=32)
  a = cf.get(1, np.random.default_rng(0))
  b = cf.get(1, np.random.default_rng(0))
  assert set(a) == {"image", "shape", "texture", "bg"}
  assert a["image"].shape == (32, 32, 3)
  np.testing.assert_array_equal(a["image"], b["image"])


def _tar_add(tar, name, data):
  import io as _io  # pylint: disable=g-import-not-at-top
  import tarfile  # pylint: disable=g-import-not-at-top
  info = tarfile.TarInfo(name)
  info.size = len(data)
  tar.addfile(info, _io.BytesIO(data))


def _jpeg_bytes(seed):
  import io as _io  # pylint: disable=g-import-not-at-top
  x = np.random.default_rng(seed).integers(0, 256, (20, 30, 3), np.uint8)
  buf = _io.BytesIO()
  Image.fromarray(x).save(buf, format="JPEG")
  return buf.getvalue()


def test_tf_free_tfds_imagenet_builder(tmp_path):
  import io as _io  # pylint: disable=g-import-not-at-top
  import tarfile  # pylint: disable=g-import-not-at-top
  from cgn_jax.data import imagenet_tfds  # pylint: disable=g-import-not-at-top
  manual = tmp_path / "manual"
  manual.mkdir()
  # train: a tar of per-class tars, as the ILSVRC2012 download
  images = {}
  with tarfile.open(manual / imagenet_tfds.TRAIN_TAR, "w") as outer:
    for c, (wnid, n) in enumerate((("n01440764", 2), ("n15075141", 1))):
      buf = _io.BytesIO()
      with tarfile.open(fileobj=buf, mode="w") as inner:
        for i in range(n):
          name = f"{wnid}_{i}.JPEG"
          images[name] = _jpeg_bytes(10 * c + i)
          _tar_add(inner, name, images[name])
      _tar_add(outer, f"{wnid}.tar", buf.getvalue())
  # validation: flat, labelled by TFDS's list in sorted name order
  with tarfile.open(manual / imagenet_tfds.VAL_TAR, "w") as tar:
    for i in (2, 1, 3):  # tar order differs from the sorted order
      name = f"ILSVRC2012_val_{i:08d}.JPEG"
      images[name] = _jpeg_bytes(100 + i)
      _tar_add(tar, name, images[name])
  data_dir = tmp_path / "tfds"
  imagenet_tfds.prepare(manual, data_dir)
  train = imagenet.tfds_source("train", data_dir)
  assert train.name == "cgn_imagenet2012" and len(train) == 3
  got = sorted((train[i]["label"], train[i]["encoded"]) for i in range(3))
  assert [g[0] for g in got] == [0, 0, 999]
  assert {g[1] for g in got} == {images[f"n01440764_{i}.JPEG"]
                                 for i in range(2)} | {
                                     images["n15075141_0.JPEG"]}
  val = imagenet.tfds_source("validation", data_dir)
  wnids = imagenet.imagenet_wnids()
  want = {images[f"ILSVRC2012_val_{i:08d}.JPEG"]: wnids.index(w) for i, w in
          zip((1, 2, 3), ("n01751748", "n09193705", "n02105855"))}
  assert {val[i]["encoded"]: val[i]["label"] for i in range(3)} == want
  batch = next(imagenet.batches(imagenet.eval_dataset(val, 4, size=32)))
  assert batch["mask"].sum() == 3
  # grain worker processes receive the source pickled
  import pickle  # pylint: disable=g-import-not-at-top
  again = pickle.loads(pickle.dumps(val))
  assert again[1]["encoded"] == val[1]["encoded"]


def _write_records(directory, num, seed):
  from cgn_jax.data import records  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 256, (num, 24, 24, 3), np.uint8)
  labels = rng.integers(0, 1000, (num, 3))
  w = records.ShardedWriter(directory, num=num, shard_size=2,
                            metadata={"seed": seed})
  for s in range(w.num_shards):
    a, b = w.shard_range(s)
    w.write_shard(s, records.encode_records(a, images[a:b], labels[a:b],
                                            quality=95))
  return labels


def test_counterfactual_records_and_mixed_layouts(tmp_path, folder):
  root = tmp_path / "cf"
  train = _write_records(root / "train", 5, seed=0)
  up = _write_cf(root, "val", 2, seed=1)  # upstream layout: val_run0
  val = _write_records(root / "val_records", 3, seed=2)
  src = imagenet.counterfactual_source(root, "train")
  assert len(src) == 5
  for j, k in enumerate(imagenet.CF_LABELS):
    assert [src[i][k] for i in range(5)] == train[:, j].tolist()
  assert src[0]["encoded"][:2] == b"\xff\xd8"
  both = imagenet.counterfactual_source(root, "val")  # val_records, val_run0
  assert len(both) == 5
  got = [both[i]["bg_label"] for i in range(5)]
  assert got == val[:, 2].tolist() + up[:, 2].tolist()
  # A records dataset passed directly is the training split.
  assert len(imagenet.counterfactual_source(root / "train")) == 5
  with pytest.raises(imagenet.DataError, match="single counterfactual"):
    imagenet.counterfactual_source(root / "train", "val")
  # It mixes into training epochs, decoded in two worker processes.
  real = imagenet.imagenet_split(folder, "train")
  ds = imagenet.mixed_epoch(real, src, 4, cf_ratio=0.5, size=32)
  steps = list(imagenet.iterate(ds, worker_count=2))
  assert len(steps) == 3 and steps[0]["cf"]["image"].shape == (2, 32, 32, 3)


def test_example_sources_for_the_trainer(folder, tmp_path):
  _write_cf(tmp_path / "cf", "train", 3)
  got = imagenet.example_sources(folder, tmp_path / "cf", image_size=32)
  assert len(got["real_train"]) == 12 and got["real_val"] is None
  assert got["cf_val"] is None and len(got["cf_train"]) == 3
  ex = got["cf_train"].get(0, np.random.default_rng(0))
  assert set(ex) == {"image", "shape", "texture", "bg"}
  assert imagenet.example_sources(folder)["cf_train"] is None


def test_iterator_state_resumes_mid_epoch(folder, tmp_path):
  real = imagenet.imagenet_split(folder, "train")
  _write_cf(tmp_path / "cf", "train", 4)
  cf = imagenet.counterfactual_source(tmp_path / "cf", "train")
  ds = imagenet.mixed_epoch(real, cf, 4, cf_ratio=0.5, seed=2, epoch=1,
                            size=32, normalize=False)
  it = imagenet.batches(ds)
  next(it)
  state = it.get_state()
  want = next(it)
  resumed = imagenet.batches(ds)
  resumed.set_state(state)
  got = next(resumed)
  for part in ("real", "cf"):
    for k in want[part]:
      np.testing.assert_array_equal(got[part][k], want[part][k])
