"""Converted ResNet-50 and InvariantEnsemble weights: strict loaders.

The directories are written by `python -m converters resnet50` (torchvision's
ResNet-50, fc included) and `python -m converters invariant-ensemble` (an
upstream train_classifier.py checkpoint), or by the classifier trainer
(WORKDIR/best, model 'invariant_ensemble'). The torch -> Flax rule table is in
`converters/resnet50.py`; the library only reads converted directories,
through `cgn_jax.weights`.
"""

import functools

import jax
import jax.numpy as jnp

from cgn_jax import weights
from cgn_jax.models import ensemble as ensemble_lib
from cgn_jax.models import resnet as resnet_lib

RESNET50 = "resnet50"                  # the directories' metadata `model`
ENSEMBLE = "invariant_ensemble"
URL = "https://download.pytorch.org/models/resnet50-0676ba61.pth"
RESNET50_HINT = ("python -m converters resnet50 --input "
                 "resnet50-0676ba61.pth --output DIR")
ENSEMBLE_HINT = ("python -m converters invariant-ensemble --input "
                 "checkpoint.pth --output DIR")


@functools.lru_cache(maxsize=4)
def abstract_variables(model) -> dict:
  """`model`'s {'params', 'batch_stats'} as ShapeDtypeStructs.

  Parameter shapes do not depend on the image size: traced at 32x32.
  """
  return jax.eval_shape(
      lambda k: model.init(k, jnp.zeros((1, 32, 32, 3)), train=False),
      jax.random.PRNGKey(0))


def load_resnet50(directory) -> dict:
  """torchvision ResNet-50 variables (fc included) from a converted DIR.

  Raises:
    FileNotFoundError: missing or not a converted directory (names the
      download and the converter command).
    weights.WeightsError: another model, or keys/shapes that do not fit.
  """
  variables, _ = weights.load_variables(
      directory, abstract_variables(resnet_lib.resnet50()), model=RESNET50,
      what=f"torchvision ResNet-50 ({URL})", convert_hint=RESNET50_HINT)
  return jax.tree.map(jnp.asarray, variables)


def load_ensemble(directory, model=None) -> dict:
  """InvariantEnsemble variables (ResNet-50 by default) from a DIR."""
  model = model or ensemble_lib.InvariantEnsemble()
  variables, _ = weights.load_variables(
      directory, abstract_variables(model), model=ENSEMBLE,
      what="InvariantEnsemble", convert_hint=ENSEMBLE_HINT)
  return jax.tree.map(jnp.asarray, variables)
