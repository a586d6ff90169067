"""The authors' ImageNet CGN checkpoint (`cgn.pth`) -> `ImageNetCGN` variables.

  python -m converters cgn-imagenet --input cgn.pth --output DIR

`cgn.pth` is upstream's `CGN.state_dict()`: five submodules under the prefixes
below (a DataParallel `module.` in front is stripped). Rules: each prefix
becomes a top-level submodule of `cgn_jax.models.imagenet_cgn.ImageNetCGN`,
and the rest of the key goes through the BigGAN converter
(`converters/biggan.py`) or the U²-Net converter (`converters/u2net.py`)
unchanged:

  biggan_GT.<key> -> {params,spectral,batch_stats}/biggan_gt/<biggan rule>
  f_shape.<key>   -> .../f_shape/<biggan rule>     (likewise f_text, f_bg)
  u2net.<key>     -> {params,batch_stats}/u2net/<u2net rule>

The BigGAN size (channel width, classes, BN-stat slots) and the U²-Net
variant (U2NET or U2NETP) are read off the checkpoint and recorded in the
output's metadata, so `load` rebuilds the right model. Strict: a key outside
the five prefixes, a missing or mis-shaped key, or four BigGANs of different
sizes raise ConversionError listing the problem; an MNIST CGN checkpoint is
recognised and pointed at `python -m converters cgn-mnist`.
"""

import pathlib
from typing import Any, Mapping

import jax

from cgn_jax import paths
from cgn_jax.models import biggan
from cgn_jax.models import imagenet_cgn_weights
from converters import biggan as biggan_convert
from converters import common
from converters import u2net as u2net_convert

PREFIXES = {"biggan_GT.": "biggan_gt", "f_shape.": "f_shape",
            "f_text.": "f_text", "f_bg.": "f_bg"}
U2NET_PREFIX = "u2net."
# Keys only the MNIST CGN (mnists/models/cgn.py) has.
_MNIST_MARKERS = ("label_emb.weight", "f_text1.", "f_text2.")


def _split(state_dict: Mapping[str, Any]) -> tuple[dict, list]:
  """{submodule: stripped state dict} and the keys under no known prefix."""
  parts = {name: {} for name in list(PREFIXES.values()) + ["u2net"]}
  unknown = []
  for key, value in state_dict.items():
    for prefix, name in list(PREFIXES.items()) + [(U2NET_PREFIX, "u2net")]:
      if key.startswith(prefix):
        parts[name][key[len(prefix):]] = value
        break
    else:
      unknown.append(key)
  return parts, unknown


def _check_not_mnist(state_dict) -> None:
  if any(k == m or k.startswith(m) for k in state_dict
         for m in _MNIST_MARKERS):
    raise common.ConversionError(
        "this is the MNIST CGN (keys label_emb.*, f_text1.*, f_text2.*), not "
        "the ImageNet CGN: convert it with `python -m converters cgn-mnist "
        "--input ckp.pth --output DIR`")


def infer_biggan_config(state_dict: Mapping[str, Any]) -> dict:
  """The BigGAN-deep config one BigGAN state dict encodes.

  Raises ConversionError when the block layout matches no released model.
  """
  found = biggan_convert.infer_structure(state_dict)
  if found is None:
    raise common.ConversionError(
        "cannot read the BigGAN structure (generator.conv_to_rgb, "
        "embeddings, generator.layers.*) from the checkpoint")
  for name, config in biggan.BIGGAN_CONFIGS.items():
    blocks = tuple((i, o) for _, i, o in config["layers"])
    if (blocks == found["blocks"] and found["attention_layer_position"]
        == config["attention_layer_position"]):
      return biggan.get_config(
          name, channel_width=found["channel_width"], z_dim=found["z_dim"],
          class_embed_dim=found["z_dim"], num_classes=found["num_classes"],
          n_stats=found["n_stats"])
  raise common.ConversionError(
      f"the BigGANs have {len(found['blocks'])} blocks with attention at "
      f"{found['attention_layer_position']}, the layout of no released "
      f"BigGAN-deep ({sorted(biggan.BIGGAN_CONFIGS)})")


def infer_u2net_variant(state_dict: Mapping[str, Any]) -> str:
  """'u2net' or 'u2netp', whichever the keys and shapes fit exactly."""
  errors = []
  for variant in ("u2net", "u2netp"):
    try:
      u2net_convert.check_state_dict(state_dict, variant)
      return variant
    except common.ConversionError as e:
      errors.append(str(e))
  raise common.ConversionError(
      "the u2net.* entries fit neither U2NET nor U2NETP:\n" + errors[0])


def convert(state_dict: Mapping[str, Any]):
  """Converts an upstream ImageNet CGN state dict.

  Args:
    state_dict: torch key -> numpy array, `module.` prefix allowed.

  Returns:
    (variables, biggan_config, u2net_variant): variables is
    {'params', 'spectral', 'batch_stats'} of `ImageNetCGN` (float32 numpy).

  Raises:
    ConversionError: an MNIST CGN, unknown keys, missing submodules, BigGANs
      of different sizes, or any missing / mis-shaped key.
  """
  state_dict = common.strip_prefix(state_dict, "module.")
  _check_not_mnist(state_dict)
  parts, unknown = _split(state_dict)
  missing = [p for p, n in list(PREFIXES.items()) + [(U2NET_PREFIX, "u2net")]
             if not parts[n]]
  if unknown or missing:
    raise common.ConversionError(common.mismatch_message(
        "the ImageNet CGN (prefixes biggan_GT., f_shape., f_text., f_bg., "
        "u2net.)", missing=[f"{p}* (whole submodule)" for p in missing],
        unexpected=unknown[:20] + (["..."] if len(unknown) > 20 else [])))
  config = infer_biggan_config(parts["biggan_gt"])
  abstract = biggan_convert.abstract_variables(config)
  variables = {"params": {}, "spectral": {}, "batch_stats": {}}
  for prefix, name in PREFIXES.items():
    try:
      converted = biggan_convert.convert(parts[name], config, abstract)
    except common.ConversionError as e:
      raise common.ConversionError(f"{prefix}*: {e}") from e
    for collection in variables:
      variables[collection][name] = converted[collection]
  variant = infer_u2net_variant(parts["u2net"])
  u2 = u2net_convert.convert(parts["u2net"], variant)
  variables["params"]["u2net"] = u2["params"]
  variables["batch_stats"]["u2net"] = u2["batch_stats"]
  return variables, config, variant


model_from_metadata = imagenet_cgn_weights.model_from_metadata
load = imagenet_cgn_weights.load  # the library reads converted directories


def add_arguments(parser) -> None:
  parser.add_argument("--input", required=True,
                      help="the authors' cgn.pth (upstream CGN.state_dict())")
  parser.add_argument("--output", required=True,
                      help="directory for the orbax checkpoint")


def run(args) -> int:
  path = pathlib.Path(args.input)
  state_dict = common.load_torch_state_dict(path)
  variables, config, variant = convert(state_dict)
  metadata = {"model": "cgn_imagenet", "source": path.name,
              "sha256": paths.sha256(path),
              "biggan_config": {**config,
                                "layers": [list(x) for x in config["layers"]]},
              "u2net_variant": variant}
  common.save_variables(args.output, variables, metadata)
  n = sum(int(x.size) for x in jax.tree.leaves(variables["params"]))
  print(f"wrote {args.output}: ImageNet CGN (BigGAN-deep channel_width "
        f"{config['channel_width']}, {variant}), {n:,} params, "
        f"{len(state_dict)} torch keys")
  return 0

