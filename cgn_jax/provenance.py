"""What made an artefact: a small JSON record, checked before reuse.

Every artefact a command may reuse on a rerun (a generated dataset, a
trainer's checkpoints) stores a flat record of what made it: the generator's
weights sha256, the sizes and seeds, the config. Before reusing it, the
command builds the record it would write now and compares:
`check(stored, wanted, what=..., fix=...)` raises `ProvenanceMismatch`
naming every differing field (stored vs now) and the fix; equal records mean
the artefact is reused. A rerun with the overwrite option redoes the work
instead.
"""

import json
import pathlib
from typing import Any, Mapping

FILE = "provenance.json"


class ProvenanceMismatch(ValueError):
  """An existing artefact was made differently from what is asked now."""


def flatten(record: Mapping[str, Any], prefix: str = "") -> dict:
  """{'a': {'b': 1}} -> {'a.b': 1}; lists and scalars kept as they are."""
  out = {}
  for k, v in record.items():
    key = f"{prefix}{k}"
    if isinstance(v, Mapping):
      out.update(flatten(v, key + "."))
    else:
      out[key] = v
  return out


def normalise(record: Mapping[str, Any]) -> dict:
  """The record as JSON would give it back (tuples -> lists, ...)."""
  return json.loads(json.dumps(dict(record), sort_keys=True, default=str))


def differences(stored: Mapping[str, Any] | None,
                wanted: Mapping[str, Any]) -> list[str]:
  """'field: stored X, now Y' for every field that differs."""
  a = flatten(normalise(stored or {}))
  b = flatten(normalise(wanted))
  missing = object()
  out = []
  for k in sorted(set(a) | set(b)):
    x, y = a.get(k, missing), b.get(k, missing)
    if x != y:
      fmt = lambda v: "(absent)" if v is missing else json.dumps(v)
      out.append(f"{k}: stored {fmt(x)}, now {fmt(y)}")
  return out


def check(stored: Mapping[str, Any] | None, wanted: Mapping[str, Any], *,
          what: str, fix: str) -> None:
  """Raises ProvenanceMismatch unless `stored` equals `wanted`.

  Args:
    stored: the record kept with the artefact (None: it has none).
    wanted: the record the current command would write.
    what: the artefact, e.g. 'the counterfactuals in DIR'.
    fix: how to redo it, e.g. 'pass --config.overwrite=True'.
  """
  if stored is None:
    raise ProvenanceMismatch(
        f"{what} has no provenance record (made by an older version), so "
        f"it cannot be checked against this run; {fix}")
  diff = differences(stored, wanted)
  if diff:
    raise ProvenanceMismatch(
        f"{what} was made differently ({'; '.join(diff)}); {fix}")


def read(directory) -> dict | None:
  """DIR/provenance.json, or None when absent."""
  path = pathlib.Path(directory) / FILE
  if not path.is_file():
    return None
  with open(path) as f:
    return json.load(f)


def write(directory, record: Mapping[str, Any]) -> None:
  """Writes DIR/provenance.json atomically."""
  path = pathlib.Path(directory) / FILE
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_suffix(".json.tmp")
  with open(tmp, "w") as f:
    json.dump(normalise(record), f, indent=1, sort_keys=True)
  tmp.replace(path)
