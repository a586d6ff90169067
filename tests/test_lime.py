"""Our LIME implementation (cgn_jax.evaluation.lime) on stub classifiers."""

import numpy as np
from PIL import Image
import pytest

from cgn_jax.evaluation import lime
from cgn_jax.experiments import lime as lime_cli


def test_weighted_ridge_closed_form():
  rng = np.random.default_rng(0)
  x = rng.integers(0, 2, (200, 6)).astype(float)
  y = x @ np.array([1.0, -2, 0, 0.5, 0, 3]) + 0.25
  w = rng.uniform(0.1, 1, 200)
  coef, b, r2 = lime.weighted_ridge(x, y, w, alpha=1e-9)
  np.testing.assert_allclose(coef, [1, -2, 0, 0.5, 0, 3], atol=1e-6)
  assert b == pytest.approx(0.25, abs=1e-6) and r2 == pytest.approx(1.0)
  # With a penalty the normal equations of the centred, weighted problem
  # hold: (Xc' W Xc + a I) coef = Xc' W yc.
  coef, b, _ = lime.weighted_ridge(x, y, w, alpha=1.0)
  xm, ym = (w @ x) / w.sum(), (w @ y) / w.sum()
  xc, yc = x - xm, y - ym
  np.testing.assert_allclose((xc.T * w) @ xc @ coef + coef, (xc.T * w) @ yc,
                             rtol=1e-9, atol=1e-9)
  assert b == pytest.approx(ym - xm @ coef)


def test_kernel_weights():
  s = np.array([[1, 1, 1, 1], [1, 1, 0, 0], [0, 0, 0, 0]], bool)
  w = lime.kernel_weights(s)
  d = 1 - 2 / (2 * np.sqrt(2))  # cosine distance of row 1 to all-ones
  np.testing.assert_allclose(w, [1.0, np.sqrt(np.exp(-d ** 2 / 0.0625)),
                                 np.sqrt(np.exp(-1 / 0.0625))])


def test_slic_separates_colours():
  img = np.zeros((40, 60, 3), np.uint8)
  img[:, :30] = (220, 20, 20)
  img[:, 30:] = (20, 20, 220)
  seg = lime.slic_segments(img, n_segments=12)
  assert seg.shape == (40, 60) and seg.min() == 0
  assert not set(np.unique(seg[:, :30])) & set(np.unique(seg[:, 30:]))
  assert len(np.unique(seg)) >= 4
  grid = lime.grid_segments(40, 60, 4)
  assert len(np.unique(grid)) == 16 and grid[39, 59] == 15


def test_explain_finds_the_superpixel_that_matters():
  # Class 2's probability grows with how much of grid cell 5 is visible;
  # class 0 with cell 9; every other cell is irrelevant.
  rng = np.random.default_rng(1)
  img = rng.integers(1, 256, (32, 32, 3), np.uint8)
  seg = lime.grid_segments(32, 32, 4)

  def classifier_fn(images):
    v5 = (images[:, seg == 5] > 0).mean((1, 2))
    v9 = (images[:, seg == 9] > 0).mean((1, 2))
    p = np.full((len(images), 4), 0.05)
    p[:, 2] = 0.5 * v5 + 0.1
    p[:, 0] = 0.3 * v9 + 0.05
    return p / p.sum(1, keepdims=True)

  exp = lime.explain(classifier_fn, img, top_labels=2, num_samples=300,
                     segments=seg, seed=0)
  assert exp.top_labels == [2, 0]
  assert exp.local_exp[2][0][0] == 5 and exp.local_exp[2][0][1] > 0
  assert exp.local_exp[0][0][0] == 9 and exp.local_exp[0][0][1] > 0
  # cell 9 takes probability away from class 2 (normalisation)
  weights2 = dict(exp.local_exp[2])
  assert weights2[9] < 0
  again = lime.explain(classifier_fn, img, top_labels=2, num_samples=300,
                       segments=seg, seed=0)
  assert again.local_exp == exp.local_exp
  temp, mask = lime.image_and_mask(exp, img, 2, num_features=2)
  assert mask[seg == 5].min() == 1 and mask[seg == 9].max() == -1
  assert (temp[seg == 5][:, 1] == img.max()).all()
  assert (temp[seg == 9][:, 0] == img.max()).all()
  out = lime.mark_boundaries(temp / 255, mask)
  assert out.shape == (32, 32, 3)
  assert (out[mask != 0] == (1, 1, 0)).all(-1).any()


@pytest.mark.usefixtures("fast_compile")
def test_cli_smoke(tmp_path):
  pytest.importorskip("cgn_jax.models.ensemble")
  path = tmp_path / "x.jpg"
  x = np.random.default_rng(0).integers(0, 256, (300, 260, 3), np.uint8)
  Image.fromarray(x).save(path)
  out = tmp_path / "lime.png"
  assert lime_cli.main(["--smoke", "--image", str(path), "--out", str(out),
                        "--num-samples", "20", "--batch-size", "10",
                        "--segments", "16"]) == 0
  assert Image.open(out).size == (224, 224)
