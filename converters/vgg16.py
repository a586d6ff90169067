"""Converts torchvision's ImageNet VGG16 to orbax, and loads it for the losses.

    wget https://download.pytorch.org/models/vgg16-397923af.pth
    python -m converters vgg16 --input vgg16-397923af.pth --output DIR

Only `features.{i}.weight/bias` (13 convs) are kept: conv weights
(O, I, 3, 3) -> HWIO kernels. `classifier.*` is skipped through an explicit
allow-list; any other extra, missing or mis-shaped key is a ConversionError.

Loading the converted directory (and resolving the config field
`perceptual.vgg16`) is the library's job: `cgn_jax/models/vgg16_weights.py`
(`load_vgg16` is re-exported here).
"""

import pathlib
import re
from typing import Mapping

import numpy as np

from cgn_jax.models import vgg16_weights
from converters import common

URL = vgg16_weights.URL
_IGNORED = (re.compile(r"classifier\..*"),)
abstract_variables = vgg16_weights.abstract_variables
random_variables = vgg16_weights.random_variables
load_vgg16 = vgg16_weights.load_vgg16


def convert(state_dict: Mapping[str, np.ndarray]) -> dict:
  """Maps a torchvision VGG16 state dict onto Flax {'params'}.

  Args:
    state_dict: torch key -> numpy array; `features.*` and `classifier.*`.

  Returns:
    {'params': {'features_{i}': {'kernel', 'bias'}}} (numpy float32).

  Raises:
    ConversionError: listing every missing, unexpected and mis-shaped key.
  """
  abstract = abstract_variables()["params"]
  expected = {}
  for name, leaves in abstract.items():
    kh, kw, i, o = leaves["kernel"].shape
    idx = name.split("_")[1]
    expected[f"features.{idx}.weight"] = ((name, "kernel"), (o, i, kh, kw))
    expected[f"features.{idx}.bias"] = ((name, "bias"), (o,))
  given = {k: v for k, v in state_dict.items()
           if not any(r.fullmatch(k) for r in _IGNORED)}
  mismatch = common.key_mismatch({k: np.shape(v) for k, v in given.items()},
                                 {k: s for k, (_, s) in expected.items()})
  if any(mismatch):
    raise common.ConversionError(common.mismatch_message(
        "torchvision VGG16 features", *mismatch))
  params = {}
  for key, ((name, leaf), _) in expected.items():
    v = np.asarray(given[key], np.float32)
    if leaf == "kernel":
      v = np.ascontiguousarray(v.transpose(2, 3, 1, 0))
    params.setdefault(name, {})[leaf] = v
  variables = {"params": params}
  common.check_tree(variables, abstract_variables(), "VGG16 features")
  return variables


def add_arguments(parser) -> None:
  parser.add_argument("--input", required=True,
                      help=f"torchvision VGG16 weights ({URL})")
  parser.add_argument("--output", required=True,
                      help="directory for the orbax checkpoint")


def run(args) -> int:
  variables = convert(common.load_torch_state_dict(args.input))
  common.save_variables(args.output, variables, {
      "model": vgg16_weights.MODEL, "source": pathlib.Path(args.input).name})
  print(f"converted {args.input} -> {args.output}")
  return 0
