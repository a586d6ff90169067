"""Converts torchvision ResNet-50 and upstream InvariantEnsemble checkpoints.

    wget https://download.pytorch.org/models/resnet50-0676ba61.pth
    python -m converters resnet50 --input resnet50-0676ba61.pth --output DIR
    python -m converters invariant-ensemble --input checkpoint.pth --output DIR

`resnet50`: a torchvision `resnet50()` state dict (V1 `resnet50-0676ba61.pth`
or V2 `resnet50-11ad3fa6.pth`: same keys) -> `cgn_jax.models.resnet`
{'params', 'batch_stats'}, fc included. The classifier trainer takes DIR as
its pretrained backbone (`config.pretrained`) and drops the fc.

`invariant-ensemble`: an upstream `InvariantEnsemble('resnet50')` state dict
(`train_classifier.py`'s `checkpoint.pth` / `model_best.pth`, whose
'state_dict' entry is used; a DataParallel 'module.' prefix is stripped) ->
`cgn_jax.models.ensemble` variables.

The rules (the whole table):
- `backbone.{0,1,4,5,6,7}` (ensemble only) -> conv1, bn1, layer1..layer4;
- `layerN.i` -> `layerN_i`, `downsample.j` -> `downsample_j`,
  `m_{head}.1` -> `m_{head}_1`;
- conv weight (O, I, kh, kw) -> kernel HWIO; Linear weight (O, I) -> (I, O);
- BatchNorm weight -> scale, bias -> bias, running_mean/var -> batch_stats
  mean/var (eps 1e-5 as torch), num_batches_tracked dropped.
Any missing, unexpected or mis-shaped key is a ConversionError listing all.
"""

import logging
import pathlib
from typing import Mapping

import jax
import numpy as np

from cgn_jax.models import ensemble as ensemble_lib
from cgn_jax.models import resnet as resnet_lib
from cgn_jax.models import resnet_weights
from converters import common

URL = resnet_weights.URL

# InvariantEnsemble's backbone is nn.Sequential(*resnet.children()[:-1]).
_BACKBONE_CHILDREN = {"0": "conv1", "1": "bn1", "4": "layer1", "5": "layer2",
                      "6": "layer3", "7": "layer4"}
_BN_LEAVES = {"running_mean": "mean", "running_var": "var"}


def _flax_path(key: str, ndim: int):
  """torch key -> (collection, path tuple, transpose) or None (dropped)."""
  *modules, leaf = key.split(".")
  if leaf == "num_batches_tracked":
    return None
  if modules[:1] == ["backbone"] and len(modules) > 1:
    child = _BACKBONE_CHILDREN.get(modules[1])
    if child is None:
      return "unknown", (key,), None
    modules = ["backbone", child] + modules[2:]
  names = []
  for m in modules:  # a Sequential index joins the name before it
    if m.isdigit() and names:
      names[-1] += f"_{m}"
    else:
      names.append(m)
  if leaf in _BN_LEAVES:
    return "batch_stats", (*names, _BN_LEAVES[leaf]), None
  if leaf == "bias":
    return "params", (*names, "bias"), None
  if leaf == "weight" and ndim == 4:
    return "params", (*names, "kernel"), (2, 3, 1, 0)
  if leaf == "weight" and ndim == 2:
    return "params", (*names, "kernel"), (1, 0)
  if leaf == "weight" and ndim == 1:
    return "params", (*names, "scale"), None
  return "unknown", (key,), None


def _abstract(model) -> dict:
  return resnet_weights.abstract_variables(model)


def _flat(tree) -> dict[str, tuple]:
  return {"/".join(str(p.key) for p in path): tuple(x.shape)
          for path, x in jax.tree_util.tree_leaves_with_path(tree)}


def convert(state_dict: Mapping[str, np.ndarray], model, what: str) -> dict:
  """Maps a torch state dict onto `model`'s {'params', 'batch_stats'}.

  Args:
    state_dict: torch key -> numpy array (torchvision ResNet or upstream
      InvariantEnsemble names).
    model: the linen module whose variables the result must fit
      (`resnet.resnet50()` or `ensemble.InvariantEnsemble()`).
    what: the model's name for error messages.

  Returns:
    {'params': ..., 'batch_stats': ...} of numpy float32 arrays.

  Raises:
    ConversionError: listing every missing, unexpected and mis-shaped key.
  """
  abstract = _abstract(model)
  expected = {f"{c}/{k}": s for c in ("params", "batch_stats")
              for k, s in _flat(abstract[c]).items()}
  given, arrays, unknown = {}, {}, []
  for key, value in state_dict.items():
    value = np.asarray(value)
    rule = _flax_path(key, value.ndim)
    if rule is None:
      continue
    collection, path, perm = rule
    if collection == "unknown":
      unknown.append(key)
      continue
    if perm is not None:
      value = value.transpose(perm)
    flat = f"{collection}/" + "/".join(path)
    given[flat], arrays[flat] = value.shape, value
  missing, unexpected, misshaped = common.key_mismatch(given, expected)
  if missing or unexpected or misshaped or unknown:
    raise common.ConversionError(common.mismatch_message(
        what, missing, sorted(unexpected + unknown), misshaped))
  variables = {}
  for flat, value in arrays.items():
    *parents, leaf = flat.split("/")
    node = variables
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = np.ascontiguousarray(value, np.float32)
  return variables


def convert_resnet50(state_dict: Mapping[str, np.ndarray]) -> dict:
  """A torchvision `resnet50()` state dict -> `resnet.resnet50()` variables."""
  return convert(state_dict, resnet_lib.resnet50(), "torchvision ResNet-50")


def convert_ensemble(state_dict: Mapping[str, np.ndarray]) -> dict:
  """An upstream InvariantEnsemble('resnet50') state dict -> its variables."""
  state_dict = common.strip_prefix(state_dict, "module.")
  return convert(state_dict, ensemble_lib.InvariantEnsemble(),
                 "InvariantEnsemble(resnet50)")


def load_resnet50(directory) -> dict:
  """Reads a directory written by `python -m converters resnet50`."""
  return resnet_weights.load_resnet50(directory)


def load_ensemble(directory) -> dict:
  """Reads a directory written by `python -m converters invariant-ensemble`."""
  return resnet_weights.load_ensemble(directory)


def add_arguments(parser) -> None:
  parser.add_argument("--input", required=True,
                      help=f"a torch state dict (torchvision: {URL}; or an "
                      "upstream train_classifier.py checkpoint)")
  parser.add_argument("--output", required=True,
                      help="directory for the orbax checkpoint")


def run(args) -> int:
  """Converts for `resnet50` or `invariant-ensemble` (args.command)."""
  state_dict = common.load_torch_state_dict(args.input)
  if getattr(args, "command", "resnet50") == "invariant-ensemble":
    variables, model = convert_ensemble(state_dict), resnet_weights.ENSEMBLE
  else:
    variables, model = convert_resnet50(state_dict), resnet_weights.RESNET50
  common.save_variables(args.output, variables, {
      "model": model, "source": pathlib.Path(args.input).name})
  logging.info("converted %s -> %s", args.input, args.output)
  print(f"converted {args.input} -> {args.output}")
  return 0

