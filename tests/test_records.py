"""Counterfactual dataset storage: records, shards, resume, upstream export."""

import csv
import importlib.util

import numpy as np
import pytest

from cgn_jax.data import records


def _images(n, seed=0, size=8):
  rng = np.random.default_rng(seed)
  return rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def _write(directory, num=7, shard_size=3, seed=0, fields=(), **meta):
  w = records.ShardedWriter(directory, num=num, shard_size=shard_size,
                            metadata={"seed": seed, **meta}, fields=fields)
  images = _images(num, seed)
  labels = np.arange(num * 3).reshape(num, 3) % 1000
  extras = {"mask": images[..., :1]} if "mask" in fields else {}
  for s in w.missing_shards():
    a, b = w.shard_range(s)
    w.write_shard(s, records.encode_records(
        a, images[a:b], labels[a:b], quality=90,
        extras={k: v[a:b] for k, v in extras.items()}))
  return w, images, labels


def test_to_uint8_matches_torchvision_save_image():
  x = np.array([-1.0, -0.5, 0.0, 0.999, 1.0, 1.5], np.float32)
  x = x.reshape(1, 1, 6, 1)
  # torchvision: mul(255).add_(0.5).clamp_(0, 255) then truncation to uint8.
  want = np.floor(np.clip((x + 1) / 2 * 255 + 0.5, 0, 255)).astype(np.uint8)
  np.testing.assert_array_equal(records.to_uint8(x), want)
  assert records.to_uint8(x).ravel().tolist() == [0, 64, 128, 255, 255, 255]
  mm = records.to_uint8(x, "minmax").ravel()
  assert mm[0] == 0 and mm[-1] == 255          # per image min -> 0, max -> 255
  y = np.stack([x[0], 0.1 * x[0]])             # each image on its own range
  np.testing.assert_array_equal(records.to_uint8(y, "minmax")[1],
                                records.to_uint8(y, "minmax")[0])
  with pytest.raises(ValueError, match="minmax"):
    records.to_uint8(x, "bogus")


def test_write_read_round_trip(tmp_path):
  w, images, labels = _write(tmp_path / "ds", fields=("mask",))
  assert w.num_shards == 3 and w.is_complete()
  src = records.CounterfactualSource(tmp_path / "ds")
  assert len(src) == 7
  for i in range(7):
    rec = src[i]
    assert rec["index"] == i
    assert [rec[k] for k in records.LABELS] == labels[i].tolist()
    assert rec["image"].shape == (8, 8, 3) and rec["image"].dtype == np.uint8
    np.testing.assert_array_equal(rec["mask"], images[i, ..., :1])  # PNG
  np.testing.assert_array_equal(src.labels(), labels)
  raw = records.CounterfactualSource(tmp_path / "ds", decode=False)[0]
  assert raw["image"][:2] == b"\xff\xd8"       # JPEG magic
  ds = records.map_dataset(tmp_path / "ds").map(lambda r: r["shape_cls"])
  assert [ds[i] for i in range(7)] == labels[:, 0].tolist()


def test_resume_and_mismatch(tmp_path):
  full, _, _ = _write(tmp_path / "a")
  # A killed run: shard 1 missing, a half-written temp file left behind.
  w = records.ShardedWriter(tmp_path / "b", num=7, shard_size=3,
                            metadata={"seed": 0})
  images, labels = _images(7), np.arange(21).reshape(7, 3) % 1000
  for s in (0, 2):
    a, b = w.shard_range(s)
    w.write_shard(s, records.encode_records(a, images[a:b], labels[a:b],
                                            quality=90))
  (tmp_path / "b" / (records.shard_name(1, 3) + ".tmp-123")).write_bytes(
      b"partial")
  with pytest.raises(FileNotFoundError, match="incomplete"):
    records.CounterfactualSource(tmp_path / "b")
  w2, _, _ = _write(tmp_path / "b")            # the rerun
  assert w2.is_complete()
  assert not list((tmp_path / "b").glob("*.tmp*"))
  for s in range(3):
    assert (w2.shard_path(s).read_bytes() ==
            full.shard_path(s).read_bytes())
  with pytest.raises(records.DatasetMismatchError, match="seed"):
    _write(tmp_path / "b", seed=1)
  with pytest.raises(records.DatasetMismatchError, match="num"):
    _write(tmp_path / "b", num=8)
  with pytest.raises(ValueError, match="needs 3 records"):
    w2.write_shard(0, [b"x"])


def _read_csv_like_upstream(path):
  """pd.read_csv(path, index_col=0) as upstream's dataloader, or its csv twin."""
  if importlib.util.find_spec("pandas") is not None:
    import pandas as pd  # pylint: disable=g-import-not-at-top
    df = pd.read_csv(path, index_col=0)
    return list(df.columns), [
        [r.im_name, r.shape_cls, r.texture_cls, r.bg_cls]
        for r in df.itertuples()]
  with open(path, newline="") as f:
    rows = list(csv.reader(f))
  header, body = rows[0], rows[1:]
  # index_col=0: the first column is the index, the rest are the columns.
  return header[1:], [[r[1]] + [int(v) for v in r[2:]] for r in body]


def test_export_upstream_layout(tmp_path):
  _, _, labels = _write(tmp_path / "ds")
  out = records.export_upstream(tmp_path / "ds", tmp_path / "cf" / "train_x",
                                run_name="run")
  columns, rows = _read_csv_like_upstream(out / "labels.csv")
  assert columns == ["im_name", "shape_cls", "texture_cls", "bg_cls"]
  assert len(rows) == 7
  src = records.CounterfactualSource(tmp_path / "ds", decode=False)
  for i, row in enumerate(rows):
    assert row[0] == f"run_{i:07d}" and row[1:] == labels[i].tolist()
    # upstream: df['abs_path'] = sub + '/ims/' + df['im_name'] + '_x_gen.jpg'
    path = out / "ims" / f"{row[0]}_x_gen.jpg"
    assert path.read_bytes() == src[i]["image"]
  text = (out / "labels.csv").read_text().splitlines()
  assert text[0] == ",im_name,shape_cls,texture_cls,bg_cls"
  assert text[1] == f"0,run_0000000,{','.join(map(str, labels[0]))}"
  with pytest.raises(ValueError, match="does not store"):
    records.export_upstream(tmp_path / "ds", tmp_path / "o2",
                            fields=("mask",))


def test_refuses_foreign_directories(tmp_path):
  (tmp_path / "x").mkdir()
  (tmp_path / "x" / "file").write_text("hi")
  with pytest.raises(FileExistsError):
    records.ShardedWriter(tmp_path / "x", num=1, shard_size=1, metadata={})
  with pytest.raises(FileNotFoundError, match="generate.py"):
    records.read_metadata(tmp_path / "x")
  with pytest.raises(ValueError, match="unknown fields"):
    records.ShardedWriter(tmp_path / "y", num=1, shard_size=1, metadata={},
                          fields=("depth",))
