"""The paper's ImageNet evaluation suite, part by part (SPEC §6.3).

`run_suite(apply_fn, data)` scores the invariant ensemble on every part
whose data is given and present, and skips the others with a message naming
the data and where to get it:

* imagenet_val: ImageNet validation top-1 / top-5 of the averaged logits;
* counterfactual_val: top-1 / top-5 of each head against its own label;
* shape_bias: per head, on the cue-conflict stimuli;
* in9: the backgrounds challenge (IN-9, Mixed-Same, Mixed-Rand, BG-Gap).

Used by `python -m cgn_jax.experiments.imagenet_eval` and, after each epoch,
by the classifier trainer. `make_apply_fn(model, variables)` turns an
`InvariantEnsemble` and its variables into the `apply_fn` the parts take.
"""

import json
import pathlib
import time
from typing import Callable

from cgn_jax.data import imagenet
from cgn_jax.evaluation import accuracy
from cgn_jax.evaluation import backgrounds
from cgn_jax.evaluation import shape_bias

PARTS = ("imagenet_val", "counterfactual_val", "shape_bias", "in9")

def _iterate(source, batch_size, kind, worker_count):
  return imagenet.process_batches(source, batch_size, kind=kind,
                                  worker_count=worker_count)


def _imagenet_val(apply_fn, path, batch_size, workers):
  if str(path) == "tfds":
    source = imagenet.tfds_source("validation")
  else:
    p = pathlib.Path(path).expanduser()
    # accept the dataset root (holding val/) or the val folder itself
    source = imagenet.image_folder(p / "val" if (p / "val").is_dir() else p,
                                   what="ImageNet val")
  return accuracy.imagenet_accuracy(
      apply_fn, _iterate(source, batch_size, "imagenet", workers))


def _counterfactual_val(apply_fn, path, batch_size, workers):
  source = imagenet.counterfactual_source(path, "val")
  return accuracy.counterfactual_accuracy(
      apply_fn, _iterate(source, batch_size, "imagenet", workers))


def _shape_bias(apply_fn, path, batch_size, workers):
  source = shape_bias.stimulus_source(path)
  res = shape_bias.evaluate(
      apply_fn, _iterate(source, batch_size, "imagenet", workers))
  if len(source) != 1200:
    res["note"] = (f"{len(source)} conflicting stimuli, not the full 1,200: "
                   "not comparable with published numbers")
  return res


def _in9(apply_fn, path, batch_size, workers):
  return backgrounds.evaluate(apply_fn, path, batch_size,
                              worker_count=workers)


_RUNNERS = {"imagenet_val": _imagenet_val,
            "counterfactual_val": _counterfactual_val,
            "shape_bias": _shape_bias, "in9": _in9}
_WHERE = {
    "imagenet_val": "--imagenet-val: " + imagenet.IMAGENET_HELP,
    "counterfactual_val": "--counterfactuals: " + imagenet.CF_HELP,
    "shape_bias": "--cue-conflict: " + shape_bias.HELP,
    "in9": "--in9: " + backgrounds.HELP,
}


def run_suite(apply_fn: Callable, data: dict, *, batch_size: int = 64,
              worker_count: int = 0, log=print) -> dict:
  """Runs every part whose data is given and present.

  With several processes each decodes only its rows of every global batch
  (`imagenet.process_batches`): `apply_fn` then gets this process's images
  and returns the outputs of the whole global batch (as `make_apply_fn`'s
  does), and every process returns the same results.

  Args:
    apply_fn: images float32 [B, 224, 224, 3] -> the ensemble's outputs
      (see cgn_jax.evaluation.accuracy).
    data: {part: path or None} for the parts in PARTS.
    batch_size: images per batch (the last one padded).
    worker_count: JPEG-decoding processes.
    log: progress messages.

  Returns:
    {part: its results, 'skipped': {part: why}, 'seconds': {part: s}}.
  """
  results = {"skipped": {}, "seconds": {}}
  for part in PARTS:
    path = data.get(part)
    if not path:
      results["skipped"][part] = f"not given ({_WHERE[part]})"
      log(f"[skip] {part}: {results['skipped'][part]}")
      continue
    t0 = time.perf_counter()
    try:
      results[part] = _RUNNERS[part](apply_fn, path, batch_size, worker_count)
    except imagenet.DataError as e:
      results["skipped"][part] = str(e)
      log(f"[skip] {part}: {e}")
      continue
    results["seconds"][part] = round(time.perf_counter() - t0, 2)
    log(f"[done] {part} in {results['seconds'][part]} s: "
        f"{json.dumps(results[part])}")
  return results


def make_apply_fn(model, variables) -> Callable:
  """A jitted images -> outputs dict (the five logits) of the ensemble.

  With several processes the images are this process's rows of a global
  batch (see `run_suite`): they are split over every device of every
  process and the outputs of the whole global batch come back.
  """
  import jax  # pylint: disable=g-import-not-at-top
  from cgn_jax import distributed  # pylint: disable=g-import-not-at-top

  @jax.jit
  def apply(variables, images):
    _, aux = model.apply(variables, images, train=False)
    return {k: aux[k] for k in accuracy.OUTPUTS}

  if jax.process_count() > 1:
    mesh = distributed.data_mesh()
    rows = jax.sharding.NamedSharding(mesh, distributed.P("data"))
    variables = distributed.replicate(variables, mesh)
    return lambda images: distributed.to_host(
        apply(variables, distributed.global_batch(images, rows)))
  variables = jax.device_put(variables)
  return lambda images: jax.device_get(apply(variables, images))
