"""Shape bias on Geirhos et al.'s cue-conflict stimuli (SPEC §6.3).

Stimuli: rgeirhos/texture-vs-shape `stimuli/style-transfer-preprocessed-512`
(1,280 PNGs in 16 category folders; `git clone` that repository). A file
`{shape}{k}-{texture}{j}.png` has the shape of one category and the texture
of another; the 80 images whose two categories agree are dropped, leaving
1,200.

Decision (upstream `utils/eval_shape_bias`, Geirhos' `probabilities_to_
decision`): softmax over a head's 1000 logits, the mean probability over each
category's ImageNet indices, argmax over the 16 (the first category in
sorted order wins a tie). Shape bias = shape hits / (shape hits + texture
hits) over the kept images, 0 when both are 0; one value per head.
"""

import csv
import os
import pathlib
import re
from typing import Callable, Iterable, Sequence

import numpy as np

from cgn_jax.data import imagenet
from cgn_jax.evaluation import accuracy

# Sorted, as upstream's get_human_object_recognition_categories().
CATEGORIES = ("airplane", "bear", "bicycle", "bird", "boat", "bottle", "car",
              "cat", "chair", "clock", "dog", "elephant", "keyboard", "knife",
              "oven", "truck")

# Category -> ImageNet indices (human_categories.py, `<category>_indices`).
CATEGORY_INDICES = {
    "airplane": [404],
    "bear": [294, 295, 296, 297],
    "bicycle": [444, 671],
    "bird": [8, 10, 11, 12, 13, 14, 15, 16, 18, 19, 20, 22, 23, 24, 80, 81, 82,
             83, 87, 88, 89, 90, 91, 92, 93, 94, 95, 96, 98, 99, 100, 127,
             128, 129, 130, 131, 132, 133, 135, 136, 137, 138, 139, 140, 141,
             142, 143, 144, 145],
    "boat": [472, 554, 625, 814, 914],
    "bottle": [440, 720, 737, 898, 899, 901, 907],
    "car": [436, 511, 817],
    "cat": [281, 282, 283, 284, 285, 286],
    "chair": [423, 559, 765, 857],
    "clock": [409, 530, 892],
    # 152..268 except eight indices that are not dogs in the 16-class map
    "dog": [i for i in range(152, 269)
            if i not in (192, 204, 227, 242, 251, 258, 260, 264)],
    "elephant": [385, 386],
    "keyboard": [508, 878],
    "knife": [499],
    "oven": [766],
    "truck": [555, 569, 656, 675, 717, 734, 864, 867],
}

HELP = ("The cue-conflict stimuli are in rgeirhos/texture-vs-shape: `git clone "
        "https://github.com/rgeirhos/texture-vs-shape` and pass "
        "texture-vs-shape/stimuli/style-transfer-preprocessed-512 (1,280 "
        "PNGs in 16 category folders).")

_NAME = re.compile(r"^([a-z]+)\d+-([a-z]+)\d+\.png$")


def parse_name(filename: str) -> tuple[str, str]:
  """(shape, texture) categories of a stimulus file name.

  'airplane1-bicycle2.png' -> ('airplane', 'bicycle'). Upstream cuts the
  texture at a fixed 5 characters from the end; every released name has one
  digit there, so both agree (the test checks all 1,280).
  """
  m = _NAME.match(os.path.basename(filename))
  if m is None or not {m.group(1), m.group(2)} <= set(CATEGORIES):
    raise ValueError(f"{filename!r} is not a cue-conflict stimulus name "
                     "'{shape}{k}-{texture}{j}.png' of the 16 categories")
  return m.group(1), m.group(2)


def category_matrix() -> np.ndarray:
  """float32 [1000, 16]: column c averages category c's probabilities."""
  m = np.zeros((1000, len(CATEGORIES)), np.float32)
  for c, name in enumerate(CATEGORIES):
    idx = CATEGORY_INDICES[name]
    m[idx, c] = 1.0 / len(idx)
  return m


def softmax(logits: np.ndarray) -> np.ndarray:
  """Row softmax in float32, as torch.nn.Softmax(dim=1) on float32 logits."""
  x = np.asarray(logits, np.float32)
  e = np.exp(x - x.max(axis=-1, keepdims=True))
  return e / e.sum(axis=-1, keepdims=True)


def decisions(logits: np.ndarray) -> np.ndarray:
  """16-class decisions (indices into CATEGORIES) of [N, 1000] logits."""
  probs = softmax(logits)
  # Mean probability per category, each with np.mean's own reduction, as
  # upstream (a matrix product would round differently near ties).
  means = np.stack([probs[:, CATEGORY_INDICES[c]].mean(axis=1)
                    for c in CATEGORIES], axis=1)
  return np.argmax(means, axis=1)  # first maximum, as upstream's strict '>'


def shape_bias(decided: Sequence[int], shapes: Sequence[int],
               textures: Sequence[int]) -> dict:
  """Shape bias of 16-class decisions over the images whose cues conflict.

  Args:
    decided: decisions, indices into CATEGORIES.
    shapes: the shape category of each image.
    textures: the texture category of each image.

  Returns:
    {'shape_bias', 'shape_hits', 'texture_hits', 'num_images' (kept)}.
  """
  d, s, t = (np.asarray(a) for a in (decided, shapes, textures))
  kept = s != t
  sh = int((d[kept] == s[kept]).sum())
  th = int((d[kept] == t[kept]).sum())
  return {"shape_bias": sh / (sh + th) if sh + th else 0.0,
          "shape_hits": sh, "texture_hits": th,
          "num_images": int(kept.sum())}


def list_stimuli(root: os.PathLike | str) -> list[tuple[str, str, str]]:
  """(relative path, shape, texture) of every stimulus, sorted.

  Raises:
    imagenet.DataError: the folder is missing or holds no stimuli.
  """
  root = pathlib.Path(root).expanduser()
  if not root.is_dir():
    raise imagenet.DataError(f"cue-conflict folder {root} does not exist. "
                             f"{HELP}")
  out = []
  for p in sorted(root.glob("*/*.png")):
    rel = p.relative_to(root).as_posix()
    out.append((rel, *parse_name(p.name)))
  if not out:
    raise imagenet.DataError(f"no cue-conflict PNGs under {root}/*/. {HELP}")
  return out


def stimulus_source(root: os.PathLike | str,
                    keep_agreeing: bool = False) -> imagenet.FileSource:
  """The kept stimuli as a source with category-index labels.

  Args:
    root: the `style-transfer-preprocessed-512` folder.
    keep_agreeing: also keep images whose shape and texture agree.

  Returns:
    A FileSource with 'shape_label' and 'texture_label' (indices into
    CATEGORIES), for `imagenet.eval_dataset(kind='imagenet')`.
  """
  root = pathlib.Path(root).expanduser()
  rows = [r for r in list_stimuli(root) if keep_agreeing or r[1] != r[2]]
  index = {c: i for i, c in enumerate(CATEGORIES)}
  return imagenet.FileSource(
      tuple(str(root / r[0]) for r in rows),
      {"shape_label": np.asarray([index[r[1]] for r in rows], np.int32),
       "texture_label": np.asarray([index[r[2]] for r in rows], np.int32)},
      CATEGORIES)


def evaluate(apply_fn: Callable, batches: Iterable[dict],
             heads: Sequence[str] = ("shape", "texture", "bg")) -> dict:
  """Shape bias per head.

  Args:
    apply_fn: images -> the ensemble's outputs (see evaluation.accuracy).
    batches: eval batches of `stimulus_source` ({'image', 'shape_label',
      'texture_label', 'mask'}).
    heads: which outputs to score.

  Returns:
    {head: shape_bias's dict}.
  """
  dec = {h: [] for h in heads}
  shapes, textures = [], []
  for out, batch in accuracy.predictions(apply_fn, batches):
    m = batch["mask"]
    for h in heads:
      dec[h].append(decisions(out[h][m]))
    shapes.append(batch["shape_label"][m])
    textures.append(batch["texture_label"][m])
  s, t = np.concatenate(shapes), np.concatenate(textures)
  return {h: shape_bias(np.concatenate(dec[h]), s, t) for h in heads}


def geirhos_csv_shape_bias(path: os.PathLike | str) -> dict:
  """Shape bias of a texture-vs-shape raw-data CSV (decisions, no model).

  The CSV's `object_response` is the decision, `category` the shape; the
  texture comes from the stimulus name at the end of `imagename`.
  """
  index = {c: i for i, c in enumerate(CATEGORIES)}
  d, s, t = [], [], []
  with open(path, newline="") as f:
    for row in csv.DictReader(f):
      shape, texture = parse_name(row["imagename"].rsplit("_", 1)[-1])
      if shape != row["category"]:
        raise ValueError(f"{path}: {row['imagename']} vs category "
                         f"{row['category']}")
      d.append(index[row["object_response"]])
      s.append(index[shape])
      t.append(index[texture])
  return shape_bias(d, s, t)
