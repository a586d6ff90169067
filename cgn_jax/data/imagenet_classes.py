"""ImageNet class lists for counterfactual generation (SPEC §5).

The three curated lists are copied from upstream `imagenet/generate_data.py`
(commit 335bebd), where the authors picked the classes whose shapes,
textures and backgrounds the CGN renders best ("best_classes" mode):
`MASKS` (76 shape classes), `FOREGROUND` (75 texture classes) and
`BACKGROUNDS` (38 background classes). Names are read on demand from
`imagenet_class_index.json` (the Keras/torchvision file: index ->
[wnid, name]).
"""

import functools
import json
import os
import pathlib

from cgn_jax import paths

NUM_CLASSES = 1000

SHAPE_CLASSES = (
    9, 18, 22, 35, 56, 63, 96, 97, 119, 207, 225, 260, 275, 323, 330, 350,
    370, 403, 411, 414, 427, 438, 439, 441, 460, 484, 493, 518, 532, 540, 550,
    559, 561, 570, 604, 647, 688, 713, 724, 749, 751, 756, 759, 779, 780, 802,
    814, 833, 841, 849, 850, 859, 869, 872, 873, 874, 876, 880, 881, 883, 894,
    897, 898, 900, 907, 930, 933, 945, 947, 949, 950, 953, 963, 966, 967, 980)
TEXTURE_CLASSES = (
    12, 15, 18, 25, 54, 66, 72, 130, 145, 207, 251, 267, 271, 275, 293, 323,
    385, 388, 407, 409, 427, 438, 439, 441, 454, 461, 468, 482, 483, 486, 490,
    492, 509, 530, 555, 607, 608, 629, 649, 652, 681, 688, 719, 720, 728, 737,
    741, 751, 756, 779, 800, 810, 850, 852, 854, 869, 881, 907, 911, 930, 936,
    937, 938, 941, 949, 950, 951, 954, 957, 959, 963, 966, 985, 987, 992)
BACKGROUND_CLASSES = (
    7, 9, 20, 30, 35, 46, 50, 65, 72, 93, 96, 97, 119, 133, 147, 337, 350, 353,
    354, 383, 429, 460, 693, 801, 888, 947, 949, 952, 953, 955, 958, 970, 972,
    973, 974, 977, 979, 998)

# Upstream's names for the same lists.
MASKS, FOREGROUND, BACKGROUNDS = (SHAPE_CLASSES, TEXTURE_CLASSES,
                                  BACKGROUND_CLASSES)
BEST_CLASSES = (SHAPE_CLASSES, TEXTURE_CLASSES, BACKGROUND_CLASSES)


def class_index_path() -> pathlib.Path:
  """`CGN_IMAGENET_CLASS_INDEX`, else the shared copy."""
  env = os.environ.get("CGN_IMAGENET_CLASS_INDEX")
  if env:
    return pathlib.Path(env).expanduser()
  return paths.shared_dir() / "data" / "imagenet_meta" / \
      "imagenet_class_index.json"


@functools.lru_cache(maxsize=4)
def _load(path: str) -> tuple[tuple[str, str], ...]:
  p = pathlib.Path(path)
  if not p.is_file():
    raise FileNotFoundError(
        f"ImageNet class index {p} not found; set CGN_IMAGENET_CLASS_INDEX "
        "to a copy of imagenet_class_index.json (index -> [wnid, name])")
  with open(p) as f:
    table = json.load(f)
  if sorted(map(int, table)) != list(range(NUM_CLASSES)):
    raise ValueError(f"{p} does not list the {NUM_CLASSES} ImageNet classes")
  return tuple(tuple(table[str(i)]) for i in range(NUM_CLASSES))


def class_names(path=None) -> tuple[str, ...]:
  """The 1000 human-readable class names, by index."""
  return tuple(n for _, n in _load(str(path or class_index_path())))


def wnids(path=None) -> tuple[str, ...]:
  """The 1000 WordNet ids (n01440764, ...), by index."""
  return tuple(w for w, _ in _load(str(path or class_index_path())))


def check_class(c, what: str = "class") -> int:
  """An int in 0..999, or ValueError naming the bad value."""
  if isinstance(c, bool) or int(c) != c or not 0 <= int(c) < NUM_CLASSES:
    raise ValueError(f"{what} {c!r} is not an ImageNet class index "
                     f"(0..{NUM_CLASSES - 1})")
  return int(c)
