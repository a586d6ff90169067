"""Inception Score (Salimans et al. 2016) with the linen Inception-v3.

IS = exp(E_x KL(p(y|x) || p(y))), with p(y) the mean prediction of the split.
The images are split into K consecutive parts; each part gets its own p(y)
and score, and the result is the mean and (population, ddof=0) standard
deviation of the K scores. Split k holds images [k*N//K, (k+1)*N//K): all N
images are used (OpenAI's / TF-GAN's rule). The sbarratt PyTorch code that
the reproduction [FA] and [BG] used takes N//K images per split and drops the
remainder; both rules agree whenever K divides N.

Preprocessing: images in [-1, 1] (NHWC), resized bilinearly to 299x299 as
torch's `F.interpolate(mode='bilinear', align_corners=False)` (no
antialiasing, so downsampling is torch's too), fed to Inception-v3 with
`transform_input=False` (torchvision weights, see `models/inception.py`).
JPEG/PNG files are read as uint8 and mapped with x / 127.5 - 1.

Protocols of the published numbers (SPEC §7.3; none states all of them):

| source | network | images | splits |
|---|---|---|---|
| paper (Table 1) | not stated | not stated | not stated |
| [RR] reproduction | OpenAI TF Inception ("nnyui/Inception-Score") | ~converged, Fig. 9 | 10 |
| [BG] second reproduction | PyTorch (torchvision) inception_v3 | 2,000, truncation 0.5 | 2 |
| [FA] generate_data.py | torchvision inception_v3, raw x_gen tensors | all generated | 1 |
| upstream imagenet/inception.py | TF-Hub tfgan inception | 100k JPEGs | 10-30 |

Defaults here follow [RR]'s split count (10); `--num 2000 --splits 2` at
truncation 0.5 is [BG]'s protocol. torchvision's port of the Inception
weights is not bit-identical to TF's graph, so scores from TF code differ by
a few percent; compare like with like.
"""

from typing import Callable, Iterable, Iterator

import jax
import jax.numpy as jnp
import numpy as np

from cgn_jax.models import inception as inception_lib
from cgn_jax.models import resize

INPUT_SIZE = inception_lib.INPUT_SIZE


# ------------------------------------------------------------------ score --


def split_bounds(n: int, splits: int) -> list[tuple[int, int]]:
  """[(start, stop)] of the K splits: k*N//K .. (k+1)*N//K (all images)."""
  if splits < 1:
    raise ValueError(f"splits must be >= 1, got {splits}")
  if n < splits:
    raise ValueError(f"{n} predictions cannot make {splits} splits")
  return [(k * n // splits, (k + 1) * n // splits) for k in range(splits)]


@jax.jit
def _split_score(log_probs: jax.Array) -> jax.Array:
  """exp(mean_x KL(p(y|x) || p(y))) of one split, from log p(y|x) [n, C]."""
  log_probs = log_probs.astype(jnp.float32)
  n = log_probs.shape[0]
  log_py = jax.nn.logsumexp(log_probs, axis=0) - jnp.log(n)
  p = jnp.exp(log_probs)
  # 0 * log 0 = 0: a class with p(y|x) = 0 contributes nothing.
  kl = jnp.where(p > 0, p * (log_probs - log_py), 0.0).sum(-1)
  return jnp.exp(kl.mean())


def inception_score(log_probs, splits: int = 10) -> tuple[float, float,
                                                           np.ndarray]:
  """Inception Score from per-image log-probabilities.

  Args:
    log_probs: [N, C] log p(y|x) (log_softmax of the logits; `log(probs)`
      works too, -inf where p = 0).
    splits: K, the number of consecutive splits (see the module docstring).

  Returns:
    (mean, std, per_split_scores) with std over the K splits (ddof=0).
  """
  log_probs = np.asarray(log_probs)
  if log_probs.ndim != 2:
    raise ValueError(f"expected [N, classes] log-probabilities, got "
                     f"{log_probs.shape}")
  scores = np.asarray([float(_split_score(jnp.asarray(log_probs[a:b])))
                       for a, b in split_bounds(len(log_probs), splits)])
  return float(scores.mean()), float(scores.std()), scores


# ------------------------------------------------------------ predictions --


def preprocess(images: jax.Array) -> jax.Array:
  """[-1, 1] NHWC images of any size -> [B, 299, 299, 3] (torch bilinear)."""
  if images.ndim != 4 or images.shape[-1] != 3:
    raise ValueError(f"expected NHWC RGB images, got {images.shape}")
  return resize.resize_bilinear(images.astype(jnp.float32),
                                (INPUT_SIZE, INPUT_SIZE), align_corners=False)


def make_predict_fn(model: inception_lib.InceptionV3) -> Callable:
  """A jitted (variables, images [-1, 1] NHWC) -> log p(y|x) [B, C].

  A new function per call (one compilation per batch shape): a caller that
  scores several image sets builds it once and passes it along.
  """

  @jax.jit
  def predict(variables, images):
    logits = model.apply(variables, preprocess(images))["logits"]
    return jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)

  return predict


def _padded(batch: np.ndarray, size: int) -> np.ndarray:
  if len(batch) == size:
    return batch
  pad = np.zeros((size - len(batch),) + batch.shape[1:], batch.dtype)
  return np.concatenate([batch, pad])


def predict_log_probs(variables, batches: Iterable, *,
                      model: inception_lib.InceptionV3 | None = None,
                      batch_size: int | None = None,
                      predict: Callable | None = None) -> np.ndarray:
  """log p(y|x) for every image of `batches`.

  Args:
    variables: Inception-v3 {'params', 'batch_stats'}.
    batches: iterable of [b, H, W, 3] arrays in [-1, 1] (float), or uint8
      (mapped with x / 127.5 - 1). A short batch is padded to `batch_size`
      so that only one shape is compiled.
    model: the module (default InceptionV3()).
    batch_size: the compiled batch (default: the first batch's size),
      rounded up to a multiple of the device count; the batch is sharded
      over all devices.
    predict: `make_predict_fn(model)` to reuse (default: a new one).

  Returns:
    [N, C] float32 numpy.
  """
  if predict is None:
    predict = make_predict_fn(model or inception_lib.InceptionV3())
  mesh = jax.make_mesh((jax.device_count(),), ("data",))
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(
      "data"))
  variables = jax.device_put(variables, jax.sharding.NamedSharding(
      mesh, jax.sharding.PartitionSpec()))
  out, pending = [], None
  for batch in batches:
    batch = np.asarray(batch)
    if batch.dtype == np.uint8:
      batch = batch.astype(np.float32) / 127.5 - 1.0
    if batch_size is None:
      batch_size = len(batch)
    batch_size = -(-batch_size // jax.device_count()) * jax.device_count()
    if len(batch) > batch_size:
      raise ValueError(f"batch of {len(batch)} exceeds batch_size "
                       f"{batch_size}")
    x = jax.device_put(_padded(batch.astype(np.float32), batch_size),
                       sharding)
    result = (predict(variables, x), len(batch))
    if pending is not None:  # copy the previous batch while this one runs
      out.append(np.asarray(pending[0])[:pending[1]])
    pending = result
  if pending is not None:
    out.append(np.asarray(pending[0])[:pending[1]])
  if not out:
    raise ValueError("no images to score")
  return np.concatenate(out)


def batched(images: np.ndarray, batch_size: int) -> Iterator[np.ndarray]:
  """Consecutive batches of an in-memory array."""
  for i in range(0, len(images), batch_size):
    yield images[i:i + batch_size]
