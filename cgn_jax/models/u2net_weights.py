"""Converted U²-Net weights: reading `python -m converters u2net` output.

The torch -> Flax rule table is in `converters/u2net.py`; the library reads
only converted directories, strictly.
"""

from cgn_jax import weights
from cgn_jax.models import u2net

MODEL = "u2net"  # the converted directory's metadata `model`
VARIANTS = ("u2net", "u2netp")
CONVERT_HINT = ("python -m converters u2net --input u2net.pth "
                "--variant u2net --output DIR")


def load(directory):
  """Reads a converted checkpoint.

  Args:
    directory: the converter's --output directory.

  Returns:
    (variant, variables) with variables = {'params', 'batch_stats'}.
  """
  variables, metadata = weights.load_variables(
      directory, model=MODEL, what="U²-Net", convert_hint=CONVERT_HINT)
  variant = metadata.get("variant")
  if metadata.get("model") != MODEL or variant not in VARIANTS:
    raise weights.WeightsError(
        f"{directory} is not a converted U²-Net checkpoint (metadata "
        f"{metadata}); create it with `{CONVERT_HINT}`")
  weights.check_tree(variables, u2net.abstract_variables(variant),
                     str(directory))
  return variant, variables
