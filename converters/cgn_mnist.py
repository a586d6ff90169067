"""Converts the authors' MNIST CGN checkpoints (`ckp.pth`) to orbax.

    python -m converters cgn-mnist --input cgn_wildlife_MNIST.pth --output DIR

Source: autonomousvision/counterfactual_generative_networks (commit 335bebd),
`mnists/experiments/cgn_{colored,double_colored,wildlife}_MNIST/weights/
ckp.pth`: a plain state dict of the generator with 57 entries (SPEC §9).

The rule table (torch key -> Flax leaf) is in the library,
`cgn_jax/models/cgn_weights.py`, because generate.py also reads the `.pth`
in memory; this module is the command that writes it to a directory once.
A checkpoint that does not fit fails with every missing, unexpected and
mis-shaped key listed (ConversionError).
"""

import pathlib
from typing import Mapping

import numpy as np

from cgn_jax import paths
from cgn_jax.models import cgn as cgn_lib
from cgn_jax.models import cgn_weights
from converters import common

abstract_variables = cgn_weights.abstract_variables
guess_dataset = cgn_weights.guess_dataset
load_cgn = cgn_weights.load_cgn


def convert(state_dict: Mapping[str, np.ndarray],
            model: cgn_lib.CGN | None = None) -> dict:
  """Maps an upstream CGN state dict onto {'params', 'batch_stats'}.

  Raises:
    ConversionError: listing every missing, unexpected and mis-shaped key.
  """
  return cgn_weights.from_state_dict(state_dict, model,
                                     error=common.ConversionError)


def convert_file(input_path, output_dir) -> dict:
  """Reads `input_path` safely, converts it and writes an orbax checkpoint.

  Returns:
    The metadata written next to the variables.
  """
  state_dict = common.load_torch_state_dict(input_path)
  variables = convert(state_dict)
  metadata = {
      "model": cgn_weights.MODEL,
      "source": str(pathlib.Path(input_path).name),
      "source_sha256": paths.sha256(input_path),
      "dataset": guess_dataset(pathlib.Path(input_path).resolve()),
      "config": dict(n_classes=10, latent_sz=32, ngf=32, img_sz=32),
  }
  common.save_variables(output_dir, variables, metadata)
  return metadata


def add_arguments(parser) -> None:
  parser.add_argument("--input", required=True,
                      help="upstream ckp.pth (e.g. cgn_wildlife_MNIST.pth)")
  parser.add_argument("--output", required=True,
                      help="directory for the orbax checkpoint")


def run(args) -> int:
  meta = convert_file(args.input, args.output)
  print(f"converted {args.input} ({meta['dataset'] or 'unknown dataset'}, "
        f"sha256 {meta['source_sha256'][:12]}) -> {args.output}")
  return 0
