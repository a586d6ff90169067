"""MNIST through TFDS and the three variants, on the real MNIST files."""

import shutil

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
from PIL import ImageColor
import pytest
import tensorflow_datasets as tfds

from cgn_jax import paths
from cgn_jax.data import mnist
from cgn_jax.data import variants

TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]



# ---------------------------------------------------------------- MNIST


@pytest.mark.shared
def test_builder_prepares_real_mnist(tfds_dir, mnist_dir):
  files = sorted(p.name for p in (tfds_dir / "cgn_mnist" / str(mnist.CgnMnist.VERSION)).iterdir())
  assert any(".array_record-" in f for f in files), files
  for split, counts in (("train", TRAIN_COUNTS), ("test", TEST_COUNTS)):
    digits, labels = mnist.load_mnist(split, tfds_dir)
    assert digits.shape == (sum(counts), 28, 28) and digits.dtype == np.uint8
    assert labels.dtype == np.int32
    np.testing.assert_array_equal(np.bincount(labels, minlength=10), counts)
    # Read back through tfds.data_source in the original IDX order, which
    # the upstream index splits (train[:50000]) depend on.
    prefix = "train" if split == "train" else "t10k"
    np.testing.assert_array_equal(
        labels, mnist.read_idx(mnist_dir / f"{prefix}-labels-idx1-ubyte.gz"))
    np.testing.assert_array_equal(
        digits[:100],
        mnist.read_idx(mnist_dir / f"{prefix}-images-idx3-ubyte.gz")[:100])


@pytest.mark.shared
def test_generic_tfds_decoder_agrees(tfds_dir, monkeypatch):
  # load_mnist parses the protos itself for speed; TFDS's own decoder (the
  # fallback) must give the same arrays.
  source = tfds.data_source("cgn_mnist", split="test", data_dir=tfds_dir)
  monkeypatch.setattr(mnist, "tf_example_pb2", None)
  digits, labels = mnist._decode_all(source)  # pylint: disable=protected-access
  want_digits, want_labels = mnist.load_mnist("test", tfds_dir)
  np.testing.assert_array_equal(digits, want_digits)
  np.testing.assert_array_equal(labels, want_labels)


@pytest.mark.shared
def test_corrupt_file_names_file_and_md5(tmp_path, mnist_dir):
  src = tmp_path / "mnist"
  src.mkdir()
  for name, _ in mnist.FILES.values():
    (src / name).symlink_to(mnist_dir / name)
  bad_name, bad_md5 = mnist.FILES["test_labels"]
  (src / bad_name).unlink()
  data = bytearray((mnist_dir / bad_name).read_bytes())
  data[len(data) // 2] ^= 0xFF
  (src / bad_name).write_bytes(bytes(data))
  with pytest.raises(mnist.MnistFileError) as e:
    mnist.prepare(tmp_path / "tfds", src)
  msg = str(e.value)
  assert str(src / bad_name) in msg and bad_md5 in msg, msg
  assert "corrupt" in msg and "CGN_MNIST_DIR" in msg, msg


@pytest.mark.shared
def test_missing_file_and_missing_dir(tmp_path, mnist_dir):
  src = tmp_path / "mnist"
  src.mkdir()
  shutil.copy(mnist_dir / mnist.FILES["train_images"][0], src)
  name, md5 = mnist.FILES["train_labels"]
  with pytest.raises(mnist.MnistFileError) as e:
    mnist.prepare(tmp_path / "tfds", src)
  msg = str(e.value)
  assert str(src / name) in msg and md5 in msg and "missing" in msg, msg
  assert "CGN_MNIST_DIR" in msg, msg

  gone = tmp_path / "no_such_dir"
  with pytest.raises(mnist.MnistFileError) as e:
    mnist.prepare(tmp_path / "tfds", gone)
  msg = str(e.value)
  assert str(gone) in msg and "does not exist" in msg, msg
  assert "CGN_MNIST_DIR" in msg, msg


@pytest.mark.shared
def test_download_falls_back_to_next_mirror(tmp_path, mnist_dir, monkeypatch):
  # Offline stand-in for the mirrors: a dead one, then a file:// copy.
  monkeypatch.setattr(mnist, "MIRRORS", (
      (tmp_path / "dead").as_uri() + "/", mnist_dir.as_uri() + "/"))
  files = mnist.download_files(tmp_path / "dl")
  for key, (name, md5) in mnist.FILES.items():
    assert files[key] == tmp_path / "dl" / name
    assert mnist.md5sum(files[key]) == md5


# ---------------------------------------------------------------- resizing


def test_nearest_resize_matches_pil():
  x = (np.arange(28 * 28 * 3) % 251).astype(np.uint8).reshape(28, 28, 3)
  want = np.asarray(Image.fromarray(x).resize((32, 32), Image.NEAREST))
  got = variants.resize_nearest(jnp.asarray(x[None]), 32, "pil")[0]
  np.testing.assert_array_equal(np.asarray(got), want)
  # The rules differ for 28 -> 32, so the test above can tell them apart.
  assert not np.array_equal(variants.nearest_indices(28, 32, "pil"),
                            variants.nearest_indices(28, 32, "torch"))


@pytest.mark.torch
def test_nearest_resize_matches_torch():
  import torch  # pylint: disable=g-import-not-at-top
  x = np.arange(2 * 28 * 28, dtype=np.float32).reshape(2, 28, 28)
  want = torch.nn.functional.interpolate(
      torch.from_numpy(x)[:, None], (32, 32)).numpy()[:, 0]
  got = variants.resize_nearest(jnp.asarray(x), 32, "torch")
  np.testing.assert_array_equal(np.asarray(got), want)


def test_palettes_match_spec():
  # SPEC §1.2: digit colours for classes 0..9.
  names = ["yellow", "burlywood", "lime", "aqua", "fuchsia", "#6495ed",
           "darkgreen", "darkblue", "#b03060", "orangered"]
  want = np.array([ImageColor.getrgb(n) for n in names], np.float32) / 255.
  np.testing.assert_array_equal(variants.DC_FOREGROUND, want)
  want_bg = np.array([ImageColor.getrgb(n)
                      for n in variants.DC_PALETTE_NAMES], np.float32) / 255.
  np.testing.assert_array_equal(variants.DC_BACKGROUND, want_bg)
  # Colored: measured from the authors' generator (see
  # test_colored_means_are_the_authors_generators_colours); all distinct.
  assert variants.COLORED_MEANS.shape == (10, 3)
  assert len(variants.COLORED_MEAN_NAMES) == 10
  d = np.linalg.norm(variants.COLORED_MEANS[:, None]
                     - variants.COLORED_MEANS[None], axis=-1)
  assert d[~np.eye(10, dtype=bool)].min() > 0.1
  assert np.linalg.norm(variants.COLORED_MEANS, axis=-1).min() > 0.7


def measure_colored_means(variables, samples: int, seed: int = 0):
  """Per-class mean foreground colour of an MNIST CGN, in [0, 1].

  The f_text1 output (tanh, mapped to [0, 1]) averaged over pixels and
  `samples` noise vectors per class, weighted by the clamped mask; eval-mode
  BatchNorm. How `variants.COLORED_MEANS` was measured (samples=1000).
  """
  from cgn_jax.models import cgn as cgn_lib  # pylint: disable=g-import-not-at-top
  model = cgn_lib.CGN()

  @jax.jit
  def means(key):
    y = jnp.repeat(jnp.arange(10), samples)
    u = jax.random.normal(key, (10 * samples, model.latent_sz))
    fg = model.apply(variables, u, y, train=False,
                     method=cgn_lib.CGN.foreground)
    mask = jnp.clip(model.apply(variables, u, y, train=False,
                                method=cgn_lib.CGN.shape),
                    cgn_lib.MASK_MIN, cgn_lib.MASK_MAX)
    num = (mask * (fg + 1) / 2).reshape(10, samples, -1, 3).sum((1, 2))
    return num / mask.reshape(10, samples, -1, 1).sum((1, 2))

  return np.asarray(means(jax.random.PRNGKey(seed)))


# 250 noise vectors per class instead of the 1000 of the measurement keep
# the test cheap; two seeds at 1000 differ by <= 0.014, so 250 stay within
# about 0.03 of the constants.
COLORED_MEANS_TOL = 0.05


@pytest.mark.torch
@pytest.mark.shared
def test_colored_means_are_the_authors_generators_colours():
  from converters import cgn_mnist as cgn_convert  # pylint: disable=g-import-not-at-top
  from converters import common  # pylint: disable=g-import-not-at-top
  ckpt = paths.upstream_dir() / "cgn_colored_MNIST.pth"
  variables = cgn_convert.convert(common.load_torch_state_dict(ckpt))
  got = measure_colored_means(variables, samples=250)
  err = np.abs(got - variants.COLORED_MEANS).max()
  assert err <= COLORED_MEANS_TOL, (err, np.round(got * 255))


# ---------------------------------------------------------------- variants

# Nuisance classifiers that read only the rendered image (and, for the mask,
# the grey digit): they predict the colour or texture index.


def _mask(digits):
  rows = variants.nearest_indices(28, 32, "torch")
  return (digits[:, rows][:, :, rows] > 25).astype(np.float32)  # /255 > 0.1


def _nearest(colors, means):
  return np.argmin(((colors[:, None] - means[None]) ** 2).sum(-1), axis=1)


def _predict_colored(images, digits):
  del digits
  flat = images.reshape(len(images), -1, 3)
  brightest = flat[np.arange(len(flat)), flat.sum(-1).argmax(1)]
  return {"fg": _nearest((brightest + 1) / 2, variants.COLORED_MEANS)}


def _predict_double_colored(images, digits):
  m = _mask(digits)
  x = (images + 1) / 2
  fg = np.einsum("nhwc,nhw->nc", x, m) / m.sum((1, 2))[:, None]
  bg = np.einsum("nhwc,nhw->nc", x, 1 - m) / (1 - m).sum((1, 2))[:, None]
  return {"fg": _nearest(fg, variants.DC_FOREGROUND),
          "bg": _nearest(bg, variants.DC_BACKGROUND)}


def _color_codes(x, bins=8):
  q = np.clip(((x + 1) / 2 * bins).astype(int), 0, bins - 1)
  return (q[..., 0] * bins + q[..., 1]) * bins + q[..., 2]


def _texture_log_probs(textures, bins=8):
  codes = _color_codes(textures[:, 3:-3, 3:-3], bins)
  h = np.stack([np.bincount(c.ravel(), minlength=bins ** 3) for c in codes])
  h = h + 1.
  return np.log(h / h.sum(1, keepdims=True))


def _predict_wildlife(images, digits):
  """Naive-Bayes colour-histogram texture classifier, per region."""
  n, bins = len(images), 8
  codes = _color_codes(images, bins).reshape(n, -1)
  rows = np.repeat(np.arange(n), codes.shape[1])
  m = _mask(digits).reshape(n, -1)
  fg_tex, bg_tex = variants.load_textures()
  out = {}
  for key, tex, w in (("fg", fg_tex, m), ("bg", bg_tex, 1 - m)):
    counts = np.bincount(rows * bins ** 3 + codes.ravel(), weights=w.ravel(),
                         minlength=n * bins ** 3).reshape(n, -1)
    out[key] = counts @ _texture_log_probs(tex, bins).T
  # On train both regions share the class: their joint score is sharper.
  out["joint"] = (out["fg"] + out["bg"]).argmax(1)
  out["fg"], out["bg"] = out["fg"].argmax(1), out["bg"].argmax(1)
  return out


PREDICT = {"colored": _predict_colored,
           "double_colored": _predict_double_colored,
           "wildlife": _predict_wildlife}
# Accuracy of each classifier at reading the nuisance index; colored's
# per-image colour noise (std 0.14) makes neighbouring means overlap: the
# authors' palette has pairs 0.15 apart (yellow / yellow-green), so a
# nearest-mean reading of the colour is right ~82 % of the time.
MIN_ACCURACY = {"colored": {"fg": 0.75},
                "double_colored": {"fg": 1.0, "bg": 1.0},
                "wildlife": {"fg": 0.9, "bg": 0.95, "joint": 0.99}}


@pytest.mark.shared
@pytest.mark.parametrize("variant", variants.VARIANTS)
def test_nuisance_tied_to_label_in_train_only(variant, tfds_dir):
  n = 10000
  digits, labels = variants.split_arrays(variant, "train", tfds_dir)
  digits, labels = digits[:n], labels[:n]
  render = variants.jitted_renderer(variant, with_nuisance=True)
  train, _ = render(jnp.asarray(digits), jnp.asarray(labels),
                    jax.random.key(1), "train")
  train = np.asarray(train)
  pred = PREDICT[variant](train, digits)
  for key, acc in MIN_ACCURACY[variant].items():
    agree = (pred[key] == labels).mean()
    assert agree >= acc, (variant, key, agree)

  test, test_labels, nuisance = variants.fixed_test_set(
      variant, seed=0, with_nuisance=True, data_dir=tfds_dir)
  assert len(test) == 10000
  test_digits, _ = variants.split_arrays(variant, "test", tfds_dir)
  pred = PREDICT[variant](test, test_digits)
  for key, acc in MIN_ACCURACY[variant].items():
    agree = (pred[key] == test_labels).mean()
    assert abs(agree - 0.1) < 0.03, (variant, key, agree)
    if key in nuisance:  # the classifier still reads the test nuisance
      assert (pred[key] == nuisance[key]).mean() >= acc, (variant, key)
      # ... which is independent of the label and uniform.
      joint = np.histogram2d(nuisance[key], test_labels, bins=10)[0]
      assert joint.min() > 0
      np.testing.assert_allclose(np.bincount(nuisance[key]) / 1e4, 0.1,
                                 atol=0.015)
  if variant != "colored":
    assert (nuisance["fg"] == nuisance["bg"]).mean() < 0.13


@pytest.mark.shared
@pytest.mark.parametrize("variant", variants.VARIANTS)
def test_fixed_test_set_shapes_range_and_seed(variant, tfds_dir):
  a, labels = variants.fixed_test_set(variant, seed=0, data_dir=tfds_dir)
  b, _ = variants.fixed_test_set(variant, seed=0, data_dir=tfds_dir)
  c, _ = variants.fixed_test_set(variant, seed=1, data_dir=tfds_dir)
  assert a.shape == (10000, 32, 32, 3) and a.dtype == np.float32
  assert labels.shape == (10000,) and labels.dtype == np.int32
  assert a.min() >= -1. and a.max() <= 1.
  np.testing.assert_array_equal(a, b)  # bitwise
  assert (a != c).any(axis=(1, 2, 3)).mean() > 0.8
  # Upstream splits: the test digits are MNIST train[50000:] except colored.
  _, all_train = mnist.load_mnist("train", tfds_dir)
  _, official_test = mnist.load_mnist("test", tfds_dir)
  want = official_test if variant == "colored" else all_train[50000:]
  np.testing.assert_array_equal(labels, want)
  n_train = len(variants.split_arrays(variant, "train", tfds_dir)[1])
  assert n_train == (60000 if variant == "colored" else 50000)


@pytest.mark.shared
def test_double_colored_matches_upstream_formula(tfds_dir):
  digits, labels = variants.split_arrays("double_colored", "train", tfds_dir)
  # The shape and renderer of the nuisance test, so nothing recompiles.
  digits, labels = digits[:10000], labels[:10000]
  images, _ = variants.jitted_renderer("double_colored", with_nuisance=True)(
      jnp.asarray(digits), jnp.asarray(labels), jax.random.key(3), "train")
  images, digits, labels = np.asarray(images[:256]), digits[:256], labels[:256]
  m = _mask(digits)[..., None]
  # With noise std 0.01 every pixel is within 5 std of the noiseless colour.
  fg = variants.DC_FOREGROUND[labels][:, None, None]
  bg = variants.DC_BACKGROUND[labels][:, None, None]
  want = (m * fg + (1 - m) * bg) * 2 - 1
  err = np.abs(images - want)
  assert err.max() < 0.1 and 0.002 < err.mean() < 0.03, (err.max(),
                                                          err.mean())


def test_wildlife_crops_come_from_padded_textures():
  rng = np.random.default_rng(0)
  shape = (10, 156, 156, 3)
  fg = rng.uniform(-1, 1, shape).astype(np.float32)
  bg = rng.uniform(-1, 1, shape).astype(np.float32)
  render = jax.jit(variants.make_renderer(
      "wildlife", with_nuisance=True, textures=(fg, bg)), static_argnums=3)
  digits = np.zeros((16, 28, 28), np.uint8)
  digits[8:, :14] = 255  # top half is digit for the second eight
  labels = np.arange(16, dtype=np.int32) % 10
  images, nuisance = render(jnp.asarray(digits), jnp.asarray(labels),
                            jax.random.key(0), "test")
  images = np.asarray(images)
  for i in range(16):
    tex = bg[nuisance["bg"][i]] if i < 8 else fg[nuisance["fg"][i]]
    patch = images[i, :8]  # top rows: background (i < 8) or digit (i >= 8)
    windows = np.lib.stride_tricks.sliding_window_view(tex, (8, 32, 3))
    hits = np.argwhere((windows[:125, :125, 0] == patch).all((-3, -2, -1)))
    assert len(hits) == 1, (i, hits)


def test_texture_loading_error(tmp_path):
  with pytest.raises(FileNotFoundError, match="CGN_TEXTURES_DIR"):
    variants.load_textures(tmp_path)


def test_lntl_npy_is_read_and_resized(tmp_path, monkeypatch):
  rng = np.random.default_rng(0)
  data = {"train_image": rng.integers(0, 256, (6, 28, 28, 3), np.uint8),
          "train_label": np.arange(6), "test_gray": np.zeros((4, 28, 28)),
          "test_image": rng.integers(0, 256, (4, 28, 28, 3), np.uint8),
          "test_label": np.arange(4)}
  path = tmp_path / "mnist_10color_jitter_var_0.020.npy"
  np.save(path, data, allow_pickle=True)
  monkeypatch.setenv(variants.COLORED_NPY_ENV, str(path))
  images, labels = variants.split_arrays("colored", "train")
  np.testing.assert_array_equal(images, data["train_image"])
  np.testing.assert_array_equal(labels, np.arange(6))
  got = variants.make_renderer("colored")(
      jnp.asarray(images), jnp.asarray(labels), jax.random.key(0), "train")
  # Upstream: ToPILImage -> Resize((32, 32), NEAREST) -> ToTensor -> (x-.5)/.5
  want = np.stack([np.asarray(Image.fromarray(x).resize((32, 32),
                                                        Image.NEAREST))
                   for x in images]).astype(np.float32) / 255.
  np.testing.assert_allclose(np.asarray(got), (want - 0.5) / 0.5, atol=1e-6)
  monkeypatch.setenv(variants.COLORED_NPY_ENV, str(tmp_path / "nope.npy"))
  with pytest.raises(FileNotFoundError, match="CGN_COLORED_MNIST_NPY"):
    variants.split_arrays("colored", "test")


def test_unknown_names_are_rejected():
  with pytest.raises(ValueError, match="unknown variant"):
    variants.make_renderer("fashion")
  with pytest.raises(ValueError, match="split"):
    variants.make_renderer("double_colored")(
        jnp.zeros((1, 28, 28), jnp.uint8), jnp.zeros((1,), jnp.int32),
        jax.random.key(0), "val")


def test_texture_download_verifies_sha256(tmp_path, shared_dir):
  """The fetcher copies each texture and rejects a wrong sha256."""
  from cgn_jax import paths  # pylint: disable=g-import-not-at-top
  from cgn_jax.data import textures as textures_lib
  src = shared_dir / "data" / "cgn_upstream" / "textures"
  url = src.as_uri() + "/{name}"
  out = textures_lib.download(tmp_path / "ok", url=url)
  assert textures_lib.is_complete(out)
  for name, digest in textures_lib.FILES.items():
    assert paths.sha256(out / name) == digest
  bad = tmp_path / "bad_src"
  for name in textures_lib.FILES:
    (bad / name).parent.mkdir(parents=True, exist_ok=True)
    (bad / name).write_bytes(b"not a jpeg")
  with pytest.raises(RuntimeError, match="sha256"):
    textures_lib.download(tmp_path / "bad", url=bad.as_uri() + "/{name}")
