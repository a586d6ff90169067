"""Converted weight directories: the one strict loader every model uses.

A converted directory (written by `python -m converters NAME --output DIR`
through `save_variables`) holds an orbax tree `ckpt/variables` and a JSON
`ckpt/metadata` whose `model` field names what it is ('cgn_mnist',
'vgg16_features', 'biggan', ...). `load_variables(DIR, abstract, model=...,
convert_hint=...)` is the strict reader: it raises one `WeightsError` (or
FileNotFoundError) naming the problem and the converter command that fixes
it when the directory is missing, is not a converted checkpoint, holds
another model, or has missing, unexpected or mis-shaped keys.

Converters build on this module (not the reverse): `converters/common.py`
re-exports these names. Raw PyTorch files are read only by
`read_torch_state_dict`, which imports torch lazily; the library needs it
for one thing, the authors' MNIST CGN `.pth` that generate.py and the
table command accept directly (`cgn_jax/models/cgn_weights.py`). Without
torch installed that path says so and names the converter to run instead.

`fingerprint(variables)` is the sha256 of a tree's names, dtypes, shapes
and bytes: what provenance records store to tell two sets of weights apart,
whatever file they came from.
"""

import hashlib
import os
import pathlib
import shutil
import tempfile
from typing import Any, Mapping

import jax
import numpy as np


class WeightsError(ValueError):
  """Weights do not fit the model they are loaded (or converted) for."""


# ------------------------------------------------------------ tree checks --


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


def tree_mismatch(given, reference):
  """`key_mismatch` of two trees (keys are jax key paths)."""
  conv = {jax.tree_util.keystr(p): np.shape(x)
          for p, x in jax.tree_util.tree_leaves_with_path(given)}
  ref = {jax.tree_util.keystr(p): tuple(x.shape)
         for p, x in jax.tree_util.tree_leaves_with_path(reference)}
  return key_mismatch(conv, ref)


def check_tree(given, reference, what: str, error=WeightsError) -> None:
  """Raises `error` unless both trees have the same keys and shapes.

  Args:
    given: the tree read or converted from a checkpoint.
    reference: a randomly initialised (or `jax.eval_shape`d) tree of the model.
    what: a name for the error message, e.g. 'BigGAN-deep-256'.
    error: the exception class to raise.
  """
  mismatch = tree_mismatch(given, reference)
  if any(mismatch):
    raise error(mismatch_message(what, *mismatch))


# ----------------------------------------------------- converted directories --


def save_variables(directory, variables, metadata: Mapping | None = None):
  """Writes `variables` (+ JSON metadata) as an orbax checkpoint, atomically.

  The tree is written to a temporary sibling directory and renamed into place,
  so an interrupted conversion never leaves a half-written checkpoint.

  In a multi-process run process 0 writes alone, with no barrier: the other
  processes may call it too (they return at once) or not at all, so the
  values must be the same everywhere (e.g. replicated parameters).
  """
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  multi = jax.process_count() > 1
  if multi and jax.process_index() != 0:
    return
  directory = pathlib.Path(directory).resolve()
  directory.parent.mkdir(parents=True, exist_ok=True)
  tmp = pathlib.Path(tempfile.mkdtemp(prefix=directory.name + ".tmp",
                                      dir=directory.parent))
  try:
    variables = jax.tree.map(np.asarray, variables)
    with _checkpointer(alone=multi) as ckptr:
      ckptr.save(tmp / "ckpt", args=ocp.args.Composite(
          variables=ocp.args.StandardSave(variables),
          metadata=ocp.args.JsonSave(dict(metadata or {}))))
    if directory.exists():
      shutil.rmtree(directory)
    os.replace(tmp, directory)
  finally:
    if tmp.exists():
      shutil.rmtree(tmp, ignore_errors=True)


def _checkpointer(alone: bool = False):
  """The orbax checkpointer of converted directories.

  `alone`: this process saves without the others (orbax's barriers span
  this process only), for process 0 of a multi-process run.
  """
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  if not alone:
    return ocp.Checkpointer(ocp.CompositeCheckpointHandler())
  me = jax.process_index()
  mp = ocp.options.MultiprocessingOptions(primary_host=me,
                                          active_processes={me})
  handler = ocp.CompositeCheckpointHandler(
      composite_options=ocp.CompositeOptions(multiprocessing_options=mp),
      variables=ocp.StandardCheckpointHandler(multiprocessing_options=mp),
      metadata=ocp.JsonCheckpointHandler(multiprocessing_options=mp))
  return ocp.Checkpointer(handler, multiprocessing_options=mp)


def load_variables(directory, abstract=None, *, model: str | None = None,
                   what: str | None = None,
                   convert_hint: str = "python -m converters ..."):
  """Reads a converted directory strictly; returns (variables, metadata).

  Args:
    directory: the converter's --output directory.
    abstract: the expected tree (arrays or ShapeDtypeStructs); when given,
      the restored tree must have exactly its keys and shapes.
    model: the expected metadata `model` field (checked when both exist).
    what: the model's name for messages (default: `model`).
    convert_hint: the command that creates such a directory, for messages.

  Returns:
    (variables as numpy arrays, metadata dict).

  Raises:
    FileNotFoundError: no such directory, or not a converted checkpoint.
    WeightsError: another model, or keys/shapes that do not fit.
  """
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  what = what or model or "the model"
  directory = pathlib.Path(directory).expanduser().resolve()
  if not directory.exists():
    raise FileNotFoundError(
        f"{what} weights {directory} do not exist; create them with "
        f"`{convert_hint}`")
  if not (directory / "ckpt").is_dir():
    raise FileNotFoundError(
        f"{directory} is not a converted checkpoint (no 'ckpt' inside); "
        f"create it with `{convert_hint}`")
  try:
    with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as ckptr:
      restored = ckptr.restore(directory / "ckpt", args=ocp.args.Composite(
          variables=ocp.args.StandardRestore(),
          metadata=ocp.args.JsonRestore()))
  except Exception as e:  # pylint: disable=broad-except
    raise WeightsError(
        f"{directory} could not be read ({type(e).__name__}: "
        f"{str(e).splitlines()[0] if str(e) else ''}); it is corrupt or "
        f"incomplete: recreate it with `{convert_hint}`") from e
  variables, metadata = restored["variables"], dict(restored["metadata"] or {})
  found = metadata.get("model")
  if model is not None and found is not None and found != model:
    raise WeightsError(
        f"{directory} holds {found!r} weights, not {model!r}; create "
        f"{what} weights with `{convert_hint}`")
  if abstract is not None:
    mismatch = tree_mismatch(variables, abstract)
    if any(mismatch):
      raise WeightsError(
          mismatch_message(f"{what} ({directory})", *mismatch)
          + f"\n  recreate it with `{convert_hint}`")
  return variables, metadata


# ------------------------------------------------------------ raw PyTorch --


def read_torch_state_dict(path, error=WeightsError) -> dict[str, np.ndarray]:
  """Reads a PyTorch state dict (zip or legacy format) without running code.

  `torch.load(weights_only=True)` accepts only tensors and the standard
  containers, so a checkpoint cannot execute arbitrary pickled code. torch
  is imported here only (an optional dependency of the library).

  Args:
    path: a `.pth`/`.bin` file.
    error: the exception class for unreadable files.

  Returns:
    key -> numpy array (float tensors keep their dtype; int64 scalars such as
    `num_batches_tracked` are kept too so that converters can drop them).
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(
        f"checkpoint {path} does not exist; pass the path of the downloaded "
        "PyTorch weights")
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(
        f"reading the PyTorch file {path} needs torch (pip install -e "
        "'.[convert]'), or convert it once with `python -m converters ...` "
        "and pass the converted directory") from e
  try:
    obj = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:  # pylint: disable=broad-except
    raise error(
        f"{path} is not a readable PyTorch state dict ({type(e).__name__}: "
        f"{str(e).splitlines()[0] if str(e) else ''}). Only tensors and "
        "state-dict containers are accepted (torch.load weights_only=True)."
    ) from e
  for wrapper in ("state_dict", "model"):  # common training-script wrappers
    if isinstance(obj, Mapping) and wrapper in obj and isinstance(
        obj[wrapper], Mapping):
      obj = obj[wrapper]
  if not isinstance(obj, Mapping):
    raise error(
        f"{path} holds a {type(obj).__name__}, not a state dict (a mapping "
        "from parameter names to tensors)")
  out = {}
  for k, v in obj.items():
    if not hasattr(v, "detach"):
      raise error(f"{path}: entry {k!r} is not a tensor")
    out[k] = v.detach().cpu().numpy()
  return out


# ------------------------------------------------------------- fingerprint --


def fingerprint(variables: Any) -> str:
  """sha256 of a tree's key paths, dtypes, shapes and bytes (hex)."""
  h = hashlib.sha256()
  for path, leaf in sorted(
      ((jax.tree_util.keystr(p), x)
       for p, x in jax.tree_util.tree_leaves_with_path(variables)),
      key=lambda kv: kv[0]):
    a = np.ascontiguousarray(np.asarray(leaf))
    h.update(f"{path}|{a.dtype.str}|{a.shape}\n".encode())
    h.update(a.tobytes())
  return h.hexdigest()
