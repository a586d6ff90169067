"""Shared converter machinery: safe loading, strict tree checks, orbax I/O.

Every converter is `convert(state_dict, ...) -> variables` (a pure function
of numpy arrays) plus a CLI. The rules (transpose conv kernels to HWIO, Dense
kernels to (in, out), BatchNorm weight->scale and running stats into
`batch_stats`, drop `num_batches_tracked`) live in the converters; this module
owns what they share.
"""

import os
import pathlib
import shutil
import tempfile
from typing import Any, Mapping

import jax
import numpy as np


class ConversionError(ValueError):
  """A checkpoint does not fit the model it is converted for."""


def load_torch_state_dict(path) -> dict[str, np.ndarray]:
  """Reads a PyTorch state dict (zip or legacy format) without running code.

  `torch.load(weights_only=True)` accepts only tensors and the standard
  containers, so a checkpoint cannot execute arbitrary pickled code. A file
  that holds a whole pickled module, or is not a checkpoint at all, raises
  ConversionError naming the file.

  Args:
    path: a `.pth`/`.bin` file.

  Returns:
    key -> numpy array (float tensors keep their dtype; int64 scalars such as
    `num_batches_tracked` are kept too so that converters can drop them).
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(
        f"checkpoint {path} does not exist; pass the path of the downloaded "
        "PyTorch weights with --input")
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(
        "reading PyTorch checkpoints needs torch: pip install -e '.[convert]'"
    ) from e
  try:
    obj = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:  # pylint: disable=broad-except
    raise ConversionError(
        f"{path} is not a readable PyTorch state dict ({type(e).__name__}: "
        f"{str(e).splitlines()[0] if str(e) else ''}). Only tensors and "
        "state-dict containers are accepted (torch.load weights_only=True)."
    ) from e
  for wrapper in ("state_dict", "model"):  # common training-script wrappers
    if isinstance(obj, Mapping) and wrapper in obj and isinstance(
        obj[wrapper], Mapping):
      obj = obj[wrapper]
  if not isinstance(obj, Mapping):
    raise ConversionError(
        f"{path} holds a {type(obj).__name__}, not a state dict (a mapping "
        "from parameter names to tensors)")
  out = {}
  for k, v in obj.items():
    if not hasattr(v, "detach"):
      raise ConversionError(f"{path}: entry {k!r} is not a tensor")
    out[k] = v.detach().cpu().numpy()
  return out


def strip_prefix(state_dict: Mapping[str, Any], prefix: str) -> dict:
  """Drops `prefix` from every key that has it (e.g. DataParallel 'module.')."""
  return {k[len(prefix):] if k.startswith(prefix) else k: v
          for k, v in state_dict.items()}


def check_tree(converted, reference, what: str) -> None:
  """Raises ConversionError unless both trees have the same keys and shapes.

  Args:
    converted: the tree built from the checkpoint.
    reference: a randomly initialised (or `jax.eval_shape`d) tree of the model.
    what: a name for the error message, e.g. 'BigGAN-deep-256'.
  """
  conv = {jax.tree_util.keystr(p): np.shape(x)
          for p, x in jax.tree_util.tree_leaves_with_path(converted)}
  ref = {jax.tree_util.keystr(p): tuple(x.shape)
         for p, x in jax.tree_util.tree_leaves_with_path(reference)}
  mismatch = key_mismatch(conv, ref)
  if any(mismatch):
    raise ConversionError(mismatch_message(what, *mismatch))


def key_mismatch(given: Mapping[str, tuple], expected: Mapping[str, tuple]):
  """Compares two key -> shape tables.

  Returns:
    (missing, unexpected, misshaped): sorted lists of the expected keys that
    are absent, the given keys that are not expected, and 'key: checkpoint
    SHAPE vs model SHAPE' for keys present in both with different shapes.
  """
  given = {k: tuple(s) for k, s in given.items()}
  expected = {k: tuple(s) for k, s in expected.items()}
  missing = sorted(set(expected) - set(given))
  unexpected = sorted(set(given) - set(expected))
  misshaped = sorted(
      f"{k}: checkpoint {given[k]} vs model {expected[k]}"
      for k in set(given) & set(expected) if given[k] != expected[k])
  return missing, unexpected, misshaped


def mismatch_message(what, missing=(), unexpected=(), misshaped=()) -> str:
  """One readable message listing every missing, unexpected, mis-shaped key."""
  lines = [f"checkpoint does not fit {what}:"]
  for title, keys in (("missing keys", missing),
                      ("unexpected keys", unexpected),
                      ("mis-shaped keys", misshaped)):
    if keys:
      lines.append(f"  {title} ({len(keys)}): " + ", ".join(map(str, keys)))
  return "\n".join(lines)


def save_variables(directory, variables, metadata: Mapping | None = None):
  """Writes `variables` (+ JSON metadata) as an orbax checkpoint, atomically.

  The tree is written to a temporary sibling directory and renamed into place,
  so an interrupted conversion never leaves a half-written checkpoint.
  """
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  directory = pathlib.Path(directory).resolve()
  directory.parent.mkdir(parents=True, exist_ok=True)
  tmp = pathlib.Path(tempfile.mkdtemp(prefix=directory.name + ".tmp",
                                      dir=directory.parent))
  try:
    variables = jax.tree.map(np.asarray, variables)
    with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as ckptr:
      ckptr.save(tmp / "ckpt", args=ocp.args.Composite(
          variables=ocp.args.StandardSave(variables),
          metadata=ocp.args.JsonSave(dict(metadata or {}))))
    if directory.exists():
      shutil.rmtree(directory)
    os.replace(tmp, directory)
  finally:
    if tmp.exists():
      shutil.rmtree(tmp, ignore_errors=True)


def load_variables(directory, abstract=None):
  """Reads a tree written by `save_variables`; returns (variables, metadata).

  Args:
    directory: the converter's --output directory.
    abstract: optional tree of the expected structure (arrays or
      ShapeDtypeStructs); when given, the restored tree is checked against it.
  """
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  directory = pathlib.Path(directory).resolve()
  if not (directory / "ckpt").is_dir():
    raise FileNotFoundError(
        f"{directory} is not a converted checkpoint (no 'ckpt' inside); "
        "create it with `python -m converters ...`")
  with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as ckptr:
    restored = ckptr.restore(directory / "ckpt", args=ocp.args.Composite(
        variables=ocp.args.StandardRestore(),
        metadata=ocp.args.JsonRestore()))
  variables = restored["variables"]
  if abstract is not None:
    check_tree(variables, abstract, str(directory))
  return variables, restored["metadata"]
