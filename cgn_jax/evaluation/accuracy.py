"""Top-k accuracy of the ensemble's outputs over a whole evaluation set.

SPEC §6.3: ImageNet validation top-1 / top-5 of the averaged logits, and on
the counterfactual validation set top-1 / top-5 of each head against its own
label (shape head vs shape label, ...). Counts are exact over the real
number of images: padding rows of the last batch (mask False) are skipped.

`apply_fn` everywhere is `images float32 [B, H, W, 3] -> outputs`, where
outputs is a dict with the ensemble's five logits ('shape', 'texture',
'bg', 'avg', 'shape_texture', each [B, 1000]; upstream's '<name>_preds'
keys are accepted too) or the model's own `(avg, aux)` pair.
"""

from typing import Callable, Iterable, Sequence

import numpy as np

OUTPUTS = ("shape", "texture", "bg", "avg", "shape_texture")
# counterfactual head -> the label it is scored against
CF_HEADS = {"shape": "shape_label", "texture": "texture_label",
            "bg": "bg_label"}


def as_outputs(result) -> dict[str, np.ndarray]:
  """The five logits of an apply_fn result as float32 numpy arrays."""
  if isinstance(result, tuple):  # the model's (avg, aux)
    result = result[1]
  out = {}
  for k, v in result.items():
    name = k[:-len("_preds")] if k.endswith("_preds") else k
    if name in OUTPUTS:
      out[name] = np.asarray(v, np.float32)
  missing = set(OUTPUTS) - set(out)
  if missing:
    raise KeyError(f"apply_fn returned {sorted(result)}; missing the "
                   f"ensemble outputs {sorted(missing)}")
  return out


def predictions(apply_fn: Callable, batches: Iterable[dict]):
  """Yields (outputs, batch) per batch, outputs as in `as_outputs`."""
  for batch in batches:
    yield as_outputs(apply_fn(batch["image"])), batch


def topk_correct(logits: np.ndarray, labels: np.ndarray,
                 ks: Sequence[int] = (1, 5),
                 mask: np.ndarray | None = None) -> dict[int, int]:
  """Number of rows whose label is among the k largest logits, per k.

  Ties are broken towards the lower class index (as a stable sort), which
  only matters for exactly equal logits.
  """
  logits = np.asarray(logits)
  labels = np.asarray(labels)
  if mask is None:
    mask = np.ones(labels.shape, bool)
  order = np.argsort(-logits, axis=-1, kind="stable")[:, :max(ks)]
  hit = order == labels[:, None]
  return {k: int((hit[:, :k].any(-1) & mask).sum()) for k in ks}


class TopK:
  """Accumulates top-k hits of several named predictions."""

  def __init__(self, ks: Sequence[int] = (1, 5)):
    self.ks = tuple(ks)
    self.correct: dict[str, dict[int, int]] = {}
    self.count = 0

  def update(self, name: str, logits, labels, mask=None):
    c = topk_correct(logits, labels, self.ks, mask)
    acc = self.correct.setdefault(name, {k: 0 for k in self.ks})
    for k in self.ks:
      acc[k] += c[k]

  def percent(self) -> dict[str, dict[str, float]]:
    """{name: {'top1': %, 'top5': %}} over `count` images."""
    if not self.count:
      raise ValueError("no images were evaluated")
    return {name: {f"top{k}": 100.0 * v / self.count for k, v in c.items()}
            for name, c in self.correct.items()}


def imagenet_accuracy(apply_fn: Callable, batches: Iterable[dict]) -> dict:
  """ImageNet validation top-1 / top-5 (%) of the averaged logits.

  Args:
    apply_fn: see the module docstring.
    batches: from `cgn_jax.data.imagenet.eval_dataset` ({'image', 'label',
      'mask'}).

  Returns:
    {'top1', 'top5' (percent), 'num_images'}.
  """
  acc = TopK()
  for out, batch in predictions(apply_fn, batches):
    mask = batch.get("mask")
    acc.update("avg", out["avg"], batch["label"], mask)
    acc.count += int(mask.sum()) if mask is not None else len(batch["label"])
  return {**acc.percent()["avg"], "num_images": acc.count}


def counterfactual_accuracy(apply_fn: Callable, batches: Iterable[dict]
                            ) -> dict:
  """Counterfactual validation top-1 / top-5 (%) of each head.

  Args:
    apply_fn: see the module docstring.
    batches: {'image', 'shape_label', 'texture_label', 'bg_label', 'mask'}.

  Returns:
    {'shape' | 'texture' | 'bg': {'top1', 'top5'}, 'num_images'}.
  """
  acc = TopK()
  for out, batch in predictions(apply_fn, batches):
    mask = batch.get("mask")
    for head, label in CF_HEADS.items():
      acc.update(head, out[head], batch[label], mask)
    acc.count += (int(mask.sum()) if mask is not None
                  else len(batch["shape_label"]))
  return {**acc.percent(), "num_images": acc.count}
