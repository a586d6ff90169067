"""IN-9 / BG-Gap on a tiny synthetic 9-class ImageFolder with a stub model."""

import numpy as np
from PIL import Image
import pytest

from cgn_jax.data import imagenet
from cgn_jax.data import transforms as T
from cgn_jax.evaluation import backgrounds as bg

pytestmark = pytest.mark.shared

FOLDERS = ("00_dog", "01_bird", "02_wheeled vehicle", "03_reptile",
           "04_carnivore", "05_insect", "06_musical instrument", "07_primate",
           "08_fish")


@pytest.fixture(scope="module")
def table():
  return bg.in9_map()


def test_in9_map(table):
  assert table.shape == (1000,)
  assert (table == -1).sum() == 630
  np.testing.assert_array_equal(np.bincount(table[table >= 0]),
                                [116, 52, 42, 36, 35, 27, 26, 20, 16])
  assert table[151] == 0  # the first dog class


def test_minus_one_counts_as_wrong(table):
  minus = int(np.flatnonzero(table == -1)[0])
  dog = int(np.flatnonzero(table == 0)[0])
  logits = np.zeros((3, 1000), np.float32)
  logits[0, dog] = logits[1, minus] = logits[2, dog] = 1
  # Labels 0, 0, 1: a dog hit, a −1 prediction, a dog for a bird.
  assert bg.count_correct(logits, np.array([0, 0, 1]), table) == 1
  # -1 is wrong even against a (bogus) -1 label.
  assert bg.count_correct(logits[1:2], np.array([-1]), table) == 0
  assert bg.count_correct(logits, np.array([0, 0, 0]), table,
                          mask=np.array([True, False, False])) == 1


def _candidates(table):
  """Per IN-9 class: an ImageNet class of it, of the next class, and a −1."""
  minus = int(np.flatnonzero(table == -1)[0])
  first = [int(np.flatnonzero(table == c)[0]) for c in range(9)]
  return [(first[c], first[(c + 1) % 9], minus) for c in range(9)]


def _write_variation(root, variation, choices):
  """One image per entry of `choices`: (class, 0 right | 1 wrong | 2 -1).

  The choice is written into the pixels, so the stub model can read it back
  after IN-9 normalisation.
  """
  for i, (c, choice) in enumerate(choices):
    d = root / variation / "val" / FOLDERS[c]
    d.mkdir(parents=True, exist_ok=True)
    x = np.full((224, 224, 3), 10 * choice + c, np.uint8)
    Image.fromarray(x).save(d / f"{i:03d}.png")


def _stub(table):
  cands = _candidates(table)

  def apply_fn(images):
    # Undo the IN-9 normalisation of channel 0 to read the pixel value.
    v = np.rint((images[:, 0, 0, 0] * T.IN9_STD[0] + T.IN9_MEAN[0]) * 255)
    v = v.astype(int)
    choice, c = v // 10, v % 10
    n = len(images)
    st = np.zeros((n, 1000), np.float32)
    st[np.arange(n), [cands[ci][ch] for ci, ch in zip(c, choice)]] = 1
    wrong = np.zeros((n, 1000), np.float32)
    wrong[np.arange(n), [cands[ci][2] for ci in c]] = 1
    # shape_texture reads the pixels; the bg head is always −1 (0 %);
    # avg/shape/texture copy shape_texture.
    return {"shape_texture": st, "avg": st, "shape": st, "texture": st,
            "bg": wrong}

  return apply_fn


def test_accuracies_denominator_and_bg_gap(tmp_path, table):
  # mixed_same: 11 images, 8 right, 2 wrong class, 1 mapped to -1 -> 8/11.
  same = ([(c, 0) for c in range(8)] + [(0, 1), (3, 1), (8, 2)])
  # mixed_rand: 10 images, 5 right -> 50 %.
  rand = [(c % 9, 0 if c < 5 else 1 + c % 2) for c in range(10)]
  # original: 9 images, all right.
  orig = [(c, 0) for c in range(9)]
  _write_variation(tmp_path, "mixed_same", same)
  _write_variation(tmp_path, "mixed_rand", rand)
  _write_variation(tmp_path, "original", orig)
  src = bg.variation_source(tmp_path, "mixed_same")
  np.testing.assert_array_equal(np.bincount(src.labels["label"]),
                                np.bincount([c for c, _ in same]))
  res = bg.evaluate(_stub(table), tmp_path, batch_size=4)
  ms, mr = res["mixed_same"], res["mixed_rand"]
  # the real number of images, not batches x batch size (12 and 12)
  assert ms["num_images"] == 11 and ms["upstream_denominator"] == 12
  assert mr["num_images"] == 10 and mr["upstream_denominator"] == 12
  assert ms["shape_texture"] == pytest.approx(100 * 8 / 11)
  assert mr["shape_texture"] == pytest.approx(50.0)
  assert res["original"]["avg"] == pytest.approx(100.0)
  assert ms["bg"] == 0.0
  assert res["bg_gap"] == pytest.approx(100 * 8 / 11 - 50.0)


def test_missing_data_names_the_release(tmp_path):
  with pytest.raises(imagenet.DataError, match="backgrounds_challenge"):
    bg.evaluate(_stub(bg.in9_map()), tmp_path / "nope", 4)
  with pytest.raises(imagenet.DataError, match="none of"):
    bg.evaluate(_stub(bg.in9_map()), tmp_path, 4)


def test_wrong_class_count_is_an_error(tmp_path):
  _write_variation(tmp_path, "original", [(0, 0), (1, 0)])
  with pytest.raises(imagenet.DataError, match="expected 9"):
    bg.variation_source(tmp_path, "original")
