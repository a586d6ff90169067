"""Inception Score on synthetic predictions, and the prediction path."""

import jax
import numpy as np
import pytest

from cgn_jax.evaluation import inception_score as is_lib
from cgn_jax.models import inception

pytestmark = pytest.mark.usefixtures("fast_compile")


def _one_hot_log_probs(labels, num_classes=10):
  lp = np.full((len(labels), num_classes), -np.inf, np.float32)
  lp[np.arange(len(labels)), labels] = 0.0
  return lp


def test_uniform_predictions_score_one():
  lp = np.full((50, 1000), -np.log(1000), np.float32)
  mean, std, scores = is_lib.inception_score(lp, splits=5)
  assert mean == pytest.approx(1.0, abs=1e-6) and std == pytest.approx(0)
  assert len(scores) == 5


@pytest.mark.parametrize("k", [1, 7, 10])
def test_confident_even_predictions_score_k(k):
  lp = _one_hot_log_probs(np.arange(20 * k) % k, num_classes=10)
  mean, std, _ = is_lib.inception_score(lp, splits=1)
  assert mean == pytest.approx(k, rel=1e-5) and std == 0
  # Soft but confident predictions stay close to k.
  logits = np.full((20 * k, 10), 0.0, np.float32)
  logits[np.arange(20 * k), np.arange(20 * k) % k] = 20.0
  soft = np.asarray(jax.nn.log_softmax(logits))
  assert is_lib.inception_score(soft, splits=1)[0] == pytest.approx(
      k, rel=1e-3)


def test_splits_use_their_own_marginal():
  # 40 confident images: classes 0..3 in the first half, 4..7 in the second.
  labels = np.concatenate([np.arange(20) % 4, 4 + np.arange(20) % 4])
  lp = _one_hot_log_probs(labels)
  assert is_lib.inception_score(lp, splits=1)[0] == pytest.approx(8)
  mean, std, scores = is_lib.inception_score(lp, splits=2)
  np.testing.assert_allclose(scores, [4, 4], rtol=1e-6)  # p(y) per split
  assert (mean, std) == (pytest.approx(4), pytest.approx(0, abs=1e-6))
  # Unequal splits: 2 classes, then 5; std is over splits (ddof=0).
  labels = np.concatenate([np.arange(10) % 2, 2 + np.arange(30) % 5])
  mean, std, scores = is_lib.inception_score(_one_hot_log_probs(labels),
                                             splits=4)
  np.testing.assert_allclose(scores, [2, 5, 5, 5], rtol=1e-5)
  assert mean == pytest.approx(4.25) and std == pytest.approx(np.std(scores))


def test_split_bounds_use_every_image():
  assert is_lib.split_bounds(7, 2) == [(0, 3), (3, 7)]
  assert is_lib.split_bounds(10, 10)[-1] == (9, 10)
  with pytest.raises(ValueError, match="cannot make"):
    is_lib.split_bounds(3, 4)
  with pytest.raises(ValueError):
    is_lib.split_bounds(3, 0)


def test_predict_pads_batches_and_resizes():
  from cgn_jax.models import inception_weights  # pylint: disable=g-import-not-at-top
  variables = inception_weights.random_variables(0)
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
  predict = is_lib.make_predict_fn(inception.InceptionV3())
  got = is_lib.predict_log_probs(variables, is_lib.batched(images, 2),
                                 predict=predict)
  assert got.shape == (3, 1000)
  x = images.astype(np.float32) / 127.5 - 1
  # The same function at the same shape: compiled once, above.
  want = np.concatenate([predict(variables, x[:2]),
                         predict(variables, np.concatenate([x[2:], x[:1]]))])
  np.testing.assert_allclose(got, want[:3], atol=1e-5)
  np.testing.assert_allclose(np.exp(got).sum(-1), 1, rtol=1e-5)
