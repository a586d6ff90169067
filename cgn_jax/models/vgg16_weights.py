"""VGG16 weights for the perceptual losses: resolving `perceptual.vgg16`.

The value is a directory written by `python -m converters vgg16` (loaded
strictly through `cgn_jax.weights`), 'random' (torchvision's init, with a
warning: smoke runs only) or 'none' (no style loss). The torch -> Flax rule
table itself is in `converters/vgg16.py`: the library reads only converted
directories.
"""

import logging
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from cgn_jax import weights
from cgn_jax.models import vgg16 as vgg16_lib

MODEL = "vgg16_features"  # the converted directory's metadata `model`
URL = "https://download.pytorch.org/models/vgg16-397923af.pth"
CONVERT_HINT = ("python -m converters vgg16 --input vgg16-397923af.pth "
                "--output DIR")
HOWTO = (f"download the torchvision ImageNet weights ({URL}) and convert "
         f"them: `{CONVERT_HINT}`, then set perceptual.vgg16=DIR (or "
         "'random' for a smoke run, 'none' to drop the style loss)")


def abstract_variables():
  """ShapeDtypeStructs of the full features stack's {'params'}."""
  return jax.eval_shape(vgg16_lib.init_variables, jax.random.PRNGKey(0))


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
    weights.WeightsError: it holds another model or does not fit.
  """
  if spec is None or str(spec).lower() == "none":
    return None
  if str(spec).lower() == "random":
    logging.warning(
        "perceptual.vgg16='random': the style loss uses a RANDOMLY "
        "initialised VGG16, not ImageNet weights. Fine for smoke runs only; "
        "to train properly, %s", HOWTO)
    return random_variables()
  path = pathlib.Path(spec).expanduser()
  if path.is_file():
    raise FileNotFoundError(
        f"perceptual.vgg16={spec} is a file, not a converted checkpoint "
        f"directory; {HOWTO}")
  if not path.is_dir():
    raise FileNotFoundError(
        f"perceptual.vgg16={spec} does not exist; {HOWTO}")
  variables, _ = weights.load_variables(
      path, abstract_variables(), model=MODEL, what="VGG16 features",
      convert_hint=CONVERT_HINT)
  return jax.tree.map(jnp.asarray, variables)
