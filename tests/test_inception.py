"""Inception-v3 parity with torchvision's `inception_v3` (SPEC §7.3).

The golden (`classifiers/classifiers_golden.npz`, `inception/logits`) is
torchvision's `inception_v3(aux_logits=True, init_weights=False,
transform_input=False)` in eval mode with formula weights (seed 7070) over
its state-dict order, which `classifiers_config.json` lists; the flat state
dict is rebuilt here from that list without torchvision.
"""

import json

import jax
import numpy as np
import pytest

from cgn_jax import weights
from cgn_jax.models import inception
from converters import common
from converters import inception_v3 as conv_inception

pytestmark = pytest.mark.shared


@pytest.fixture(scope="module")
def golden(shared_dir, formula_weights):
  ref = shared_dir / "reference" / "classifiers"
  with open(ref / "classifiers_config.json") as f:
    config = json.load(f)
  state_dict = formula_weights(
      config["inception_v3_state_keys"], config["inception_seed"])
  data = np.load(ref / "classifiers_golden.npz")
  return (state_dict, data["inception/input_299"], data["inception/logits"])


def test_expected_keys_are_torchvision_state_dict(golden):
  state_dict, _, _ = golden
  want = {k: tuple(v.shape) for k, v in state_dict.items()
          if not k.endswith("num_batches_tracked")}
  assert conv_inception.expected_keys() == want


def test_logits_parity(golden):
  state_dict, x, want = golden
  variables = conv_inception.convert(state_dict)
  model = inception.InceptionV3()
  out = jax.jit(lambda v, a: model.apply(v, a))(variables,
                                                x.transpose(0, 2, 3, 1))
  got = np.asarray(out["logits"])
  err = np.abs(got - want).max() / np.abs(want).max()
  assert err <= 1e-4, f"relative max-abs error {err}"
  assert out["pool"].shape == (2, 2048)


def test_converter_is_strict(golden):
  state_dict, _, _ = golden
  bad = dict(state_dict)
  del bad["fc.bias"]
  bad["extra.weight"] = np.zeros(3, np.float32)
  bad["Mixed_5b.branch1x1.conv.weight"] = np.zeros((1, 1, 1, 1), np.float32)
  with pytest.raises(common.ConversionError) as e:
    conv_inception.convert(bad)
  msg = str(e.value)
  assert "fc.bias" in msg and "extra.weight" in msg
  assert "Mixed_5b.branch1x1.conv.weight" in msg
  no_aux = {k: v for k, v in state_dict.items()
            if not k.startswith("AuxLogits.")}
  with pytest.raises(common.ConversionError, match="aux_logits=False"):
    conv_inception.convert(no_aux)


def test_load_rejects_missing_and_other_models(tmp_path):
  with pytest.raises(FileNotFoundError, match="converters inception-v3"):
    conv_inception.load(tmp_path / "nope")
  common.save_variables(tmp_path / "other", {"params": {"w": np.zeros(2)}},
                        {"model": "vgg16_features"})
  with pytest.raises(weights.WeightsError, match="vgg16_features"):
    conv_inception.load(tmp_path / "other")


@pytest.mark.torch
def test_cli_round_trip(golden, tmp_path):
  import torch  # pylint: disable=g-import-not-at-top
  state_dict, _, _ = golden
  path = tmp_path / "inception_v3_google-test.pth"
  torch.save({k: torch.from_numpy(v) for k, v in state_dict.items()}, path)
  from converters import __main__ as cli  # pylint: disable=g-import-not-at-top
  assert cli.main(["inception-v3", "--input", str(path), "--output",
                   str(tmp_path / "out")]) == 0
  variables, metadata = conv_inception.load(tmp_path / "out")
  assert metadata["model"] == "inception_v3" and len(metadata["sha256"]) == 64
  want = conv_inception.convert(state_dict)
  np.testing.assert_array_equal(
      variables["params"]["fc"]["kernel"], want["params"]["fc"]["kernel"])
