"""The authors' MNIST CGN checkpoints, converted, against golden outputs.

Golden files: ../shared/reference/cgn_mnist_golden_{dataset}.npz (see their
README): the upstream torch CGN in eval mode, three mechanisms on noise `u`
and labels `y`, before the shuffler and the clamp, NCHW.
"""

import pickle

import jax
import numpy as np
import pytest

from cgn_jax import paths
from cgn_jax.models import cgn as cgn_lib
from cgn_jax.models import composer
from converters import __main__ as converters_main
from converters import cgn_mnist
from converters import common

pytestmark = [pytest.mark.torch, pytest.mark.shared]

DATASETS = ("colored_MNIST", "double_colored_MNIST", "wildlife_MNIST")
# From ../shared/reference/README.md.
SHA256 = {
    "colored_MNIST":
        "6b178e7c1924b9efc532c467e7f0b77d2702efb536de9816bbd7e92c26d9b3fe",
    "double_colored_MNIST":
        "7aa06c907f099c63a26127164a38d2ab353f1cdcafabdf8ca9303a0e9197b933",
    "wildlife_MNIST":
        "db5bc3108f7bfbd74a85e2b267e65e95bd918920a02fd8de64c947fd8a0015f0",
}


def _ckpt(dataset):
  return paths.upstream_dir() / f"cgn_{dataset}.pth"


@jax.jit
def _eval(variables, u, y):
  model = cgn_lib.CGN()
  raw = model.apply(variables, u, y, train=False, method="mechanisms")
  x, _ = model.apply(variables, u, y, u, y, u, y, train=False, shuffle=False,
                     method="render")
  return raw, x


@pytest.mark.parametrize("dataset", DATASETS)
def test_parity_with_golden_outputs(dataset, tmp_path):
  out = tmp_path / dataset
  assert converters_main.main(["cgn-mnist", "--input", str(_ckpt(dataset)),
                               "--output", str(out)]) == 0
  variables, meta = cgn_mnist.load_cgn(out, with_metadata=True)
  assert meta["dataset"] == dataset
  assert meta["source_sha256"] == SHA256[dataset]

  golden = np.load(paths.reference_dir() / f"cgn_mnist_golden_{dataset}.npz")
  y = golden["y"].astype(np.int32)
  (premask, fg, bg), x = jax.device_get(_eval(variables, golden["u"], y))
  tol = {"shape_out": 1e-4, "text1_out": 1e-5, "text2_out": 1e-5}
  for got, key in zip((premask, fg, bg), tol):
    want = golden[key].transpose(0, 2, 3, 1)  # NCHW -> NHWC
    err = np.abs(got - want).max()
    print(f"{dataset} {key} max-abs {err:.3g}")
    assert err <= tol[key], f"{dataset} {key}: max-abs {err}"
  # The composite (no shuffler) follows from the golden heads.
  want_x = composer.compose(
      cgn_lib.mask_from_premask(golden["shape_out"].transpose(0, 2, 3, 1)),
      golden["text1_out"].transpose(0, 2, 3, 1),
      golden["text2_out"].transpose(0, 2, 3, 1))
  assert np.abs(x - np.asarray(want_x)).max() <= 1e-4


@pytest.fixture(scope="module")
def state_dict():
  sd = common.load_torch_state_dict(_ckpt("wildlife_MNIST"))
  assert len(sd) == 57
  return sd


def _save(obj, path):
  import torch  # pylint: disable=g-import-not-at-top
  torch.save({k: torch.from_numpy(np.asarray(v)) for k, v in obj.items()},
             path)


def test_missing_key(state_dict, tmp_path):
  sd = dict(state_dict)
  del sd["f_text2.8.running_var"]
  _save(sd, tmp_path / "m.pth")
  with pytest.raises(common.ConversionError,
                     match=r"missing keys \(1\): f_text2.8.running_var"):
    cgn_mnist.convert_file(tmp_path / "m.pth", tmp_path / "out")
  assert not (tmp_path / "out").exists()


def test_wrong_shape_and_unexpected_key(state_dict, tmp_path):
  sd = dict(state_dict)
  sd["f_shape.4.weight"] = np.zeros((16, 64, 3, 3), np.float32)
  sd["f_shape.99.weight"] = np.zeros((2,), np.float32)
  _save(sd, tmp_path / "w.pth")
  with pytest.raises(common.ConversionError) as e:
    cgn_mnist.convert_file(tmp_path / "w.pth", tmp_path / "out")
  msg = str(e.value)
  assert ("mis-shaped keys (1): f_shape.4.weight: checkpoint (16, 64, 3, 3) "
          "vs model (32, 64, 3, 3)") in msg
  assert "unexpected keys (1): f_shape.99.weight" in msg


def test_num_batches_tracked_is_optional(state_dict):
  sd = {k: v for k, v in state_dict.items()
        if not k.endswith("num_batches_tracked")}
  variables = cgn_mnist.convert(sd)
  np.testing.assert_array_equal(
      variables["batch_stats"]["f_shape"]["layers_5"]["var"],
      state_dict["f_shape.5.running_var"])


@pytest.mark.parametrize("content", [
    b"this is a text file, not a checkpoint\n",
    np.random.default_rng(0).bytes(4096),
], ids=["text", "random_bytes"])
def test_not_a_checkpoint(content, tmp_path):
  path = tmp_path / "bad.pth"
  path.write_bytes(content)
  with pytest.raises(common.ConversionError, match="not a readable PyTorch"):
    cgn_mnist.convert_file(path, tmp_path / "out")


class _Payload:
  """An object whose unpickling would run code."""

  def __reduce__(self):
    return (print, ("pickled code ran",))


def test_pickled_code_is_rejected(tmp_path, capsys):
  import torch  # pylint: disable=g-import-not-at-top
  path = tmp_path / "evil.pth"
  torch.save({"label_emb.weight": torch.zeros(10, 10), "x": _Payload()}, path)
  with pytest.raises(common.ConversionError, match="weights_only"):
    cgn_mnist.convert_file(path, tmp_path / "out")
  assert "pickled code ran" not in capsys.readouterr().out
  # A plain pickle (legacy non-zip) with a non-tensor entry is rejected too.
  legacy = tmp_path / "legacy.pth"
  with open(legacy, "wb") as f:
    pickle.dump({"a": 1}, f, protocol=2)
  with pytest.raises(common.ConversionError):
    cgn_mnist.convert_file(legacy, tmp_path / "out")


def test_missing_file(tmp_path):
  with pytest.raises(FileNotFoundError, match="--input"):
    cgn_mnist.convert_file(tmp_path / "nope.pth", tmp_path / "out")


def test_guess_dataset():
  assert cgn_mnist.guess_dataset(
      "x/cgn_double_colored_MNIST/weights/ckp.pth") == "double_colored_MNIST"
  assert cgn_mnist.guess_dataset("cgn_colored_MNIST.pth") == "colored_MNIST"
  assert cgn_mnist.guess_dataset("ckp.pth") is None
