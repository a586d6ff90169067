"""Converts torchvision's ImageNet VGG16 to orbax, and loads it for the losses.

    wget https://download.pytorch.org/models/vgg16-397923af.pth
    python -m converters vgg16 --input vgg16-397923af.pth --output DIR

Only `features.{i}.weight/bias` (13 convs) are kept: conv weights
(O, I, 3, 3) -> HWIO kernels. `classifier.*` is skipped through an explicit
allow-list; any other extra, missing or mis-shaped key is a ConversionError.

`load_vgg16(spec)` resolves the config field `perceptual.vgg16`: a converted
directory, 'random' (random weights, logged as a warning: smoke runs only) or
'none' (no style loss).
"""

import logging
import pathlib
import re
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from cgn_jax.models import vgg16 as vgg16_lib
from converters import common

URL = "https://download.pytorch.org/models/vgg16-397923af.pth"
_IGNORED = (re.compile(r"classifier\..*"),)
_HOWTO = (f"download the torchvision ImageNet weights ({URL}) and convert "
          "them: `python -m converters vgg16 --input vgg16-397923af.pth "
          "--output DIR`, then set perceptual.vgg16=DIR (or 'random' for a "
          "smoke run, 'none' to drop the style loss)")


def abstract_variables():
  """ShapeDtypeStructs of the full features stack's {'params'}."""
  return jax.eval_shape(vgg16_lib.init_variables, jax.random.PRNGKey(0))


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


def random_variables(seed: int = 0) -> dict:
  """Random VGG16 {'params'} with torchvision's own init, without tracing.

  torchvision initialises VGG convs with kaiming_normal(fan_out, relu) and
  zero biases. Drawn with numpy from the abstract tree: no forward pass to
  compile, so smoke runs start fast.
  """
  rng = np.random.default_rng(seed)
  params = {}
  for name, leaves in abstract_variables()["params"].items():
    kh, kw, _, o = leaves["kernel"].shape
    std = np.sqrt(2.0 / (o * kh * kw))
    params[name] = {
        "kernel": jnp.asarray(
            rng.standard_normal(leaves["kernel"].shape, np.float32) * std),
        "bias": jnp.zeros(leaves["bias"].shape, jnp.float32)}
  return {"params": params}


def load_vgg16(spec):
  """Resolves `perceptual.vgg16` into VGG16 variables.

  Args:
    spec: a directory written by `python -m converters vgg16`; 'random'
      (random init, with a warning: for smoke runs and machines without the
      weights); or 'none'/None (the style loss is dropped).

  Returns:
    {'params': ...} as jax arrays, or None for 'none'.

  Raises:
    FileNotFoundError: the directory does not exist, saying how to get it.
  """
  if spec is None or str(spec).lower() == "none":
    return None
  if str(spec).lower() == "random":
    logging.warning(
        "perceptual.vgg16='random': the style loss uses a RANDOMLY "
        "initialised VGG16, not ImageNet weights. Fine for smoke runs only; "
        "to train properly, %s", _HOWTO)
    return random_variables()
  path = pathlib.Path(spec).expanduser()
  if path.is_file():
    raise FileNotFoundError(
        f"perceptual.vgg16={spec} is a file, not a converted checkpoint "
        f"directory; {_HOWTO}")
  if not path.is_dir():
    raise FileNotFoundError(
        f"perceptual.vgg16={spec} does not exist; {_HOWTO}")
  variables, _ = common.load_variables(path, abstract_variables())
  return jax.tree.map(jnp.asarray, variables)


def add_arguments(parser) -> None:
  parser.add_argument("--input", required=True,
                      help=f"torchvision VGG16 weights ({URL})")
  parser.add_argument("--output", required=True,
                      help="directory for the orbax checkpoint")


def run(args) -> int:
  variables = convert(common.load_torch_state_dict(args.input))
  common.save_variables(args.output, variables, {
      "model": "vgg16_features", "source": pathlib.Path(args.input).name})
  print(f"converted {args.input} -> {args.output}")
  return 0
