"""Converts torchvision's Inception-v3 checkpoint to Flax, for the Inception Score.

    wget https://download.pytorch.org/models/inception_v3_google-0cc3c7bd.pth
    python -m converters inception-v3 --input inception_v3_google-0cc3c7bd.pth \\
        --output DIR

The checkpoint is torchvision's `inception_v3(aux_logits=True)` state dict
(580 keys with the `num_batches_tracked` buffers). Rules (names as in
cgn_jax/models/inception.py):
  `X.conv.weight` (O, I, kh, kw)       -> params/X/conv/kernel (kh, kw, I, O)
  `X.bn.weight` / `X.bn.bias`          -> params/X/bn/scale / bias
  `X.bn.running_mean` / `running_var`  -> batch_stats/X/bn/mean / var
  `fc.weight` (out, in), `AuxLogits.fc.weight` -> .../fc/kernel (in, out)
  `*.num_batches_tracked`              -> dropped
Strict: any missing, unexpected or mis-shaped key is a ConversionError that
lists them all. The input's SHA-256 goes into the output's metadata, so an
Inception Score can say which weights it used.

Loading a converted directory is `cgn_jax.models.inception_weights.load`
(re-exported here as `load`).
"""

import pathlib
from typing import Mapping

import jax
import numpy as np

from cgn_jax import paths
from cgn_jax.models import inception
from cgn_jax.models import inception_weights
from converters import common

URL = inception_weights.URL

_LEAVES = {
    ("params", "kernel"): "weight",
    ("params", "bias"): "bias",
    ("params", "scale"): "weight",
    ("batch_stats", "mean"): "running_mean",
    ("batch_stats", "var"): "running_var",
}


def _torch_key(path) -> str:
  """Flax tree path -> the PyTorch state-dict key it comes from."""
  collection, *modules, leaf = [k.key for k in path]
  return ".".join(modules + [_LEAVES[(collection, leaf)]])


def _to_torch_shape(shape) -> tuple:
  if len(shape) == 4:   # HWIO -> OIHW
    kh, kw, i, o = shape
    return (o, i, kh, kw)
  if len(shape) == 2:   # Dense (in, out) -> Linear (out, in)
    return (shape[1], shape[0])
  return tuple(shape)


def _from_torch(value: np.ndarray) -> np.ndarray:
  value = np.asarray(value, np.float32)
  if value.ndim == 4:
    return np.ascontiguousarray(value.transpose(2, 3, 1, 0))
  if value.ndim == 2:
    return np.ascontiguousarray(value.T)
  return value


def expected_keys() -> dict[str, tuple]:
  """torch key -> shape of torchvision's inception_v3(aux_logits=True).

  `num_batches_tracked` buffers are optional and not listed.
  """
  return {_torch_key(p): _to_torch_shape(x.shape) for p, x in
          jax.tree_util.tree_leaves_with_path(inception.abstract_variables())}


def convert(state_dict: Mapping[str, np.ndarray]) -> dict:
  """torchvision Inception-v3 state dict -> {'params', 'batch_stats'}.

  Args:
    state_dict: torch key -> numpy array; a DataParallel 'module.' prefix
      is stripped.

  Returns:
    Nested dicts of float32 numpy arrays matching `InceptionV3()`.

  Raises:
    ConversionError: listing every missing, unexpected and mis-shaped key.
  """
  state_dict = common.strip_prefix(state_dict, "module.")
  given = {k: tuple(np.shape(v)) for k, v in state_dict.items()
           if not k.endswith("num_batches_tracked")}
  mismatch = common.key_mismatch(given, expected_keys())
  if any(mismatch):
    message = common.mismatch_message(
        "torchvision inception_v3(aux_logits=True)", *mismatch)
    if mismatch[0] and all(k.startswith("AuxLogits.") for k in mismatch[0]):
      message += ("\n  (only AuxLogits is missing: the checkpoint was saved "
                  "with aux_logits=False; re-save it from a model built with "
                  "aux_logits=True, as torchvision's released weights are)")
    raise common.ConversionError(message)
  abstract = inception.abstract_variables()
  variables = jax.tree_util.tree_map_with_path(
      lambda p, _: _from_torch(state_dict[_torch_key(p)]), abstract)
  common.check_tree(variables, abstract, "Inception-v3")
  return jax.tree.map(np.asarray, variables)


# The loader lives in the library (it reads converted directories only).
random_variables = inception_weights.random_variables
load = inception_weights.load


def add_arguments(parser) -> None:
  parser.add_argument("--input", required=True,
                      help=f"torchvision Inception-v3 weights ({URL})")
  parser.add_argument("--output", required=True,
                      help="directory for the orbax checkpoint")


def run(args) -> int:
  path = pathlib.Path(args.input)
  variables = convert(common.load_torch_state_dict(path))
  metadata = {"model": inception_weights.MODEL, "source": path.name,
              "sha256": paths.sha256(path), "aux_logits": True,
              "transform_input": False}
  common.save_variables(args.output, variables, metadata)
  print(f"converted {path} (sha256 {metadata['sha256'][:12]}...) -> "
        f"{args.output}")
  return 0
