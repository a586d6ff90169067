"""Converted BigGAN-deep weights: reading `python -m converters biggan` output.

The torch -> Flax rule table is in `converters/biggan.py`; the library reads
only converted directories, strictly (every key and shape checked against
the model built from the stored config).
"""

import jax
import jax.numpy as jnp

from cgn_jax import weights
from cgn_jax.models import biggan

MODEL = "biggan"  # the converted directory's metadata `model`
CONVERT_HINT = ("python -m converters biggan --input "
                "biggan-deep-256-pytorch_model.bin --config biggan-deep-256 "
                "--output DIR")


def abstract_variables(config) -> dict:
  """Shapes/dtypes of the model's variables, via jax.eval_shape (no init)."""
  config = biggan.get_config(config)
  model = biggan.BigGAN.from_config(config)
  z = jnp.zeros((1, config["z_dim"]), jnp.float32)
  y = jnp.zeros((1, config["num_classes"]), jnp.float32)
  return jax.eval_shape(
      lambda: model.init(jax.random.PRNGKey(0), z, y, 1.0))


def load(directory):
  """Reads a converted checkpoint; returns (config dict, variables)."""
  variables, metadata = weights.load_variables(
      directory, model=MODEL, what="BigGAN", convert_hint=CONVERT_HINT)
  if metadata.get("model") != MODEL or "config" not in metadata:
    raise weights.WeightsError(
        f"{directory} is not a converted BigGAN (no BigGAN config in its "
        f"metadata); create it with `{CONVERT_HINT}`")
  config = biggan.get_config(metadata["config"])
  weights.check_tree(variables, abstract_variables(config), str(directory))
  return config, variables
