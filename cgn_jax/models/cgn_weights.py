"""The MNIST CGN's weights: upstream state-dict names, and loading.

The authors' checkpoints (`cgn_{colored,double_colored,wildlife}_MNIST.pth`,
a plain state dict of the generator with 57 entries, SPEC §9) map onto
`cgn.CGN`'s variables by these rules (the Flax names mirror the torch keys):
  * `label_emb.weight` -> params/label_emb/embedding (same shape);
  * `{m}.{i}.weight` of a Linear -> params/{m}/layers_{i}/kernel = W.T, and
    for the Dense feeding the reshape (i = 0) its columns (and bias) are
    permuted from torch's channels-first (C, H, W) order to NHWC (H, W, C);
  * conv `{m}.{i}.weight` (O, I, kh, kw) -> kernel (kh, kw, I, O), bias as is;
  * BatchNorm `weight`/`bias` -> params scale/bias, `running_mean`/
    `running_var` -> batch_stats mean/var (torch's running_var is the
    unbiased estimate, Flax accumulates the biased one: irrelevant for eval
    parity, a small drift if training continues), `num_batches_tracked`
    dropped through an explicit allow-list.
The expected keys and shapes are derived from the Flax model itself, so a
checkpoint that does not fit fails with every missing, unexpected and
mis-shaped key listed.

They live in the library, not in `converters/`, because generate.py and the
table command accept the authors' `.pth` directly (read in memory through
`weights.read_torch_state_dict`, which needs torch); `python -m converters
cgn-mnist` writes the same variables to a directory once, after which torch
is not needed. `load_cgn(path)` takes either.
"""

import pathlib
import re
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from cgn_jax import weights
from cgn_jax.models import cgn as cgn_lib

MODEL = "cgn_mnist"  # the converted directory's metadata `model`
CONVERT_HINT = ("python -m converters cgn-mnist --input "
                "cgn_<variant>_MNIST.pth --output DIR")
# Torch keys with no Flax counterpart, skipped on purpose.
_IGNORED = (re.compile(r".*\.num_batches_tracked$"),)
_DATASETS = ("double_colored_MNIST", "colored_MNIST", "wildlife_MNIST")
_BN_PARAMS = {"scale": "weight", "bias": "bias"}
_BN_STATS = {"mean": "running_mean", "var": "running_var"}


def abstract_variables(model: cgn_lib.CGN | None = None):
  """ShapeDtypeStructs of the model's {'params', 'batch_stats'}."""
  model = model or cgn_lib.CGN()
  return jax.eval_shape(lambda k: cgn_lib.init_variables(model, k),
                        jax.random.PRNGKey(0))


def _torch_layout(flax_path: tuple[str, ...], shape) -> tuple[str, tuple]:
  """The torch key and shape that map onto one Flax leaf."""
  collection, *mods, leaf = flax_path
  torch_mods = [m.replace("layers_", "") for m in mods]
  prefix = ".".join(torch_mods)
  if collection == "batch_stats":
    return f"{prefix}.{_BN_STATS[leaf]}", tuple(shape)
  if leaf == "embedding":
    return f"{prefix}.weight", tuple(shape)
  if leaf == "kernel" and len(shape) == 2:
    return f"{prefix}.weight", (shape[1], shape[0])
  if leaf == "kernel":
    kh, kw, i, o = shape
    return f"{prefix}.weight", (o, i, kh, kw)
  if leaf == "scale":
    return f"{prefix}.weight", tuple(shape)
  return f"{prefix}.{_BN_PARAMS.get(leaf, leaf)}", tuple(shape)


def _chw_to_hwc(x: np.ndarray, c: int, hw: int) -> np.ndarray:
  """Reorders a leading 4096 axis from (C, H, W) to (H, W, C) order."""
  rest = x.shape[1:]
  return x.reshape(c, hw, hw, *rest).transpose(1, 2, 0, *range(3, x.ndim + 2)
                                               ).reshape(c * hw * hw, *rest)


def _convert_leaf(path, value: np.ndarray, model: cgn_lib.CGN) -> np.ndarray:
  leaf, mod = path[-1], path[-2]
  value = np.asarray(value, np.float32)
  # The Dense that feeds upstream's channels-first Reshape.
  reshape_dense = mod == "layers_0" and path[0] == "params"
  c, hw = 2 * model.ngf, model.img_sz // 4
  if leaf == "kernel" and value.ndim == 2:
    if reshape_dense:
      value = _chw_to_hwc(value, c, hw)  # rows of torch's (out, in) weight
    return np.ascontiguousarray(value.T)
  if leaf == "kernel":
    return np.ascontiguousarray(value.transpose(2, 3, 1, 0))
  if leaf == "bias" and reshape_dense:
    return _chw_to_hwc(value, c, hw)
  return value


def _set(tree: dict, path, value):
  for p in path[:-1]:
    tree = tree.setdefault(p, {})
  tree[path[-1]] = value


def from_state_dict(state_dict: Mapping[str, np.ndarray],
                    model: cgn_lib.CGN | None = None, *,
                    error=weights.WeightsError) -> dict:
  """Maps an upstream CGN state dict onto {'params', 'batch_stats'}.

  Args:
    state_dict: torch key -> numpy array (`weights.read_torch_state_dict`).
    model: the CGN the checkpoint is for (defaults: 10 classes, latent 32,
      ngf 32, 32x32; all three released checkpoints).
    error: the exception class raised on a mismatch.

  Returns:
    Flax variables {'params': ..., 'batch_stats': ...} (numpy float32).

  Raises:
    error: listing every missing, unexpected and mis-shaped key.
  """
  model = model or cgn_lib.CGN()
  abstract = abstract_variables(model)
  table = {}  # torch key -> (flax path, expected torch shape)
  for path, leaf in jax.tree_util.tree_leaves_with_path(abstract):
    path = tuple(p.key for p in path)
    key, shape = _torch_layout(path, leaf.shape)
    table[key] = (path, shape)
  given = {k: v for k, v in state_dict.items()
           if not any(r.fullmatch(k) for r in _IGNORED)}
  mismatch = weights.key_mismatch({k: np.shape(v) for k, v in given.items()},
                                  {k: s for k, (_, s) in table.items()})
  if any(mismatch):
    raise error(weights.mismatch_message(
        "the MNIST CGN (cgn_jax.models.cgn.CGN)", *mismatch))
  variables = {}
  for key, (path, _) in table.items():
    _set(variables, path, _convert_leaf(path, given[key], model))
  weights.check_tree(variables, abstract, "the MNIST CGN", error=error)
  return variables


def guess_dataset(path) -> str | None:
  """'wildlife_MNIST' etc. from a file or folder name, or None."""
  text = str(path)
  for name in _DATASETS:  # double_colored before colored: it contains it
    if name.lower() in text.lower():
      return name
  return None


def load_cgn(path, *, with_metadata: bool = False):
  """A CGN's variables from a converted directory or an upstream `.pth`.

  Args:
    path: the `--output` of `python -m converters cgn-mnist`, or an authors'
      checkpoint file (converted in memory; needs torch).
    with_metadata: also return the metadata dict (source, dataset).

  Returns:
    {'params', 'batch_stats'} as jax arrays, checked against `CGN()`; or
    (variables, metadata) when `with_metadata`.
  """
  if not str(path) or str(path) == ".":
    raise ValueError(f"no CGN given: pass a directory written by "
                     f"`{CONVERT_HINT}`")
  path = pathlib.Path(path).expanduser()
  if path.is_file():
    variables = from_state_dict(weights.read_torch_state_dict(path))
    metadata = {"model": MODEL, "source": path.name,
                "dataset": guess_dataset(path.resolve())}
  else:
    variables, metadata = weights.load_variables(
        path, abstract_variables(), model=MODEL, what="the MNIST CGN",
        convert_hint=CONVERT_HINT)
  variables = jax.tree.map(jnp.asarray, variables)
  return (variables, metadata) if with_metadata else variables
