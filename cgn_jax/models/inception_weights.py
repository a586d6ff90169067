"""Inception-v3 weights for the Inception Score: resolving `--weights`.

The value is a directory written by `python -m converters inception-v3`
(loaded strictly through `cgn_jax.weights`) or 'random' (random weights,
with a warning: smoke runs only, the score is then meaningless). The torch
-> Flax rule table is in `converters/inception_v3.py`: the library reads
only converted directories.
"""

import logging
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from cgn_jax import weights
from cgn_jax.models import inception

MODEL = "inception_v3"  # the converted directory's metadata `model`
URL = "https://download.pytorch.org/models/inception_v3_google-0cc3c7bd.pth"
CONVERT_HINT = ("python -m converters inception-v3 --input "
                "inception_v3_google-0cc3c7bd.pth --output DIR")
HOWTO = (f"download torchvision's Inception-v3 weights ({URL}) and convert "
         f"them: `{CONVERT_HINT}`")


def random_variables(seed: int = 0) -> dict:
  """Random variables of the right tree, drawn with numpy (no compile).

  Conv/Dense kernels ~ N(0, 1/fan_in), BatchNorm identity: activations stay
  O(1). Numpy arrays.
  """
  rng = np.random.default_rng(seed)

  def leaf(path, x):
    name = path[-1].key
    if name == "kernel":
      fan_in = int(np.prod(x.shape[:-1]))
      return rng.standard_normal(x.shape, np.float32) / np.sqrt(fan_in)
    if name in ("scale", "var"):
      return np.ones(x.shape, np.float32)
    return np.zeros(x.shape, np.float32)

  return jax.tree_util.tree_map_with_path(leaf, inception.abstract_variables())


def load(spec) -> tuple[dict, dict]:
  """Resolves `--weights` / `--inception` into (variables, metadata).

  Args:
    spec: a directory written by `python -m converters inception-v3`, or
      'random' (random weights with a warning: smoke runs only).

  Raises:
    FileNotFoundError: the directory does not exist, saying how to make it.
    weights.WeightsError: it holds another model or does not fit.
  """
  if str(spec).lower() == "random":
    logging.warning("Inception weights 'random': the Inception Score of a "
                    "RANDOM network is meaningless (smoke runs only); %s",
                    HOWTO)
    return (jax.tree.map(jnp.asarray, random_variables()),
            {"model": MODEL, "source": "random"})
  path = pathlib.Path(spec).expanduser()
  if path.is_file():
    raise FileNotFoundError(f"{spec} is a file, not a converted checkpoint "
                            f"directory; {HOWTO}")
  if not path.is_dir():
    raise FileNotFoundError(f"Inception weights {spec} do not exist; "
                            f"{HOWTO}")
  variables, metadata = weights.load_variables(
      path, inception.abstract_variables(), model=MODEL,
      what="Inception-v3", convert_hint=CONVERT_HINT)
  if metadata.get("model") != MODEL:
    raise weights.WeightsError(
        f"{path} is not a converted Inception-v3 (metadata model "
        f"{metadata.get('model')!r}); {HOWTO}")
  return jax.tree.map(jnp.asarray, variables), metadata
