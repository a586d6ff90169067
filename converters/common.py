"""Shared converter machinery, built on `cgn_jax.weights`.

Every converter is `convert(state_dict, ...) -> variables` (a pure function
of numpy arrays) plus a CLI. The rules (transpose conv kernels to HWIO, Dense
kernels to (in, out), BatchNorm weight->scale and running stats into
`batch_stats`, drop `num_batches_tracked`) live in the converters; safe
reading of torch files, strict tree checks and the orbax directory format
live in the library (`cgn_jax/weights.py`), which also loads what the
converters write. This module re-exports them under the converters' names.
"""

import pathlib
from typing import Any, Mapping

from cgn_jax import weights

key_mismatch = weights.key_mismatch
mismatch_message = weights.mismatch_message
save_variables = weights.save_variables


class ConversionError(weights.WeightsError):
  """A checkpoint does not fit the model it is converted for."""


def load_torch_state_dict(path) -> dict:
  """`weights.read_torch_state_dict`, with converter wording and errors."""
  if not pathlib.Path(path).is_file():
    raise FileNotFoundError(
        f"checkpoint {path} does not exist; pass the path of the downloaded "
        "PyTorch weights with --input")
  return weights.read_torch_state_dict(path, error=ConversionError)


def strip_prefix(state_dict: Mapping[str, Any], prefix: str) -> dict:
  """Drops `prefix` from every key that has it (e.g. DataParallel 'module.')."""
  return {k[len(prefix):] if k.startswith(prefix) else k: v
          for k, v in state_dict.items()}


def check_tree(converted, reference, what: str) -> None:
  """Raises ConversionError unless both trees have the same keys and shapes."""
  weights.check_tree(converted, reference, what, error=ConversionError)


def load_variables(directory, abstract=None):
  """Reads a tree written by `save_variables`; returns (variables, metadata).

  Args:
    directory: the converter's --output directory.
    abstract: optional tree of the expected structure (arrays or
      ShapeDtypeStructs); when given, the restored tree is checked against it.
  """
  return weights.load_variables(directory, abstract)
