"""Gradient parity of the ImageNet CGN's total loss with upstream (SPEC §4.4).

One upstream training iteration (../shared/reference/cgn_imagenet/): the
converted `cgn_small.pth` in train mode (one spectral-norm power iteration
in f_shape, f_text, f_bg) through the trainer's `fused_forward`, on the
golden u and class, the six losses with the
golden's texture windows injected and VGG16 formula weights (seed 1602), and
the gradient of their sum for each of the 612 trainable tensors against the
golden `grad/*`, as max-abs error / the tensor's max |entry|, and exactly
zero where upstream's is (f_bg's block 11 has a dead ReLU path). One forward
and backward for the whole module.

Tolerances. The issue asks for 1e-4 per tensor. The golden itself is not
that close to the exact gradient: upstream's iteration re-run in float64
(torch, same weights, inputs and windows) differs from the float32 golden by
up to 3.6e-4 (f_shape), 3.9e-4 (f_text) and 1.0e-4 (f_bg), and re-run in
float32 on torch 2.13 by up to 2.1e-4 / 3.8e-4 / 7.8e-5. The style losses
take the L1 of Gram differences, whose signs flip under float32 rounding of
near-tied entries, and f_shape's gradient passes U²-Net's sharpened output,
so any change of summation order moves single tensors by ~1e-4 (this port
through `model.apply` instead of `fused_forward`: 2.4e-4 / 3.9e-4 / 1.0e-4).
Through `model.apply` this port is closer to the float64 gradient
(1.7e-4 / 3.0e-5 / 6.8e-5) than the golden is. Hence: every tensor within
TOL_MAX (the golden's own error plus ours, with margin for other CPUs'
rounding), and the median tensor of each group, which a missing or
misrouted term would move, within the issue's 1e-4.
"""


import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cgn_jax.losses import cgn_imagenet as losses_lib
from cgn_jax.models import imagenet_cgn
from cgn_jax.models import vgg16 as vgg16_lib
from converters import biggan as biggan_convert
from converters import cgn_imagenet as convert
from converters import common

pytestmark = [pytest.mark.torch, pytest.mark.shared,
              pytest.mark.usefixtures("fast_compile")]

TOL_MAX = 1e-3  # every tensor: golden vs float64 3.9e-4 + ours ~2e-4
TOL_MEDIAN = 1e-4  # the median tensor of each group
GROUPS = imagenet_cgn.MECHANISMS  # f_shape, f_text, f_bg
_UPSTREAM = {"f_shape": "f_shape.", "f_text": "f_text.", "f_bg": "f_bg."}


@pytest.fixture(scope="module")
def reference(shared_dir):
  d = shared_dir / "reference" / "cgn_imagenet"
  with np.load(d / "golden.npz") as z:
    golden = {k: z[k] for k in z.files
              if k.startswith("grad/") or k in ("u", "y", "texture_windows")}
  return golden, common.load_torch_state_dict(d / "cgn_small.pth")


@pytest.fixture(scope="module")
def grads(reference, vgg16_formula_variables):
  """d g_loss / d params of f_shape, f_text, f_bg (one forward + backward)."""
  golden, state_dict = reference
  variables, config, variant = convert.convert(state_dict)
  variables = jax.tree.map(jnp.asarray, variables)
  model = imagenet_cgn.from_config(config, variant)
  trainable, frozen = imagenet_cgn.split_trainable(variables["params"])
  vgg_params = jax.tree.map(jnp.asarray,
                            vgg16_formula_variables["params"])
  # The trainer's VGG path: frozen kernels (Winograd on CPU).
  vgg = {"params": vgg_params,
         "frozen": vgg16_lib.frozen_variables(vgg_params)}
  y = int(golden["y"])

  def total_loss(trainable, u, windows):
    v = dict(variables, params={**trainable, **frozen})
    # The trainer's forward (mechanisms scanned, one U²-Net pass); its
    # outputs equal `model.apply(..., train=True)` (tests/test_imagenet_cgn).
    outputs, _ = imagenet_cgn.fused_forward(model, v, u, y, 1.0, train=True)
    total, _ = losses_lib.cgn_imagenet_losses(
        outputs, vgg16_lib.VGG16().apply, vgg,
        losses_lib.DEFAULT_LAMBDAS, texture_windows=windows)
    return total

  g = jax.jit(jax.grad(total_loss))(trainable, jnp.asarray(golden["u"]),
                                    jnp.asarray(golden["texture_windows"]))
  return jax.device_get(g)


def _pairs(reference, grads, group):
  """(upstream name, ours in upstream layout's Flax form, golden) per tensor."""
  golden, state_dict = reference
  prefix = _UPSTREAM[group]
  sub = {k[len(prefix):]: v for k, v in state_dict.items()
         if k.startswith(prefix)}
  out = []
  for key in sorted(k for k in golden if k.startswith("grad/" + prefix)):
    name = key[len("grad/" + prefix):]
    mapped = biggan_convert.map_key(name, golden[key], sub)
    assert mapped is not None and mapped[0] == "params", key
    _, path, want = mapped
    node = grads[group]
    for part in path:
      node = node[part]
    out.append((name, np.asarray(node), np.asarray(want)))
  return out


def test_every_trainable_tensor_has_a_golden_gradient(reference, grads):
  golden, _ = reference
  assert sum(k.startswith("grad/") for k in golden) == 612
  n = sum(len(_pairs(reference, grads, g)) for g in GROUPS)
  assert n == len(jax.tree.leaves(grads)) == 612


@pytest.mark.parametrize("group", GROUPS)
def test_gradient_parity(reference, grads, group):
  errs, bad = [], []
  for name, got, want in _pairs(reference, grads, group):
    assert got.shape == want.shape, name
    scale = np.abs(want).max()
    if scale == 0:
      # Upstream's dead ReLU path (f_bg block 11): ours must be dead too.
      if np.abs(got).max() != 0:
        bad.append(f"{name}: upstream 0, ours max {np.abs(got).max():.3g}")
      continue
    err = np.abs(got - want).max() / scale
    errs.append(err)
    if err > TOL_MAX:
      bad.append(f"{name}: {err:.3g} relative")
  print(f"{group}: gradient error relative to each tensor's max |entry|: "
        f"max {max(errs):.3g}, median {np.median(errs):.3g}")
  assert not bad, "\n".join(bad)
  assert np.median(errs) <= TOL_MEDIAN, np.median(errs)


def test_dead_tensors_are_the_golden_ones(reference, grads):
  golden, _ = reference
  zero_golden = {k for k in golden
                 if k.startswith("grad/") and not np.abs(golden[k]).max()}
  assert len(zero_golden) == 11
  assert all(k.startswith("grad/f_bg.") for k in zero_golden)
  zero_ours = {f"grad/{_UPSTREAM[g]}{name}" for g in GROUPS
               for name, got, _ in _pairs(reference, grads, g)
               if not np.abs(got).max()}
  assert zero_ours == zero_golden
