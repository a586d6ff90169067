"""LIME explanations of image classifiers, in numpy (the [RR] figure).

The reproduction's `lime_plot.py` (SPEC §7.4) calls the `lime` package:
`LimeImageExplainer().explain_instance(image, classifier_fn, top_labels=5,
hide_color=0, num_samples=1000)`, then `get_image_and_mask(top label,
positive_only=False, num_features=10, hide_rest=False)` and skimage's
`mark_boundaries`. This module is our own implementation of the same
algorithm (Ribeiro et al. 2016, lime 0.2's `lime_image` / `lime_base`):

1. split the image into superpixels;
2. draw `num_samples` binary vectors over the superpixels (the first one all
   ones: the original image), uniform on/off as lime's `randint(0, 2)`;
3. build each perturbed image with the "off" superpixels set to
   `hide_color` and classify it (probabilities);
4. weight each sample by the exponential kernel sqrt(exp(-d² / 0.25²)) of
   its cosine distance d to the all-ones vector;
5. per explained label, fit a weighted ridge regression (alpha 1, with
   intercept: sklearn's `Ridge`, solved in closed form) of the label's
   probability on the binary vectors; its coefficients are the superpixels'
   weights (lime's default feature selection keeps every superpixel when
   num_features is large, as in explain_instance's 100000).

Differences from the `lime` package (scikit-image, which lime needs for
quickshift, is not a dependency here):
* superpixels come from a small SLIC-style k-means on (RGB, x, y) with a grid
  start (`slic_segments`), not quickshift(kernel_size=4, max_dist=200,
  ratio=0.2); segments are not forced to be connected; `grid_segments` is a
  plain grid alternative;
* the random stream is numpy's Generator, so the samples are not lime's;
* `mark_boundaries` draws the 4-neighbour boundary of the mask regions in
  yellow (skimage's default colour), without its 'outer' mode subtleties.
"""

import dataclasses
from typing import Callable

import numpy as np


def grid_segments(height: int, width: int, cells: int = 7) -> np.ndarray:
  """int32 [H, W]: a cells x cells grid of superpixels."""
  ys = np.minimum(np.arange(height) * cells // height, cells - 1)
  xs = np.minimum(np.arange(width) * cells // width, cells - 1)
  return (ys[:, None] * cells + xs[None, :]).astype(np.int32)


def slic_segments(image: np.ndarray, n_segments: int = 50,
                  compactness: float = 10.0, iters: int = 10) -> np.ndarray:
  """SLIC-style superpixels: k-means on colour and position.

  Args:
    image: uint8 or float [H, W, 3] (uint8 levels are used as 0..255).
    n_segments: about how many superpixels (grid-started centres).
    compactness: weight of position against colour (SLIC's m): the
      distance is |Δcolour|² + (m / S)² |Δxy|², S the grid step.
    iters: k-means iterations.

  Returns:
    int32 [H, W] labels 0..K-1 (empty clusters are dropped and the labels
    renumbered).
  """
  h, w = image.shape[:2]
  color = np.asarray(image, np.float32).reshape(-1, 3)
  if color.max() <= 1.0:
    color = color * 255.0
  step = max(1.0, np.sqrt(h * w / n_segments))
  yy, xx = np.mgrid[0:h, 0:w]
  pos = np.stack([yy.ravel(), xx.ravel()], -1).astype(np.float32)
  scale = compactness / step
  feats = np.concatenate([color, pos * scale], axis=1)
  gy = np.arange(step / 2, h, step)
  gx = np.arange(step / 2, w, step)
  cy, cx = np.meshgrid(gy, gx, indexing="ij")
  start = (cy.astype(int).ravel() * w + cx.astype(int).ravel())
  centres = feats[start]
  f2 = (feats ** 2).sum(1, keepdims=True)
  for _ in range(iters):
    d = f2 - 2 * feats @ centres.T + (centres ** 2).sum(1)[None]
    assign = d.argmin(1)
    counts = np.bincount(assign, minlength=len(centres))
    sums = np.zeros_like(centres)
    np.add.at(sums, assign, feats)
    keep = counts > 0
    centres = sums[keep] / counts[keep, None]
  d = f2 - 2 * feats @ centres.T + (centres ** 2).sum(1)[None]
  _, labels = np.unique(d.argmin(1), return_inverse=True)
  return labels.reshape(h, w).astype(np.int32)


def perturb(image: np.ndarray, segments: np.ndarray, on: np.ndarray,
            hide_color: float = 0) -> np.ndarray:
  """[N, H, W, 3] copies of `image` with the 'off' superpixels hidden."""
  visible = on[:, segments]  # [N, H, W]
  return np.where(visible[..., None], image[None],
                  np.asarray(hide_color, image.dtype))


def kernel_weights(samples: np.ndarray, kernel_width: float = 0.25
                   ) -> np.ndarray:
  """lime's sample weights: sqrt(exp(-d² / w²)), d the cosine distance of
  each binary sample to the first (all-ones) one."""
  x = samples.astype(np.float64)
  ref = x[0]
  norms = np.linalg.norm(x, axis=1) * np.linalg.norm(ref)
  cos = np.divide(x @ ref, norms, out=np.zeros(len(x)), where=norms > 0)
  d = 1.0 - cos
  return np.sqrt(np.exp(-(d ** 2) / kernel_width ** 2))


def weighted_ridge(x: np.ndarray, y: np.ndarray, w: np.ndarray,
                   alpha: float = 1.0) -> tuple[np.ndarray, float, float]:
  """sklearn `Ridge(alpha).fit(x, y, sample_weight=w)` in closed form.

  Returns:
    (coefficients [K], intercept, weighted R² on the same data).
  """
  x = x.astype(np.float64)
  y = y.astype(np.float64)
  w = w.astype(np.float64)
  xm = (w[:, None] * x).sum(0) / w.sum()
  ym = (w * y).sum() / w.sum()
  xc, yc = x - xm, y - ym
  a = xc.T @ (w[:, None] * xc) + alpha * np.eye(x.shape[1])
  coef = np.linalg.solve(a, xc.T @ (w * yc))
  intercept = ym - xm @ coef
  pred = x @ coef + intercept
  ss_res = (w * (y - pred) ** 2).sum()
  ss_tot = (w * (y - ym) ** 2).sum()
  return coef, float(intercept), float(1 - ss_res / ss_tot) if ss_tot else 0.0


@dataclasses.dataclass
class Explanation:
  """What `explain` found.

  Attributes:
    segments: int32 [H, W] superpixel labels.
    top_labels: the explained classes, most probable first.
    local_exp: {label: [(superpixel, weight), ...] by decreasing |weight|}.
    intercept: {label: ridge intercept}.
    score: {label: weighted R² of the local model}.
    probabilities: the classifier's output on the original image.
  """
  segments: np.ndarray
  top_labels: list
  local_exp: dict
  intercept: dict
  score: dict
  probabilities: np.ndarray


def explain(classifier_fn: Callable[[np.ndarray], np.ndarray],
            image: np.ndarray, *, top_labels: int = 5, num_samples: int = 1000,
            hide_color: float = 0, batch_size: int = 50,
            segments: np.ndarray | None = None, seed: int = 0
            ) -> Explanation:
  """LIME for one image (lime's `explain_instance`, see the module doc).

  Args:
    classifier_fn: images [N, H, W, 3] (same dtype/range as `image`) ->
      class probabilities [N, C].
    image: the image to explain, [H, W, 3].
    top_labels: how many of the most probable classes to explain.
    num_samples: perturbed images (the first is the original).
    hide_color: the value of hidden superpixels.
    batch_size: images per classifier call.
    segments: superpixels [H, W]; default `slic_segments(image)`.
    seed: seeds the on/off draws.

  Returns:
    An Explanation.
  """
  if segments is None:
    segments = slic_segments(image)
  k = int(segments.max()) + 1
  rng = np.random.default_rng(seed)
  on = rng.integers(0, 2, (num_samples, k)).astype(bool)
  on[0] = True
  probs = np.concatenate([
      np.asarray(classifier_fn(perturb(image, segments, on[i:i + batch_size],
                                       hide_color)), np.float64)
      for i in range(0, num_samples, batch_size)])
  weights = kernel_weights(on)
  labels = list(np.argsort(-probs[0], kind="stable")[:top_labels])
  local_exp, intercept, score = {}, {}, {}
  for label in labels:
    coef, b, r2 = weighted_ridge(on, probs[:, label], weights)
    order = np.argsort(-np.abs(coef), kind="stable")
    local_exp[int(label)] = [(int(f), float(coef[f])) for f in order]
    intercept[int(label)] = b
    score[int(label)] = r2
  return Explanation(segments, [int(x) for x in labels], local_exp,
                     intercept, score, probs[0])


def image_and_mask(explanation: Explanation, image: np.ndarray, label: int,
                   positive_only: bool = False, num_features: int = 10,
                   hide_rest: bool = False) -> tuple[np.ndarray, np.ndarray]:
  """lime's `get_image_and_mask`: the image with the top superpixels marked.

  With positive_only=False, the num_features superpixels of largest |weight|
  are marked: mask +1 and the green channel at the image's maximum where the
  weight is positive, mask -1 and the red channel where it is negative.

  Returns:
    (image copy [H, W, 3] float, mask int [H, W]).
  """
  segs = explanation.segments
  exp = explanation.local_exp[label]
  temp = (np.zeros(image.shape, np.float64) if hide_rest
          else np.asarray(image, np.float64).copy())
  mask = np.zeros(segs.shape, np.int32)
  if positive_only:
    chosen = [(f, w) for f, w in exp if w > 0][:num_features]
    for f, _ in chosen:
      temp[segs == f] = image[segs == f]
      mask[segs == f] = 1
    return temp, mask
  top = np.max(image)
  for f, w in exp[:num_features]:
    where = segs == f
    temp[where] = image[where]
    temp[where, 0 if w < 0 else 1] = top
    mask[where] = -1 if w < 0 else 1
  return temp, mask


def mark_boundaries(image: np.ndarray, mask: np.ndarray,
                    color=(1.0, 1.0, 0.0)) -> np.ndarray:
  """Colours the pixels where `mask` changes between 4-neighbours."""
  out = np.asarray(image, np.float64).copy()
  edge = np.zeros(mask.shape, bool)
  edge[:-1] |= mask[:-1] != mask[1:]
  edge[1:] |= mask[1:] != mask[:-1]
  edge[:, :-1] |= mask[:, :-1] != mask[:, 1:]
  edge[:, 1:] |= mask[:, 1:] != mask[:, :-1]
  out[edge] = color
  return out
