"""One MNIST-CGN training iteration (G step, then D step) against upstream's.

For each of the three configs, the JAX `train_step` and upstream's
`fit()` iteration start from the same weights and see the same real batch,
generated labels `y_gen`, noise `u` and patch-shuffler crop offsets.

The step runs twice. In float32, as trained (Winograd VGG16 on CPU), its
seven losses must match upstream's to `TOL` (1e-5 relative). Then both
sides run in float64 (torch: models, Adams and inputs `.to(float64)`; JAX:
`use_float64`), and everything must match to `F64_TOL` (relative, max-abs
error / max-abs value, per tensor): the seven losses, the gradients of
every G and D parameter (torch_baseline keeps them; the JAX step keeps
them in its optimizer state, behind a pass-through transform), every
updated parameter (where Adam's sign is decided, see `compare_updated`)
and the BatchNorm running statistics (G, DiscConv), on the first
`F64_BATCH` samples. Measured: <= 2e-12 for all three configs.

Why float64 for the gradients: in float32 no two implementations with
different summation orders can be held to 1e-5 there, because a few
pre-activations sit within float32 rounding of a kink, and because
f_shape's gradients are ill-conditioned. Diagnosed, per config (torch
float32 / torch float64 / JAX float32 gradients):
- colored: torch float32 is the outlier (2.5e-3 from torch float64 in
  f_text1's layers 0, 3, 7; JAX float32 is within 2.9e-5 of float64).
  f_text1's second LeakyReLU (torch index 9, after the BatchNorm of the
  second upsampling block) gets the pre-activation +2.23e-7 in torch
  float32 and -4.26e-7 in float64 at sample 14, channel 28, pixel
  (8, 24): slope 1 instead of 0.2 for that unit. (Also one VGG16 relu3_1
  unit on x_gen, sample 11, channel 244, pixel (6, 5): -1.2e-7 vs
  +3.5e-8.)
- wildlife: JAX float32 is the outlier (4.6e-3): one DiscConv block-2
  pre-activation (sample 9, channel 46 at (25, 21)) is -1.9e-6 in torch
  (float32 and float64) and +7.3e-7 in JAX float32.
- double_colored: no branch flips; f_shape's gradients (a mostly
  saturated mask clamp, three InstanceNorms) differ by 4.8e-5 between
  torch float32 and float64 themselves (JAX float32: 8e-5).

References: double_colored (DiscLin) and wildlife (DiscConv) losses
against the goldens made by the upstream code itself
(../shared/reference/mnist_step, DiscLin's dropout at p = 0, VGG16 formula
weights seed 1602). Everything else against benchmarks/torch_baseline.py's
re-creation of upstream's loop (`cgn_iteration`), which is first checked
against both goldens in float32 here (outputs, losses, updated parameters,
BatchNorm statistics), so the re-creation itself is proven. Colored has
no golden: its float32 losses are checked against the re-creation's
float64 losses.

The JAX step draws its randomness itself; the test injects the draws by
replacing, while the step is traced, `jax.random.randint` for y_gen (shape
[B], 10 classes), `jax.random.normal` for u (shape [B, 32]) and
`models.cgn.shuffle_offsets` for the crops (foreground first, then
background, as the model calls it), and checks each was used exactly once.
"""

import contextlib
import dataclasses
import importlib
import pkgutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

pytestmark = [pytest.mark.torch, pytest.mark.shared]

torch = pytest.importorskip("torch")

from benchmarks import torch_baseline as tb  # pylint: disable=g-import-not-at-top,wrong-import-position
from cgn_jax import losses  # pylint: disable=g-import-not-at-top,wrong-import-position
from cgn_jax.models import cgn as cgn_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from cgn_jax.models import cgn_weights  # pylint: disable=g-import-not-at-top,wrong-import-position
from cgn_jax.models import discriminators  # pylint: disable=g-import-not-at-top,wrong-import-position
from cgn_jax.models import vgg16 as vgg_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from cgn_jax.train import cgn_mnist  # pylint: disable=g-import-not-at-top,wrong-import-position
from configs import cgn_mnist_base  # pylint: disable=g-import-not-at-top,wrong-import-position
from converters import cgn_mnist as cgn_convert  # pylint: disable=g-import-not-at-top,wrong-import-position
from converters import vgg16 as vgg_convert  # pylint: disable=g-import-not-at-top,wrong-import-position

TOL = 1e-5
NOISE = 1e-3  # see compare_updated
F64_TOL = 1e-10  # both sides in float64 (measured: <= 2e-12)
F64_BATCH = 4
F64_NOISE = 1e-9  # float64 gradients agree to 1e-13 of their maximum
GRAD_FLOOR = 1e-6
GRAD_SCALE = 0.1
MAX_LEFT_OUT = 0.05  # of the updated parameters (measured: <= 2 %)
VGG_SEED = 1602
GOLDEN = {"double_colored": "double_colored_MNIST",
          "wildlife": "wildlife_MNIST"}
LOSS_NAMES = {  # golden / torch_baseline name -> JAX metric
    "loss_g_adv": "g_adv", "loss_g_binary": "g_binary",
    "loss_g_perc": "g_style", "loss_g": "g_total",
    "loss_d_real": "d_real", "loss_d_fake": "d_fake", "loss_d": "d_total"}


@pytest.fixture(autouse=True, scope="module")
def _torch_threads():
  # Two intra-op threads on a busy 2-core box spin against each other.
  n = torch.get_num_threads()
  torch.set_num_threads(1)
  yield
  torch.set_num_threads(n)


def rel_err(got, want) -> float:
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  assert got.shape == want.shape, (got.shape, want.shape)
  return float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-30))


# ------------------------------------------------------------- reference --


@pytest.fixture(scope="module")
def vgg_state_dict(formula_weights):
  """torchvision VGG16 `features` with formula weights (seed 1602)."""
  shapes = [(k, tuple(v.shape))
            for k, v in tb.vgg16_features().state_dict().items()]
  return formula_weights(shapes, VGG_SEED)


def load_golden(shared_dir, config):
  stem = shared_dir / "reference" / "mnist_step" / f"mnist_step_{GOLDEN[config]}"
  weights = torch.load(f"{stem}.pth", map_location="cpu", weights_only=True)
  arrays = dict(np.load(f"{stem}.npz"))
  return weights, arrays


def draws(arrays):
  """The injected batch and random draws, as numpy."""
  keys = ("x_gt", "y_gt", "y_gen", "u", "crop_fg_h", "crop_fg_w",
          "crop_bg_h", "crop_bg_w")
  return {k: arrays[k] for k in keys}


def random_draws(x_gt, y_gt, seed=7):
  """Injected draws for the config without a golden (numpy, fixed seed)."""
  rng = np.random.default_rng(seed)
  b = len(y_gt)
  d = {"x_gt": x_gt, "y_gt": y_gt,
       "y_gen": rng.integers(0, 10, b).astype(np.int64),
       "u": rng.standard_normal((b, 32)).astype(np.float32)}
  for k in ("crop_fg_h", "crop_fg_w", "crop_bg_h", "crop_bg_w"):
    d[k] = rng.integers(0, 33, b).astype(np.int64)
  return d


def torch_iteration(config, cgn_sd, d_sd, vgg_sd, d, dtype=None):
  """benchmarks/torch_baseline.py's upstream iteration on injected inputs.

  `dtype` torch.float64 runs it in float64 (models, Adams and inputs).

  Returns:
    (outputs and losses as numpy, cgn state dict after, D state dict after).
  """
  c = tb.CONFIGS[config]
  _, models = tb.build_cgn_step(config, len(d["y_gt"]), torch.device("cpu"),
                                logging=False)
  models["cgn"].load_state_dict({k: torch.as_tensor(v)
                                 for k, v in cgn_sd.items()})
  models["disc"].load_state_dict({k: torch.as_tensor(v)
                                  for k, v in d_sd.items()})
  for m in models["disc"].modules():  # the goldens ran dropout at p = 0
    if isinstance(m, torch.nn.Dropout):
      m.p = 0.0
  models["perc"].m_feat.load_state_dict({k: torch.as_tensor(v)
                                         for k, v in vgg_sd.items()})
  assert models["binary"].loss_weight == c["lambda_mask"]
  dtype = dtype or torch.float32
  for k in ("cgn", "disc", "perc"):
    models[k].to(dtype)
  crops = tuple((torch.as_tensor(d[f"crop_{p}_h"]),
                 torch.as_tensor(d[f"crop_{p}_w"])) for p in ("fg", "bg"))
  out = tb.cgn_iteration(models, torch.as_tensor(d["x_gt"]).to(dtype),
                         torch.as_tensor(d["y_gt"]),
                         torch.as_tensor(d["y_gen"]),
                         u=torch.as_tensor(d["u"]).to(dtype), crops=crops)
  out = {k: v.detach().numpy() for k, v in out.items()}
  # The gradients of the step stay in .grad (upstream zeroes them first).
  for prefix, m in (("grad_g.", models["cgn"]), ("grad_d.", models["disc"])):
    out.update({prefix + k: p.grad.numpy().copy()
                for k, p in m.named_parameters()})
  sd = lambda m: {k: v.detach().numpy().copy()
                  for k, v in m.state_dict().items()}
  return out, sd(models["cgn"]), sd(models["disc"])


# ------------------------------------------------------------------- JAX --


def disc_variables(sd, kind):
  """Upstream DiscLin / DiscConv state dict -> our {'params', 'batch_stats'}.

  Names mirror torch (`model.{i}` -> `model_{i}`); Dense kernels are
  transposed (DiscLin flattens its input in torch's CHW order), conv kernels
  go OIHW -> HWIO.
  """
  params, stats = {}, {}
  params["label_embedding"] = {"embedding": sd["label_embedding.weight"]}
  for name, v in sd.items():
    if not name.startswith("model."):
      continue
    _, idx, leaf = name.split(".")
    mod = f"model_{idx}"
    if leaf == "num_batches_tracked":
      continue
    if leaf in ("running_mean", "running_var"):
      stats.setdefault(mod, {})["mean" if leaf == "running_mean"
                                else "var"] = v
    elif leaf == "weight" and v.ndim == 4:
      params.setdefault(mod, {})["kernel"] = v.transpose(2, 3, 1, 0)
    elif leaf == "weight" and v.ndim == 2:
      params.setdefault(mod, {})["kernel"] = v.T
    elif leaf == "weight":  # BatchNorm scale
      params.setdefault(mod, {})["scale"] = v
    else:
      params.setdefault(mod, {})["bias"] = v
  tree = {"params": params, "batch_stats": stats}
  if kind == "linear":
    tree.pop("batch_stats")
  return jax.tree.map(jnp.asarray, tree)


def cgn_variables(sd):
  out = cgn_convert.convert({k: np.asarray(v) for k, v in sd.items()})
  return {"params": out["params"], "batch_stats": out.get("batch_stats", {})}


def _keep_gradients() -> optax.GradientTransformation:
  """Passes the updates through and stores them as its state."""
  return optax.GradientTransformation(
      lambda params: jax.tree.map(jnp.zeros_like, params),
      lambda updates, state, params=None: (updates, updates))


class _Float64Numpy:
  """`jax.numpy` (or `numpy`) in which `float32` is `float64`."""

  def __init__(self, module=jnp):
    self._module = module

  def __getattr__(self, name):
    if name == "float32":
      return self._module.float64
    return getattr(self._module, name)


def float64_converter(monkeypatch):
  """The CGN converter keeps float64 state dicts float64 (it casts to
  float32 otherwise)."""
  monkeypatch.setattr(cgn_weights, "np", _Float64Numpy(np))


def _as_float64(tree):
  return jax.tree.map(lambda x: jnp.asarray(x, jnp.float64)
                      if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)


def use_float64(models, monkeypatch):
  """The same step traced in float64 throughout (call under enable_x64).

  The library computes in float32 on purpose: the modules take a compute
  `dtype`, and a few spots cast to float32 explicitly (instance norm,
  BatchNorm statistics, loss inputs, metrics). For this check those casts
  read a `jnp` whose float32 is float64, the modules get dtype float64, and
  VGG16 runs its direct convolutions (the Winograd kernels are float32 by
  construction; test_winograd and test_vgg16 check that path).
  """
  loss_modules = [importlib.import_module(f"{losses.__name__}.{m.name}")
                  for m in pkgutil.iter_modules(losses.__path__)]
  for mod in (cgn_lib, cgn_lib.batchnorm, discriminators, vgg_lib,
              cgn_mnist, *loss_modules):
    if hasattr(mod, "jnp"):
      monkeypatch.setattr(mod, "jnp", _Float64Numpy())
  return dataclasses.replace(
      models, cgn=models.cgn.clone(dtype=jnp.float64),
      disc=models.disc.clone(dtype=jnp.float64),
      vgg=vgg_lib.VGG16(dtype=jnp.float64))


def jax_step(config, cgn_sd, d_sd, vgg_sd, d, monkeypatch, x64=False):
  """The project's `train_step` on injected inputs.

  `x64`: in float64 (`use_float64`; call it under `jax.enable_x64()`).

  Returns:
    (metrics, new train state).
  """
  cfg = cgn_mnist_base.get_config(config)
  models = cgn_mnist.create_models(cfg)
  cast = _as_float64 if x64 else lambda t: t
  if x64:
    models = use_float64(models, monkeypatch)
    float64_converter(monkeypatch)
  if hasattr(models.disc, "dropout_rate"):  # the goldens ran p = 0
    models = dataclasses.replace(models, disc=models.disc.clone(
        dropout_rate=0.0))
  lc = cgn_mnist.LossConfig.from_config(cfg, with_style=True)
  assert lc.jitter is None and not lc.ssim and not lc.edge
  g_vars = cgn_variables(cgn_sd)
  d_vars = disc_variables(d_sd, cfg.disc.type)
  vgg_params = vgg_convert.convert(
      {f"features.{k}": v for k, v in vgg_sd.items()})["params"]
  g_vars, d_vars, vgg_params = cast((g_vars, d_vars, vgg_params))
  vgg_variables = {"params": vgg_params, "frozen": vgg_lib.frozen_variables(
      vgg_params, winograd_convs=False if x64 else None)}
  # The trainer's Adam, behind a transform that keeps the raw gradients in
  # its state, so the test sees them without changing the step.
  tx = optax.chain(_keep_gradients(), cgn_mnist.make_optimizer(cfg))
  state = cgn_mnist.TrainState(
      step=jnp.zeros((), jnp.int32), rng=jax.random.PRNGKey(0),
      g_params=g_vars["params"], g_batch_stats=g_vars["batch_stats"],
      d_params=d_vars["params"], d_batch_stats=d_vars.get("batch_stats", {}),
      g_opt_state=tx.init(g_vars["params"]),
      d_opt_state=tx.init(d_vars["params"]), g_tx=tx, d_tx=tx)

  b = len(d["y_gt"])
  used = {"y_gen": 0, "u": 0, "crops": 0}
  offsets = [np.stack([d[f"crop_{p}_h"], d[f"crop_{p}_w"]], 1)
             for p in ("fg", "bg")]
  randint, normal = jax.random.randint, jax.random.normal

  def fake_randint(key, shape, minval, maxval, *args, **kwargs):
    if tuple(shape) == (b,) and maxval == 10:
      used["y_gen"] += 1
      return jnp.asarray(d["y_gen"], jnp.int32)
    return randint(key, shape, minval, maxval, *args, **kwargs)

  def fake_normal(key, shape=(), *args, **kwargs):
    if tuple(shape) == (b, cfg.model.latent_sz):
      used["u"] += 1
      return cast(jnp.asarray(d["u"]))
    return normal(key, shape, *args, **kwargs)

  def fake_offsets(rng, batch, size):
    del rng
    assert (batch, size) == (b, 32)
    used["crops"] += 1
    return jnp.asarray(offsets[used["crops"] - 1], jnp.int32)

  monkeypatch.setattr(jax.random, "randint", fake_randint)
  monkeypatch.setattr(jax.random, "normal", fake_normal)
  monkeypatch.setattr(cgn_lib, "shuffle_offsets", fake_offsets)
  batch = {"label": jnp.asarray(d["y_gt"], jnp.int32),
           "image": cast(jnp.asarray(d["x_gt"].transpose(0, 2, 3, 1)))}
  step = jax.jit(lambda s, bt, v: cgn_mnist.train_step(
      s, bt, v, models=models, lc=lc, render=lambda x, rng: x["image"]))
  new_state, metrics = step(state, batch, vgg_variables)
  monkeypatch.undo()
  assert used == {"y_gen": 1, "u": 1, "crops": 2}, used
  return jax.device_get(metrics), jax.device_get(new_state)


# ----------------------------------------------------------- comparisons --


def compare_losses(got, want):
  """{name: relative error} of the seven losses (got: JAX metric names)."""
  return {k: abs(float(got[j]) - float(want[k])) / abs(float(want[k]))
          for k, j in LOSS_NAMES.items()}


def compare_trees(got, want):
  """{path: relative error} over every leaf of `want`."""
  flat_want = dict(jax.tree_util.tree_flatten_with_path(want)[0])
  flat_got = dict(jax.tree_util.tree_flatten_with_path(got)[0])
  assert set(flat_got) == set(flat_want)
  return {jax.tree_util.keystr(p): rel_err(flat_got[p], v)
          for p, v in flat_want.items()}


def assert_close(errors, what, tol=TOL):
  worst = max(errors, key=errors.get)
  assert errors[worst] <= tol, (what, worst, errors[worst])


def assert_moved(before, after, what):
  """Guards against a vacuous pass: the step really changed the weights."""
  moved = compare_trees(after, before)
  assert min(moved.values()) > 0 or what == "D batch stats", (what, moved)
  assert max(moved.values()) > 100 * TOL, (what, moved)


def grad_trees(ref, cgn_before, kind):
  """The reference gradients (torch names `grad_g.*`, `grad_d.*`) as ours."""
  g = dict(cgn_before)  # the converter wants the buffers too
  g.update({k[len("grad_g."):]: v for k, v in ref.items()
            if k.startswith("grad_g.")})
  d = {k[len("grad_d."):]: v for k, v in ref.items()
       if k.startswith("grad_d.")}
  return (cgn_variables(g)["params"], disc_variables(d, kind)["params"])


def compare_updated(got, want, grads, noise=NOISE):
  """{path: relative error} of updated parameters where Adam is determined.

  Adam's first step moves each parameter by lr·g/(|g| + 1e-8), i.e. by
  ±lr wherever |g| >> 1e-8: the new value carries only the sign of g.
  Where g is below its own float32 rounding error the sign is noise (the
  same torch code on another torch version flips it), so those elements
  are left out: |g| <= NOISE · max|g| of the tensor, or the whole tensor
  when max|g| <= GRAD_FLOOR (the conv biases feeding train-mode
  BatchNorm, whose gradient is zero in exact arithmetic). Measured: the
  sign flips between torch_baseline and the golden all lie below
  5.5e-4 · max|g|. Exact zeros (embedding rows of absent classes) are
  kept. The gradients themselves are compared separately, per tensor, so
  no element escapes a check. Returns also the number left out.
  """
  flat = lambda t: dict(jax.tree_util.tree_flatten_with_path(t)[0])
  got, want, grads = flat(got), flat(want), flat(grads)
  assert set(got) == set(want) == set(grads)
  errors, skipped = {}, 0
  for path, w in want.items():
    g = np.abs(np.asarray(grads[path]))
    keep = (g > max(noise * g.max(), GRAD_FLOOR)) | (g == 0)
    skipped += int(keep.size - keep.sum())
    if keep.any():
      diff = np.abs(np.asarray(got[path], np.float64) - w)[keep]
      errors[jax.tree_util.keystr(path)] = float(diff.max()
                                                 / np.abs(w).max())
  return errors, skipped


def compare_grads(got, want):
  """{path: max-abs error / scale} per tensor.

  The scale is the tensor's max-abs gradient, but at least GRAD_SCALE times
  that of its mechanism (f_shape, f_text1, f_text2, the label embedding;
  the discriminator as a whole): several gradients here are zero in exact
  arithmetic and float32 cancellation noise in practice (conv biases that
  feed train-mode BatchNorm; BatchNorm scales followed by LeakyReLU and
  InstanceNorm in f_shape, which cancel a positive scale), so their own
  maximum is no scale for their error.
  """
  flat = lambda t: dict(jax.tree_util.tree_flatten_with_path(t)[0])
  got, want = flat(got), flat(want)
  assert set(got) == set(want)
  part = lambda p: jax.tree_util.keystr(p[:1])
  part_max = {}
  for p, w in want.items():
    part_max[part(p)] = max(part_max.get(part(p), 0.0), np.abs(w).max())
  return {jax.tree_util.keystr(p): float(
      np.abs(np.asarray(got[p], np.float64) - w).max()
      / max(np.abs(w).max(), GRAD_SCALE * part_max[part(p)]))
          for p, w in want.items()}


def check_step(config, cgn_before, d_before, cgn_after, d_after, ref,
               metrics, state, tol=TOL, noise=NOISE):
  """Asserts the JAX step's results against a reference iteration.

  Args:
    config: the MNIST variant.
    cgn_before, d_before: the torch state dicts the step started from.
    cgn_after, d_after: the reference's state dicts after the step.
    ref: the reference's losses (`LOSS_NAMES`) and torch_baseline's
      gradients (`grad_g.*`, `grad_d.*`).
    metrics, state: the JAX step's outputs.

  Returns:
    Nothing; prints the worst errors.
  """
  kind = tb.CONFIGS[config]["disc"]
  loss_err = compare_losses(metrics, ref)
  g_grads, d_grads = grad_trees(ref, cgn_before, kind)
  grad_err = compare_grads(state.g_opt_state[0], g_grads)
  grad_err.update({"D" + k: v for k, v in
                   compare_grads(state.d_opt_state[0], d_grads).items()})
  g_want, d_want = cgn_variables(cgn_after), disc_variables(d_after, kind)
  param_err, n_skip_g = compare_updated(state.g_params, g_want["params"],
                                        g_grads, noise)
  d_err, n_skip_d = compare_updated(state.d_params, d_want["params"],
                                    d_grads, noise)
  param_err.update({"D" + k: v for k, v in d_err.items()})
  stats_err = compare_trees(state.g_batch_stats, g_want["batch_stats"])
  if kind == "conv":  # DiscConv's BN running stats after its 3 forwards
    stats_err.update({"D" + k: v for k, v in compare_trees(
        state.d_batch_stats, d_want["batch_stats"]).items()})
  n_params = sum(x.size for x in jax.tree.leaves((g_want["params"],
                                                  d_want["params"])))
  top = lambda e: (max(e, key=e.get), f"{max(e.values()):.1e}")
  worst = {"losses": top(loss_err), "grads": top(grad_err),
           "params": top(param_err), "bn_stats": top(stats_err),
           "left_out": (n_skip_g + n_skip_d, n_params)}
  print(config, worst)
  assert_close(loss_err, f"{config} losses", tol)
  assert n_skip_g + n_skip_d <= MAX_LEFT_OUT * n_params, worst["left_out"]
  assert_moved(cgn_variables(cgn_before)["params"], g_want["params"],
               "G params")
  assert_moved(disc_variables(d_before, kind)["params"], d_want["params"],
               "D params")
  assert_close(grad_err, f"{config} gradients", tol)
  assert_close(param_err, f"{config} updated parameters", tol)
  assert_close(stats_err, f"{config} BatchNorm running statistics", tol)


# ----------------------------------------------------------------- tests --


def golden_case(shared_dir, config, vgg_sd):
  """(weights, golden arrays, torch_baseline's outputs and gradients)."""
  weights, arrays = load_golden(shared_dir, config)
  weights = {k: {n: v.numpy() for n, v in sd.items()}
             for k, sd in weights.items()}
  ref, cgn_after, d_after = torch_iteration(
      config, weights["cgn_before"], weights["d_before"], vgg_sd,
      draws(arrays))
  return weights, arrays, ref, cgn_after, d_after


@pytest.mark.parametrize("config", sorted(GOLDEN))
def test_torch_recreation_matches_upstream_golden(config, shared_dir,
                                                  vgg_state_dict):
  """benchmarks/torch_baseline.py's iteration is upstream's, to float32."""
  w, arrays, ref, cgn_after, d_after = golden_case(shared_dir, config,
                                                   vgg_state_dict)
  out_err = {k: rel_err(ref[k], arrays[k]) for k in (
      "mask", "foreground", "background", "x_gen", "validity",
      "validity_real", "validity_fake", *LOSS_NAMES)}
  assert_close(out_err, f"{config} outputs and losses")
  kind = tb.CONFIGS[config]["disc"]
  g_grads, d_grads = grad_trees(ref, w["cgn_before"], kind)
  g_got, d_got = cgn_variables(cgn_after), disc_variables(d_after, kind)
  g_want = cgn_variables(w["cgn_after"])
  d_want = disc_variables(w["d_after"], kind)
  errors, n_g = compare_updated(g_got["params"], g_want["params"], g_grads)
  d_err, n_d = compare_updated(d_got["params"], d_want["params"], d_grads)
  errors.update({"D" + k: v for k, v in d_err.items()})
  n_params = sum(x.size for x in jax.tree.leaves((g_want["params"],
                                                  d_want["params"])))
  print(config, "torch_baseline vs golden: params", max(errors.values()),
        "left out", n_g + n_d, "of", n_params)
  assert_close(errors, f"{config} updated parameters")
  assert n_g + n_d <= MAX_LEFT_OUT * n_params, (n_g + n_d, n_params)
  stats = compare_trees(g_got["batch_stats"], g_want["batch_stats"])
  if kind == "conv":
    stats.update(compare_trees(d_got["batch_stats"], d_want["batch_stats"]))
  assert_close(stats, f"{config} BatchNorm running statistics")
  for name, v in list(w["cgn_after"].items()) + list(w["d_after"].items()):
    if name.endswith("num_batches_tracked"):
      got = cgn_after.get(name, d_after.get(name))
      np.testing.assert_array_equal(got, v)




@contextlib.contextmanager
def _without_optimizations():
  flag = "jax_disable_most_optimizations"
  old = jax.config.read(flag)
  jax.config.update(flag, True)
  try:
    yield
  finally:
    jax.config.update(flag, old)


def start(shared_dir, config):
  """(G and D state dicts before the step, injected draws) of a config.

  double_colored and wildlife: their goldens' weights, batch and draws.
  Colored (no golden): upstream init (torch seeds 0 and 1, as the goldens),
  the double_colored golden's real batch, fresh draws.
  """
  if config in GOLDEN:
    weights, arrays = load_golden(shared_dir, config)
    return ({n: v.numpy() for n, v in weights["cgn_before"].items()},
            {n: v.numpy() for n, v in weights["d_before"].items()},
            draws(arrays))
  c = tb.CONFIGS[config]
  torch.manual_seed(0)
  cgn = tb.CGN(init_type=c["init_type"], init_gain=c["init_gain"])
  torch.manual_seed(1)
  disc = tb.DiscLin(n_classes=10, ndf=c["ndf"])
  _, arrays = load_golden(shared_dir, "double_colored")
  return ({k: v.numpy().copy() for k, v in cgn.state_dict().items()},
          {k: v.numpy().copy() for k, v in disc.state_dict().items()},
          random_draws(arrays["x_gt"], arrays["y_gt"]))


@pytest.mark.parametrize("config", sorted(tb.CONFIGS))
def test_jax_step_matches_upstream(config, shared_dir, vgg_state_dict,
                                   monkeypatch):
  """The step in float32 as trained, then both sides in float64.

  float32 (Winograd VGG16 on CPU): the seven losses vs the golden
  (colored: vs torch_baseline's iteration, in float64) to TOL.
  float64: losses, every gradient, every updated parameter and the
  BatchNorm statistics vs torch_baseline's iteration in float64, to
  F64_TOL.
  """
  cgn_before, d_before, d = start(shared_dir, config)
  metrics, _ = jax_step(config, cgn_before, d_before, vgg_state_dict, d,
                        monkeypatch)
  if config in GOLDEN:
    want = load_golden(shared_dir, config)[1]
  else:
    want = torch_iteration(config, cgn_before, d_before, vgg_state_dict, d,
                           torch.float64)[0]
  errors = compare_losses(metrics, want)
  print(config, "float32 losses", max(errors.values()))
  assert_close(errors, f"{config} float32 losses")

  # float64 on the first F64_BATCH samples: float64 convolutions are slow
  # on CPU, and the comparison needs no golden (train-mode BatchNorm and
  # the losses still see a batch).
  d = {k: v[:F64_BATCH] for k, v in d.items()}
  ref, cgn_after, d_after = torch_iteration(
      config, cgn_before, d_before, vgg_state_dict, d, torch.float64)

  # XLA's optimisation passes dominate the compile time and change
  # nothing at F64_TOL (in float32 they move loss_g_binary by 4e-5).
  with jax.enable_x64(True), _without_optimizations():
    metrics, state = jax_step(config, cgn_before, d_before, vgg_state_dict,
                              d, monkeypatch, x64=True)
    assert all(x.dtype == np.float64 for x in jax.tree.leaves(
        (state.g_opt_state[0], state.d_opt_state[0])))
    float64_converter(monkeypatch)
    check_step(config, cgn_before, d_before, cgn_after, d_after, ref,
               metrics, state, tol=F64_TOL, noise=F64_NOISE)
