"""Converted ImageNet CGN weights: reading `python -m converters cgn-imagenet`.

The authors' `cgn.pth` holds all five submodules; its converted directory
stores the BigGAN config and U²-Net variant it was made with, so the module
is rebuilt from the metadata and every key and shape is checked.
"""

from typing import Any, Mapping

from cgn_jax import weights
from cgn_jax.models import biggan
from cgn_jax.models import imagenet_cgn

MODEL = "cgn_imagenet"  # the converted directory's metadata `model`
CONVERT_HINT = "python -m converters cgn-imagenet --input cgn.pth --output DIR"


def model_from_metadata(metadata: Mapping[str, Any]):
  """The ImageNetCGN module a converted checkpoint was made for."""
  return imagenet_cgn.from_config(biggan.get_config(metadata["biggan_config"]),
                                  metadata["u2net_variant"])


def load(directory):
  """Reads a converted checkpoint; returns (model, variables)."""
  variables, metadata = weights.load_variables(
      directory, what="ImageNet CGN", convert_hint=CONVERT_HINT)
  if metadata.get("model") != MODEL:
    raise weights.WeightsError(
        f"{directory} is not a converted ImageNet CGN (metadata model "
        f"{metadata.get('model')!r}); create it with `{CONVERT_HINT}`")
  model = model_from_metadata(metadata)
  weights.check_tree(variables, imagenet_cgn.abstract_variables(model),
                     str(directory))
  return model, variables
