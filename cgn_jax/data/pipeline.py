"""The grain input pipeline of the MNIST variants.

The host only shuffles indices and gathers uint8 digits from arrays held in
RAM (NOTES §3: an in-memory gather is the fastest path); the variant is
rendered on the accelerator inside the trainer's jitted step
(`device_render`), so the host never becomes the bottleneck.

Order: each epoch is a fresh permutation (grain's index shuffle with seed
`seed + epoch`), cut into global batches with drop_remainder; process p of P
takes rows [p*b, (p+1)*b) of each global batch (b = global batch / P), so
all processes step through the same global batches.

Batches are dicts of numpy arrays: {'digits': uint8 [b, 28, 28], 'label':
int32 [b]}, or {'image': uint8 [b, 28, 28, 3], 'label'} for colored MNIST
read from the LNTL .npy. The iterator's state is a small dict that grain and
orbax checkpoint exactly (`iterator_save_args` / `iterator_restore_args`).
"""

from typing import Callable

import grain
import jax
import numpy as np

from cgn_jax.data import variants


def input_key(inputs: np.ndarray) -> str:
  """'digits' for grey [N, 28, 28] inputs, 'image' for RGB [N, 28, 28, 3]."""
  return "image" if inputs.ndim == 4 else "digits"


def make_dataset(inputs: np.ndarray, labels: np.ndarray, batch_size: int,
                 seed: int, *, num_epochs: int | None = None,
                 process_index: int | None = None,
                 process_count: int | None = None) -> grain.MapDataset:
  """A shuffled, batched, per-process MapDataset over in-memory arrays.

  Args:
    inputs: uint8 [N, 28, 28] or [N, 28, 28, 3].
    labels: int [N].
    batch_size: the GLOBAL batch size (all processes together).
    seed: shuffle seed; epoch e uses grain's shuffle with seed + e.
    num_epochs: None repeats forever.
    process_index: this process (default jax.process_index()).
    process_count: number of processes (default jax.process_count()).

  Returns:
    A MapDataset of dict batches of batch_size / process_count examples.

  Raises:
    ValueError: the global batch does not split evenly over processes, or
      exceeds the dataset.
  """
  p = jax.process_index() if process_index is None else process_index
  n_proc = jax.process_count() if process_count is None else process_count
  if batch_size % n_proc:
    raise ValueError(f"global batch size {batch_size} is not divisible by "
                     f"the {n_proc} processes")
  if batch_size > len(labels):
    raise ValueError(f"batch size {batch_size} exceeds the {len(labels)} "
                     "examples (drop_remainder would yield nothing)")
  b = batch_size // n_proc
  key = input_key(inputs)
  labels = np.asarray(labels, np.int32)

  def gather(idx):
    mine = np.asarray(idx)[p * b:(p + 1) * b]
    return {key: inputs[mine], "label": labels[mine]}

  # shuffle before batch, repeat after: the batch keeps epochs apart (with
  # drop_remainder per epoch) and the shuffle reseeds each epoch.
  ds = (grain.MapDataset.range(len(labels)).seed(seed).shuffle()
        .batch(batch_size, drop_remainder=True)
        .repeat(num_epochs)
        .map(gather))
  return ds


def make_train_iterator(variant: str, batch_size: int, seed: int,
                        split: str = "train", *,
                        num_epochs: int | None = None, data_dir=None,
                        process_index: int | None = None,
                        process_count: int | None = None,
                        prefetch: int = 4) -> grain.DatasetIterator:
  """A checkpointable iterator of host batches of one variant's split.

  Args:
    variant: one of variants.VARIANTS.
    batch_size: global batch size.
    seed: shuffle seed.
    split: 'train' or 'test'.
    num_epochs: None repeats forever.
    data_dir: TFDS data dir for MNIST.
    process_index: see `make_dataset`.
    process_count: see `make_dataset`.
    prefetch: batches prefetched by a background thread (0: none).

  Returns:
    A grain DatasetIterator of {'digits' | 'image', 'label'} numpy batches;
    `get_state()` / `set_state()` restore it exactly.
  """
  inputs, labels = variants.split_arrays(variant, split, data_dir)
  ds = make_dataset(inputs, labels, batch_size, seed, num_epochs=num_epochs,
                    process_index=process_index, process_count=process_count)
  options = grain.ReadOptions(num_threads=1 if prefetch else 0,
                              prefetch_buffer_size=prefetch)
  return iter(ds.to_iter_dataset(options))


def steps_per_epoch(variant: str, batch_size: int, split: str = "train",
                    data_dir=None) -> int:
  """Global batches per epoch (drop_remainder)."""
  _, labels = variants.split_arrays(variant, split, data_dir)
  return len(labels) // batch_size


def device_render(variant: str, split: str = "train", **kwargs) -> Callable:
  """A jittable `(batch, rng) -> images` for a host batch of this pipeline.

  Args:
    variant: one of variants.VARIANTS.
    split: 'train' (nuisance tied to the label) or 'test' (random).
    **kwargs: passed to variants.make_renderer (with_nuisance, textures).

  Returns:
    render(batch, rng) -> float32 [b, 32, 32, 3] in [-1, 1] (or (images,
    nuisance) with with_nuisance=True), to call inside the jitted step.
  """
  render = variants.make_renderer(variant, **kwargs)

  def fn(batch, rng):
    x = batch["image"] if "image" in batch else batch["digits"]
    return render(x, batch["label"], rng, split)

  return fn


def iterator_save_args(it: grain.DatasetIterator):
  """Orbax args saving `it`'s state, for an `ocp.args.Composite` entry.

  Use as `mngr.save(step, args=ocp.args.Composite(state=...,
  data=iterator_save_args(it)))`.
  """
  return grain.checkpoint.CheckpointSave(it)


def iterator_restore_args(it: grain.DatasetIterator):
  """Orbax args restoring `it` in place, for an `ocp.args.Composite` entry.

  `it` must come from the same pipeline (variant, batch size, seed); after
  `mngr.restore(step, args=ocp.args.Composite(...,
  data=iterator_restore_args(it)))` it continues where the saved one was.
  """
  return grain.checkpoint.CheckpointRestore(it)
