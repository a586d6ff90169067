"""pytorch-pretrained-biggan state dict -> `cgn_jax.models.biggan.BigGAN`.

  python -m converters biggan --input biggan-deep-256-pytorch_model.bin \\
      --config biggan-deep-256 --output weights/biggan-deep-256

Rules (see the variable layout in cgn_jax/models/biggan.py): `a.layers.N.b`
-> `a/layers_N/b`; `weight_orig` -> `params/.../kernel` (Dense `.T`, conv
OIHW -> HWIO); `weight_u`/`weight_v` -> `spectral/.../u|v` (conv `v`
re-flattened from (I, kh, kw) to (kh, kw, I)); `bias`, `gamma` -> params;
`embeddings.weight` -> `embeddings/kernel` (`.T`); `generator.bn.weight` ->
`generator/bn/scale`; `running_means`/`running_vars` -> `batch_stats`.
u and v are kept (not folded into the kernel) so the converted model can be
fine-tuned with torch's train-mode spectral norm (NOTES §9).

Strict: every key must map, every shape must equal the model's (from
`jax.eval_shape`, no real init), or ConversionError lists all problems. A
checkpoint of another BigGAN size gets an error naming the config it fits.
"""

import json
import pathlib
from typing import Any, Mapping

import jax
import numpy as np

from cgn_jax.models import biggan
from cgn_jax.models import biggan_weights
from cgn_jax.models import spectral_norm as sn
from converters import common

_STATS = ("running_means", "running_vars")


def _path(modules):
  """['generator', 'layers', '3', 'x'] -> ('generator', 'layers_3', 'x')."""
  out = []
  for part in modules:
    if part.isdigit() and out and out[-1] == "layers":
      out[-1] = f"layers_{part}"
    else:
      out.append(part)
  return tuple(out)


def map_key(key: str, value: np.ndarray, state_dict: Mapping[str, Any]):
  """One torch entry -> (collection, Flax path, array), or None if unknown."""
  *mods, name = key.split(".")
  path = _path(mods)
  value = np.asarray(value)
  if name == "weight_orig":
    kernel = value.T if value.ndim == 2 else value.transpose(2, 3, 1, 0)
    return "params", path + ("kernel",), kernel
  if name == "weight_u":
    return "spectral", path + ("u",), value
  if name == "weight_v":
    w = state_dict.get(".".join(mods + ["weight_orig"]))
    v = value if w is None else sn.torch_v_to_flax(value, np.shape(w))
    return "spectral", path + ("v",), v
  if name in ("bias", "gamma"):
    return "params", path + (name,), value
  if name in _STATS:
    return "batch_stats", path + (name,), value
  if name == "weight" and path == ("embeddings",):
    return "params", ("embeddings", "kernel"), value.T
  if name == "weight" and value.ndim == 1:  # unconditional BigGANBatchNorm
    return "params", path + ("scale",), value
  return None


def infer_structure(state_dict: Mapping[str, Any]) -> dict | None:
  """The architecture a BigGAN state dict encodes (None if it cannot tell).

  The up-sampling flags leave no trace in the weights, so they are not part
  of the result; everything else of the config is.
  """
  try:
    ch = np.shape(state_dict["generator.conv_to_rgb.weight_orig"])[0]
    emb = np.shape(state_dict["embeddings.weight"])
    n_stats = np.shape(state_dict["generator.bn.running_means"])[0]
    indices = sorted({int(k.split(".")[2]) for k in state_dict
                      if k.startswith("generator.layers.")})
    attn = [i for i in indices if f"generator.layers.{i}.gamma" in state_dict]
    blocks = []
    for i in indices:
      if i in attn:
        continue
      c_in = np.shape(state_dict[f"generator.layers.{i}.bn_0.running_means"])
      c_out = np.shape(state_dict[f"generator.layers.{i}.conv_3.weight_orig"])
      blocks.append((c_in[1] // ch, c_out[0] // ch))
  except (KeyError, IndexError, ValueError, ZeroDivisionError):
    return None
  return dict(channel_width=int(ch), z_dim=int(emb[0]),
              num_classes=int(emb[1]), n_stats=int(n_stats),
              attention_layer_position=attn[0] if len(attn) == 1 else attn,
              blocks=tuple(blocks))


def _structure(config) -> dict:
  return dict(channel_width=config["channel_width"], z_dim=config["z_dim"],
              num_classes=config["num_classes"], n_stats=config["n_stats"],
              attention_layer_position=config["attention_layer_position"],
              blocks=tuple((i, o) for _, i, o in config["layers"]))


def _describe(s) -> str:
  return (f"{len(s['blocks'])} GenBlocks with attention before block "
          f"{s['attention_layer_position']}, channel_width "
          f"{s['channel_width']}, z_dim {s['z_dim']}, {s['num_classes']} "
          f"classes, {s['n_stats']} BN-stat slots")


def check_structure(state_dict, config, what: str) -> None:
  """Raises ConversionError naming the right config if the sizes differ."""
  found = infer_structure(state_dict)
  if found is None or found == _structure(config):
    return  # unreadable structure: the key-by-key check will report it
  lines = [f"checkpoint does not fit {what}: it has {_describe(found)}; "
           f"{what} has {_describe(_structure(config))}."]
  same = [n for n, c in biggan.BIGGAN_CONFIGS.items()
          if _structure(c) == found]
  shaped = [n for n, c in biggan.BIGGAN_CONFIGS.items()
            if _structure(c)["blocks"] == found["blocks"]
            and _structure(c)["attention_layer_position"]
            == found["attention_layer_position"]]
  if same:
    lines.append(f"It is a {same[0]} checkpoint: rerun with --config "
                 f"{same[0]}.")
  elif shaped:
    lines.append(f"It has the layout of {shaped[0]} at other sizes: pass its "
                 "config.json with --config-json.")
  else:
    lines.append("No built-in config matches: pass the checkpoint's "
                 "config.json with --config-json.")
  raise common.ConversionError("\n".join(lines))


abstract_variables = biggan_weights.abstract_variables


def convert(state_dict: Mapping[str, Any], config, abstract=None) -> dict:
  """Converts a pytorch-pretrained-biggan state dict.

  Args:
    state_dict: torch key -> numpy array (e.g. `common.load_torch_state_dict`).
    config: a BIGGAN_CONFIGS name or a BigGANConfig-style dict.
    abstract: optional precomputed `abstract_variables(config)`.

  Returns:
    {'params', 'spectral', 'batch_stats'} float32 numpy trees.

  Raises:
    ConversionError: unknown, missing or mis-shaped keys, or a checkpoint of
      another architecture (the message names the config that fits).
  """
  name = config if isinstance(config, str) else "the given BigGAN config"
  config = biggan.get_config(config)
  check_structure(state_dict, config, name)
  variables, unknown = {}, []
  for key, value in state_dict.items():
    mapped = map_key(key, value, state_dict)
    if mapped is None:
      unknown.append(key)
      continue
    collection, path, array = mapped
    node = variables.setdefault(collection, {})
    for part in path[:-1]:
      node = node.setdefault(part, {})
    node[path[-1]] = np.ascontiguousarray(array, dtype=np.float32)
  if unknown:
    raise common.ConversionError(common.mismatch_message(
        name, unexpected=[f"{k} (no rule maps it)" for k in sorted(unknown)]))
  if abstract is None:
    abstract = abstract_variables(config)
  common.check_tree(variables, abstract, name)
  return variables


def _json_config(config) -> dict:
  return {**config, "layers": [list(layer) for layer in config["layers"]]}


load = biggan_weights.load  # the library reads converted directories


def add_arguments(parser) -> None:
  parser.add_argument("--input", required=True,
                      help="pytorch_model.bin of pytorch-pretrained-biggan")
  parser.add_argument("--config", choices=sorted(biggan.BIGGAN_CONFIGS),
                      help="which released model the file is")
  parser.add_argument("--config-json",
                      help="the package's config.json (instead of --config)")
  parser.add_argument("--prefix", default="",
                      help="keep only keys under this prefix and strip it "
                      "(e.g. 'f_shape.' for an ImageNet CGN checkpoint)")
  parser.add_argument("--output", required=True,
                      help="directory for the orbax checkpoint")


def run(args) -> int:
  if (args.config is None) == (args.config_json is None):
    raise SystemExit("pass exactly one of --config NAME or --config-json FILE")
  if args.config_json:
    config = biggan.get_config(
        json.loads(pathlib.Path(args.config_json).read_text()))
    name = pathlib.Path(args.config_json).name
  else:
    config, name = biggan.get_config(args.config), args.config
  state_dict = common.strip_prefix(common.load_torch_state_dict(args.input),
                                   "module.")
  if args.prefix:
    state_dict = {k[len(args.prefix):]: v for k, v in state_dict.items()
                  if k.startswith(args.prefix)}
  variables = convert(state_dict, args.config or config)
  common.save_variables(args.output, variables, {
      "model": "biggan", "config_name": name,
      "config": _json_config(config), "source": str(args.input)})
  n = sum(x.size for x in jax.tree.leaves(variables["params"]))
  print(f"wrote {args.output}: {name}, {n:,} params, "
        f"{len(state_dict)} torch keys")
  return 0
