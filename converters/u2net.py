"""Converts released U²-Net / U²-Netp PyTorch weights to Flax variables.

  python -m converters u2net --input u2net.pth --variant u2net --output DIR
  python -m converters u2net --input u2netp.pth --variant u2netp --output DIR

The weights are the official ones from xuebinqin/U-2-Net (Google Drive links
in its README; CGN's own `download_weights.sh` link is dead, NOTES §14).
Both the zip format and PyTorch's legacy (pre-1.6) format load, safely
(`torch.load(weights_only=True)`), and a DataParallel `module.` prefix is
stripped. Before converting, every key and shape is checked against the
chosen variant; a mismatch lists all missing, unexpected and mis-shaped keys,
and says so when the file is the other variant. The SHA-256 of the input is
recorded in the output's metadata: a truncated or different Drive download
(U-2-Net issue #395) then shows up as a shape error or a different hash.

Rules (all modules are named as in PyTorch, see cgn_jax/models/u2net.py):
  `X.conv_s1.weight`, `sideK.weight`, `outconv.weight` (O, I, kh, kw)
      -> params/X/kernel (kh, kw, I, O); `.bias` -> params/X/bias
  `X.bn_s1.weight/.bias` -> params/X/bn_s1/scale/bias
  `X.bn_s1.running_mean/_var` -> batch_stats/X/bn_s1/mean/var
  `X.bn_s1.num_batches_tracked` -> dropped
"""

import pathlib
from typing import Mapping

import jax
import numpy as np

from cgn_jax import paths
from cgn_jax.models import u2net_weights
from converters import common

_VARIANTS = u2net_weights.VARIANTS


def _torch_key(path) -> str:
  """Flax tree path -> the PyTorch state-dict key it comes from."""
  names = [k.key for k in path]
  collection, *modules, leaf = names
  torch_leaf = {
      ("params", "kernel"): "weight",
      ("params", "bias"): "bias",
      ("params", "scale"): "weight",
      ("batch_stats", "mean"): "running_mean",
      ("batch_stats", "var"): "running_var",
  }[(collection, leaf)]
  return ".".join(modules + [torch_leaf])


def _torch_shape(path, shape) -> tuple:
  if path[-1].key == "kernel":  # HWIO -> OIHW
    kh, kw, i, o = shape
    return (o, i, kh, kw)
  return tuple(shape)


def expected_keys(variant: str) -> dict[str, tuple]:
  """PyTorch key -> shape that a `variant` checkpoint must hold.

  `num_batches_tracked` buffers are optional and not listed.
  """
  from cgn_jax.models import u2net  # pylint: disable=g-import-not-at-top
  abstract = u2net.abstract_variables(variant)
  return {_torch_key(p): _torch_shape(p, x.shape)
          for p, x in jax.tree_util.tree_leaves_with_path(abstract)}


def _mismatch(state_dict, variant):
  """(missing, unexpected, misshaped) PyTorch keys of `state_dict`."""
  want = expected_keys(variant)
  have = {k: tuple(np.shape(v)) for k, v in state_dict.items()
          if not k.endswith("num_batches_tracked")}
  return common.key_mismatch(have, want)


def check_state_dict(state_dict: Mapping[str, np.ndarray],
                     variant: str) -> None:
  """Raises ConversionError unless `state_dict` is exactly a `variant`.

  Args:
    state_dict: PyTorch key -> array (prefix already stripped).
    variant: 'u2net' or 'u2netp'.
  """
  if variant not in _VARIANTS:
    raise ValueError(f"unknown variant {variant!r}; use one of {_VARIANTS}")
  missing, unexpected, misshaped = _mismatch(state_dict, variant)
  if not (missing or unexpected or misshaped):
    return
  message = common.mismatch_message(f"U²-Net variant {variant!r}", missing,
                                    unexpected, misshaped)
  other = _VARIANTS[1 - _VARIANTS.index(variant)]
  if not any(_mismatch(state_dict, other)):
    message = (f"this is a {other} checkpoint, not {variant}: pass "
               f"--variant {other}\n" + message)
  elif misshaped and not (missing or unexpected):
    message += ("\n  (every key is present but shapes differ: the file may "
                "be another model trained with the U²-Net code)")
  raise common.ConversionError(message)


def convert(state_dict: Mapping[str, np.ndarray], variant: str = "u2net"):
  """PyTorch U²-Net state dict -> Flax {'params', 'batch_stats'}.

  Args:
    state_dict: PyTorch key -> numpy array, e.g. from
      `common.load_torch_state_dict`. A leading 'module.' is stripped.
    variant: 'u2net' or 'u2netp'.

  Returns:
    Nested dict of float32 numpy arrays matching `U2Net(variant)`.

  Raises:
    ConversionError: keys or shapes do not fit the variant (all listed).
  """
  state_dict = common.strip_prefix(state_dict, "module.")
  check_state_dict(state_dict, variant)
  from cgn_jax.models import u2net  # pylint: disable=g-import-not-at-top
  abstract = u2net.abstract_variables(variant)

  def leaf(path, _):
    value = np.asarray(state_dict[_torch_key(path)], np.float32)
    if path[-1].key == "kernel":
      value = value.transpose(2, 3, 1, 0)  # OIHW -> HWIO
    return value

  variables = jax.tree_util.tree_map_with_path(leaf, abstract)
  variables = jax.tree.map(np.asarray, variables)
  common.check_tree(variables, abstract, f"U²-Net variant {variant!r}")
  return {k: dict(v) for k, v in variables.items()}


load = u2net_weights.load  # the library reads converted directories


def add_arguments(parser):
  parser.add_argument("--input", required=True,
                      help="u2net.pth / u2netp.pth from xuebinqin/U-2-Net")
  parser.add_argument("--variant", choices=_VARIANTS, default="u2net",
                      help="u2net (full, 176 MB, used by CGN) or u2netp "
                      "(small, 4.7 MB)")
  parser.add_argument("--output", required=True,
                      help="directory for the orbax checkpoint")


def run(args):
  path = pathlib.Path(args.input)
  state_dict = common.load_torch_state_dict(path)
  variables = convert(state_dict, args.variant)
  from cgn_jax.models import u2net  # pylint: disable=g-import-not-at-top
  metadata = {"model": "u2net", "variant": args.variant,
              "source": path.name, "sha256": paths.sha256(path),
              "params": u2net.param_count(variables)}
  common.save_variables(args.output, variables, metadata)
  print(f"converted {path} ({args.variant}, {metadata['params']:,} params, "
        f"sha256 {metadata['sha256'][:12]}...) -> {args.output}")
  return 0
