"""The backgrounds challenge (Xiao et al., MadryLab): IN-9 and BG-Gap.

Data: the `backgrounds_challenge_data` release of MadryLab/backgrounds_
challenge, one 9-class ImageFolder per variation (`original`, `mixed_same`,
`mixed_rand`, each with a `val/` folder of `00_dog` ... `08_fish`), images
already 224x224. Preprocessing is ToTensor + the IN-9 statistics (SPEC §6.3,
following MadryLab; training uses ImageNet's).

A 1000-way prediction counts as correct when its top-1 class maps to the
image's IN-9 class through `in_to_in9.json` (370 ImageNet classes map to a
superclass; the other 630 map to -1, which is always wrong). Scored for each
of avg, shape, texture, bg and shape_texture; BG-Gap = mixed_same −
mixed_rand accuracy of the shape_texture prediction (without the background
head). Accuracy is over the real number of images: upstream divides by
batch size × number of batches, which under-reports when the last batch is
partial (SPEC §10 item 14); `upstream_denominator` gives that figure too.
"""

import functools
import json
import os
import pathlib
from typing import Callable, Iterable, Sequence

import numpy as np

from cgn_jax import paths
from cgn_jax.data import imagenet
from cgn_jax.evaluation import accuracy

VARIATIONS = ("original", "mixed_same", "mixed_rand")
NUM_IN9 = 9

HELP = ("The IN-9 test sets are the `backgrounds_challenge_data.tar.gz` "
        "release of https://github.com/MadryLab/backgrounds_challenge; unpack "
        "it and pass the folder holding original/, mixed_same/ and "
        "mixed_rand/.")


@functools.lru_cache(maxsize=None)
def in9_map(path: os.PathLike | str | None = None) -> np.ndarray:
  """int32 [1000]: IN-9 class of each ImageNet class, -1 for none.

  Args:
    path: an `in_to_in9.json` ({"<imagenet index>": in9 class or -1}); the
      default is the copy in <shared>/data/imagenet_meta/.
  """
  path = pathlib.Path(path or paths.shared_dir() / "data" / "imagenet_meta"
                      / "in_to_in9.json")
  if not path.is_file():
    raise imagenet.DataError(
        f"{path} is missing: it is utils/eval_bg_gap/in_to_in9.json of "
        "autonomousvision/counterfactual_generative_networks (the same file "
        "as MadryLab/backgrounds_challenge's); set CGN_SHARED_DIR or pass "
        "its path.")
  table = json.loads(path.read_text())
  out = np.full((1000,), -1, np.int32)
  for k, v in table.items():
    out[int(k)] = int(v)
  return out


def variation_folder(root: os.PathLike | str, variation: str) -> pathlib.Path:
  """`<root>/<variation>/val` (the release's layout), else `<root>/<variation>`.
  """
  base = pathlib.Path(root).expanduser() / variation
  return base / "val" if (base / "val").is_dir() else base


def variation_source(root: os.PathLike | str,
                     variation: str) -> imagenet.FileSource:
  """One IN-9 variation as a 9-class source (sorted folder names)."""
  src = imagenet.image_folder(variation_folder(root, variation),
                              what=f"IN-9 {variation}", help_text=HELP)
  if len(src.classes) != NUM_IN9:
    raise imagenet.DataError(
        f"IN-9 {variation} under {root} has {len(src.classes)} class "
        f"folders, expected 9 (00_dog ... 08_fish). {HELP}")
  return src


def count_correct(logits: np.ndarray, labels: np.ndarray, table: np.ndarray,
                  mask: np.ndarray | None = None) -> int:
  """Images whose top-1 ImageNet class maps to their IN-9 label."""
  pred = table[np.argmax(logits, axis=-1)]
  hit = (pred == np.asarray(labels)) & (pred >= 0)  # -1 is always wrong
  if mask is not None:
    hit &= mask
  return int(hit.sum())


def evaluate_variation(apply_fn: Callable, batches: Iterable[dict],
                       table: np.ndarray | None = None,
                       outputs: Sequence[str] = accuracy.OUTPUTS) -> dict:
  """Accuracy (%) of each prediction on one IN-9 variation.

  Args:
    apply_fn: images -> the ensemble's outputs (see evaluation.accuracy).
    batches: eval batches with IN-9 preprocessing ({'image', 'label',
      'mask'}), e.g. `imagenet.eval_dataset(source, b, kind='in9')`.
    table: the 1000 -> 9 map (default `in9_map()`).
    outputs: the predictions to score.

  Returns:
    {output: accuracy %} plus 'num_images' and 'upstream_denominator'
    (batch size × number of batches, upstream's divisor).
  """
  table = in9_map() if table is None else table
  correct = {k: 0 for k in outputs}
  n = rows = 0
  for out, batch in accuracy.predictions(apply_fn, batches):
    mask = batch["mask"]
    for k in outputs:
      correct[k] += count_correct(out[k], batch["label"], table, mask)
    n += int(mask.sum())
    rows += len(mask)
  if n == 0:
    raise imagenet.DataError("the IN-9 variation has no images")
  res = {k: 100.0 * v / n for k, v in correct.items()}
  res["num_images"] = n
  res["upstream_denominator"] = rows
  return res


def bg_gap(results: dict) -> float:
  """mixed_same − mixed_rand accuracy of the shape_texture prediction."""
  return (results["mixed_same"]["shape_texture"]
          - results["mixed_rand"]["shape_texture"])


def evaluate(apply_fn: Callable, root: os.PathLike | str, batch_size: int,
             variations: Sequence[str] = VARIATIONS,
             table: np.ndarray | None = None, **batch_kwargs) -> dict:
  """Every IN-9 variation found under `root`, and BG-Gap.

  Args:
    apply_fn: images -> the ensemble's outputs.
    root: the unpacked backgrounds challenge release.
    batch_size: images per batch (the last one is padded, not counted).
    variations: which folders to score.
    table: the 1000 -> 9 map (default `in9_map()`).
    **batch_kwargs: passed to `imagenet.iterate` (worker_count, ...).

  Returns:
    {variation: evaluate_variation's dict, 'bg_gap': float (when both
    mixed variations are there)}.

  Raises:
    imagenet.DataError: `root` is missing, or holds none of `variations`.
  """
  root = pathlib.Path(root).expanduser()
  if not root.is_dir():
    raise imagenet.DataError(f"IN-9 folder {root} does not exist. {HELP}")
  table = in9_map() if table is None else table
  res = {}
  for v in variations:
    if not (root / v).is_dir():
      continue
    batches = imagenet.process_batches(variation_source(root, v),
                                       batch_size, kind="in9",
                                       **batch_kwargs)
    res[v] = evaluate_variation(apply_fn, batches, table)
  if not res:
    raise imagenet.DataError(f"none of {list(variations)} under {root}. "
                             f"{HELP}")
  if "mixed_same" in res and "mixed_rand" in res:
    res["bg_gap"] = bg_gap(res)
  return res
