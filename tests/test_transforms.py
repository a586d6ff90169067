"""torchvision-equivalent ImageNet preprocessing (cgn_jax.data.transforms)."""

import io

import numpy as np
from PIL import Image
import pytest

from cgn_jax.data import transforms as T


@pytest.fixture(scope="module")
def golden(shared_dir):
  z = np.load(shared_dir / "reference" / "transforms" / "transforms_golden.npz")
  return {k: z[k] for k in z.files}, shared_dir


@pytest.mark.shared
def test_eval_and_resized_crop_match_torchvision_exactly(golden):
  # Real JPEGs (non-square photos) and the cue-conflict PNGs, decoded with
  # PIL: Resize(256) → CenterCrop(224), and the resize of RandomResizedCrop
  # for given boxes, both level for level.
  z, shared = golden
  assert len(z["files"]) == 52
  for f, want_eval, box, want_crop in zip(z["files"], z["eval_224"],
                                          z["crop_boxes"],
                                          z["resized_crop_224"]):
    img = T.load_rgb(shared / str(f))
    np.testing.assert_array_equal(T.eval_image(img), want_eval, err_msg=f)
    got = np.asarray(T.resized_crop(img, *(int(v) for v in box)))
    np.testing.assert_array_equal(got, want_crop, err_msg=f)


@pytest.mark.shared
def test_load_rgb_bytes_equals_path(golden):
  z, shared = golden
  path = shared / str(z["files"][0])
  np.testing.assert_array_equal(np.asarray(T.load_rgb(path.read_bytes())),
                                np.asarray(T.load_rgb(path)))


def test_load_rgb_converts_grey_and_rgba():
  buf = io.BytesIO()
  Image.new("L", (5, 4), 77).save(buf, format="PNG")
  assert np.asarray(T.load_rgb(buf.getvalue())).shape == (4, 5, 3)
  buf = io.BytesIO()
  Image.new("RGBA", (3, 2), (1, 2, 3, 4)).save(buf, format="PNG")
  np.testing.assert_array_equal(np.asarray(T.load_rgb(buf.getvalue()))[0, 0],
                                [1, 2, 3])


@pytest.mark.parametrize("size,want", [((500, 375), (341, 256)),
                                       ((375, 500), (256, 341)),
                                       ((256, 300), (256, 300)),
                                       ((100, 333), (256, 852))])
def test_resize_shorter_truncates_long_side(size, want):
  assert T.resize_shorter(Image.new("RGB", size)).size == want


def test_center_crop_offsets_and_padding():
  x = np.arange(7 * 6 * 3, dtype=np.uint8).reshape(7, 6, 3)  # H 7, W 6
  img = Image.fromarray(x)
  # round((7 - 4) / 2) = round(1.5) = 2 (half to even), round(1) = 1.
  np.testing.assert_array_equal(np.asarray(T.center_crop(img, 4)),
                                x[2:6, 1:5])
  # Smaller than the crop: zero padding, the odd pixel on the right/bottom.
  out = np.asarray(T.center_crop(Image.fromarray(x[:3, :3]), 6))
  assert out.shape == (6, 6, 3)
  np.testing.assert_array_equal(out[1:4, 1:4], x[:3, :3])
  assert out[0].sum() == 0 and out[4:].sum() == 0 and out[:, 4:].sum() == 0


def test_random_resized_crop_box_in_range():
  rng = np.random.default_rng(0)
  for w, h in [(500, 375), (224, 224), (1000, 60)]:
    for _ in range(200):
      top, left, bh, bw = T.random_resized_crop_box(rng, w, h)
      assert 0 <= top and top + bh <= h and 0 <= left and left + bw <= w
      assert bh > 0 and bw > 0


def test_random_resized_crop_box_fallback():
  # A scale no box can reach forces the fallback: the whole image clipped to
  # the ratio range and centred, as torchvision.
  rng = np.random.default_rng(0)
  assert T.random_resized_crop_box(rng, 1000, 100, scale=(2, 2)) == (
      0, 433, 100, 133)
  assert T.random_resized_crop_box(rng, 100, 1000, scale=(2, 2)) == (
      433, 0, 133, 100)
  assert T.random_resized_crop_box(rng, 120, 100, scale=(2, 2)) == (
      0, 0, 100, 120)


def test_random_resized_crop_box_statistics():
  # Area fraction uniform on [0.08, 1] when the box fits (square image,
  # most draws fit), log-aspect uniform on [log 3/4, log 4/3].
  rng = np.random.default_rng(1)
  boxes = np.array([T.random_resized_crop_box(rng, 1000, 1000)
                    for _ in range(4000)])
  frac = boxes[:, 2] * boxes[:, 3] / 1e6
  assert frac.min() >= 0.07 and frac.max() <= 1.0
  assert abs(np.log(boxes[:, 3] / boxes[:, 2]).mean()) < 0.02
  assert np.abs(np.log(boxes[:, 3] / boxes[:, 2])).max() <= np.log(4 / 3) + .01


def test_train_image_deterministic_and_flips():
  x = np.random.default_rng(0).integers(0, 256, (60, 80, 3), dtype=np.uint8)
  img = Image.fromarray(x)
  a = T.train_image(img, np.random.default_rng(5), crop=32)
  b = T.train_image(img, np.random.default_rng(5), crop=32)
  assert a.shape == (32, 32, 3) and a.dtype == np.uint8
  np.testing.assert_array_equal(a, b)
  # Reproduce by hand: the same box draws, then the flip draw.
  rng = np.random.default_rng(5)
  box = T.random_resized_crop_box(rng, 80, 60)
  want = np.asarray(T.resized_crop(img, *box, size=32))
  if rng.uniform() < 0.5:
    want = want[:, ::-1]
  np.testing.assert_array_equal(a, want)


def test_normalize_is_torchvision_arithmetic():
  x = np.array([[[0, 128, 255]]], np.uint8)
  got = T.normalize(x)
  assert got.dtype == np.float32
  want = [(np.float32(v) / np.float32(255) - np.float32(m)) / np.float32(s)
          for v, m, s in zip((0, 128, 255), T.IMAGENET_MEAN, T.IMAGENET_STD)]
  np.testing.assert_array_equal(got[0, 0], np.array(want, np.float32))
  np.testing.assert_allclose(T.normalize(x, T.IN9_MEAN, T.IN9_STD)[0, 0, 0],
                             (0 - 0.4717) / 0.26, rtol=1e-6)


def test_normalize_table_equals_arithmetic():
  x = np.random.default_rng(0).integers(0, 256, (2, 5, 7, 3), np.uint8)
  for mean, std in ((T.IMAGENET_MEAN, T.IMAGENET_STD),
                    (T.IN9_MEAN, T.IN9_STD)):
    want = ((x.astype(np.float32) / np.float32(255) - np.float32(mean))
            / np.float32(std))
    np.testing.assert_array_equal(T.normalize(x, mean, std), want)
  np.testing.assert_array_equal(T.normalize(x.astype(np.float32)),
                                T.normalize(x))
