"""The evaluation suite's plumbing with a stub model on synthetic folders."""

import json

import numpy as np
from PIL import Image
import pytest

from cgn_jax.data import transforms as T
from cgn_jax.evaluation import accuracy
from cgn_jax.evaluation import suite
from cgn_jax.experiments import imagenet_eval

pytestmark = pytest.mark.shared

WNIDS = {"n01440764": 0, "n01443537": 1, "n15075141": 999}


def _png(path, idx, k):
  # (class // 256, class % 256, outcome k) in every pixel; constant images
  # survive Resize/CenterCrop unchanged, so the stub can read them back.
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(np.full((40, 50, 3), (idx // 256, idx % 256, k),
                          np.uint8)).save(path)


def _read(images):
  v = (images[:, 0, 0] * np.float32(T.IMAGENET_STD) +
       np.float32(T.IMAGENET_MEAN)) * 255
  v = np.rint(v).astype(int)
  # real photos (the cue-conflict sample) decode to arbitrary classes
  return (v[:, 0] * 256 + v[:, 1]) % 1000, np.clip(v[:, 2], 0, 2)


def stub_apply(images):
  """k=0: top-1 right; k=1: right class second (top-5 hit); k=2: neither."""
  cls, k = _read(images)
  n = len(images)
  x = np.zeros((n, 1000), np.float32)
  rows = np.arange(n)
  x[rows, (cls + 1) % 1000] = np.where(k == 0, 0, 10)
  x[rows, (cls + 2) % 1000] = np.where(k == 2, 9, 0)
  for j in range(3, 8):
    x[rows, (cls + j) % 1000] = np.where(k == 2, 8, 0)
  x[rows, cls] = np.where(k == 0, 10, np.where(k == 1, 5, -1))
  out = {name: x for name in accuracy.OUTPUTS}
  out["bg"] = np.zeros_like(x)  # the background head is always wrong
  out["bg"][rows, (cls + 500) % 1000] = 1
  return out


@pytest.fixture
def data(tmp_path):
  val = tmp_path / "imagenet" / "val"
  outcomes = [0, 0, 1, 2, 0, 1, 0]  # 4 top-1, 6 top-5 of 7
  wnids = list(WNIDS)
  for i, k in enumerate(outcomes):
    w = wnids[i % 3]
    _png(val / w / f"{i}.png", WNIDS[w], k)
  cf = tmp_path / "cf" / "val_0"
  rows = [",im_name,shape_cls,texture_cls,bg_cls"]
  for i, k in enumerate([0, 1, 2]):
    name = f"R_{i:07d}"
    _png(cf / "ims" / f"{name}_x_gen.jpg.png", 5 + i, k)
    (cf / "ims" / f"{name}_x_gen.jpg.png").rename(
        cf / "ims" / f"{name}_x_gen.jpg")
    rows.append(f",{name},{5 + i},{5 + i},{5 + i}")
  (cf / "labels.csv").write_text("\n".join(rows) + "\n")
  return tmp_path, outcomes


def test_suite_runs_given_parts_and_skips_the_rest(data, shared_dir):
  root, outcomes = data
  logs = []
  res = suite.run_suite(
      stub_apply, {"imagenet_val": root / "imagenet",
                   "counterfactual_val": root / "cf",
                   "shape_bias": shared_dir / "data" / "cue_conflict_sample",
                   "in9": root / "no_in9"},
      batch_size=4, log=logs.append)
  val = res["imagenet_val"]
  assert val["num_images"] == 7
  assert val["top1"] == pytest.approx(100 * 4 / 7)
  assert val["top5"] == pytest.approx(100 * 6 / 7)
  cf = res["counterfactual_val"]
  assert cf["num_images"] == 3
  assert cf["shape"]["top1"] == pytest.approx(100 / 3)
  assert cf["texture"]["top5"] == pytest.approx(200 / 3)
  assert cf["bg"]["top1"] == 0
  assert set(res["shape_bias"]) >= {"shape", "texture", "bg"}
  assert "not comparable" in res["shape_bias"]["note"]
  assert "backgrounds_challenge" in res["skipped"]["in9"]
  assert any(line.startswith("[skip] in9") for line in logs)
  md = imagenet_eval.markdown(res, "stub")
  assert "| **stub** |" in md and "| paper: IN + CGN | 94.2 |" in md
  assert "54.80" in md  # the paper's shape head
  assert f"{100 * 4 / 7:.2f}" in md


def test_nothing_given_skips_everything():
  res = suite.run_suite(stub_apply, {}, log=lambda _: None)
  assert set(res["skipped"]) == set(suite.PARTS)
  assert "image-net.org" in res["skipped"]["imagenet_val"]
  assert "texture-vs-shape" in res["skipped"]["shape_bias"]
  md = imagenet_eval.markdown(res)
  assert "Skipped:" in md


def test_cli_writes_json_and_markdown(data, tmp_path, monkeypatch):
  root, _ = data
  monkeypatch.setattr(imagenet_eval, "smoke_variables",
                      lambda tiny: (None, None))
  monkeypatch.setattr(suite, "make_apply_fn",
                      lambda model, variables: stub_apply)
  out = tmp_path / "out" / "results.json"
  assert imagenet_eval.main(["--smoke", "--imagenet-val",
                             str(root / "imagenet" / "val"),
                             "--out", str(out), "--batch-size", "3"]) == 0
  res = json.loads(out.read_text())
  assert res["imagenet_val"]["num_images"] == 7
  assert "counterfactual_val" in res["skipped"]
  assert "Table 4" in out.with_suffix(".md").read_text()


def test_missing_weights_is_a_clear_error(tmp_path, capsys):
  assert imagenet_eval.main(["--weights", str(tmp_path),
                             "--out", str(tmp_path / "r.json")]) == 2
  assert "converters invariant-ensemble" in capsys.readouterr().err


@pytest.mark.usefixtures("fast_compile")
def test_saved_ensemble_round_trips_through_the_loader(tmp_path):
  # A tiny ensemble saved the way the converter and the trainer save it is
  # rebuilt with the right sizes and gives the same five outputs.
  pytest.importorskip("cgn_jax.models.ensemble")
  import jax  # pylint: disable=g-import-not-at-top
  from converters import common  # pylint: disable=g-import-not-at-top
  model, variables = imagenet_eval.smoke_variables(tiny=True)
  common.save_variables(tmp_path / "w" / "best", jax.device_get(variables),
                        {"model": "invariant_ensemble"})
  loaded = imagenet_eval.load_variables(tmp_path / "w")  # a workdir
  rebuilt = imagenet_eval.model_for(loaded)
  assert rebuilt.stage_sizes == (1, 1, 1, 1) and rebuilt.width == 8
  x = np.random.default_rng(0).standard_normal((2, 64, 64, 3), np.float32)
  want = suite.make_apply_fn(model, variables)(x)
  got = suite.make_apply_fn(rebuilt, loaded)(x)
  for k in accuracy.OUTPUTS:
    np.testing.assert_array_equal(got[k], want[k])
