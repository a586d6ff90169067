"""The ImageNet ensemble trainer: batches, mixing, pretrained init, resume.

Runs `train_and_evaluate` on the smoke config (tiny ResNet, synthetic 32x32
images, real + counterfactual batches): an uninterrupted two-epoch run and
a run stopped after one epoch and resumed must end with bitwise-identical
parameters, optimizer state and metrics on CPU.
"""

import functools

import jax
import numpy as np
import pytest

from cgn_jax.models import ensemble as ensemble_lib
from cgn_jax.train import classifier_imagenet as trainer
from cgn_jax.train import common
from configs import classifier_imagenet as config_lib

pytestmark = pytest.mark.usefixtures("fast_compile")


def _smoke(**overrides):
  c = config_lib.get_config("smoke")
  for k, v in overrides.items():
    c[k] = v
  return c


@pytest.fixture(scope="module")
def programs():
  """The smoke config's jitted functions (4 steps per epoch), built once."""
  c = _smoke()
  return trainer.build_programs(c, c.data.synthetic.num_train // c.batch_size)


# ------------------------------------------------------------------ batches --


def test_batches_mix_real_and_counterfactual():
  real = trainer.SyntheticSource(10, 8, 5, seed=0)
  cf = trainer.SyntheticSource(3, 8, 5, seed=1, counterfactual=True)
  b = trainer.TrainBatches(real, cf, batch=4, cf_batch=2, epochs=3, seed=0)
  assert b.steps_per_epoch == 2 and len(b) == 6  # remainder of 2 dropped
  batch = b[0]
  assert batch["real"]["image"].shape == (4, 8, 8, 3)
  assert batch["real"]["image"].dtype == np.float32
  assert set(batch["cf"]) == {"image", "shape", "texture", "bg"}
  assert batch["cf"]["image"].shape == (2, 8, 8, 3)
  # Random access is deterministic (what makes resume exact).
  again = trainer.TrainBatches(real, cf, 4, 2, 3, seed=0)[0]
  jax.tree.map(np.testing.assert_array_equal, batch, again)

  def epoch_labels(epoch, part, key):
    return np.concatenate([b[epoch * 2 + k][part][key] for k in range(2)])

  # Each epoch: 8 distinct real examples; the 3-image pool is replicated
  # to 4 draws (without replacement from the replicated pool), resampled.
  firsts = [epoch_labels(e, "real", "label") for e in range(3)]
  assert all(len(set(b._real_order(e)[:8])) == 8 for e in range(3))  # pylint: disable=protected-access
  assert not all(np.array_equal(firsts[0], f) for f in firsts[1:])
  for e in range(3):
    counts = np.bincount(b._cf_order(e), minlength=3)  # pylint: disable=protected-access
    assert counts.sum() == 4 and counts.max() <= 2


def test_real_only_batches_and_errors():
  real = trainer.SyntheticSource(8, 8, 5, seed=0)
  b = trainer.TrainBatches(real, None, batch=4, cf_batch=0, epochs=1, seed=0)
  assert set(b[1]) == {"real"}
  with pytest.raises(ValueError, match="cf_ratio=0"):
    trainer.TrainBatches(real, None, batch=4, cf_batch=4, epochs=1, seed=0)
  with pytest.raises(ValueError, match="fewer than one batch"):
    trainer.TrainBatches(real, None, batch=16, cf_batch=0, epochs=1, seed=0)


def test_process_slices_cover_the_global_batch():
  """Each process's rows, in process order, are the one-process batch:
  the same examples with the same augmentation (random flips here)."""
  real = trainer.SyntheticSource(16, 4, 5, seed=0)
  cf = trainer.SyntheticSource(6, 4, 5, seed=1, counterfactual=True)
  for step in range(4):
    full = trainer.TrainBatches(real, cf, 4, 2, 2, seed=0)[step]
    parts = [trainer.TrainBatches(real, cf, 4, 2, 2, 0, i, 2)[step]
             for i in range(2)]
    jax.tree.map(lambda a, *b: np.testing.assert_array_equal(
        np.concatenate(b), a), full, *parts)
  with pytest.raises(ValueError, match="not divisible by the 3 processes"):
    trainer.TrainBatches(real, cf, 4, 2, 2, 0, 0, 3)[0]


# ------------------------------------------------------------------- setup --


def test_pretrained_backbone_is_required_or_loaded(programs):
  c = _smoke()
  model = trainer.create_model(c)
  c.pretrained = ""
  with pytest.raises(ValueError, match="converters resnet50"):
    trainer.initial_variables(c, model, jax.random.PRNGKey(0))
  c.pretrained = "resnet18_dir"
  wrong = {"params": {"conv1": {"kernel": np.zeros((7, 7, 3, 64))}},
           "batch_stats": {}}
  with pytest.raises(ValueError, match="do not fit"):
    trainer.initial_variables(c, model, jax.random.PRNGKey(0),
                              load_resnet50=lambda d: wrong,
                              init=programs.init)
  from converters import resnet50 as convert  # pylint: disable=g-import-not-at-top
  with pytest.raises(FileNotFoundError, match="converters resnet50"):
    convert.load_resnet50("/nonexistent")


def test_pretrained_backbone_replaces_the_random_one(programs):
  """The converted ResNet-50 (fc dropped) becomes the ensemble's backbone."""
  c = _smoke()
  c.pretrained = "fake_dir"
  model = trainer.create_model(c)
  # A converted ResNet of the configured size (ResNet-50 in real runs).
  from cgn_jax.models import resnet  # pylint: disable=g-import-not-at-top
  net = resnet.ResNet(stage_sizes=tuple(c.model.stage_sizes),
                      width=c.model.width, num_classes=c.data.num_classes)
  shapes = jax.eval_shape(functools.partial(resnet.init_variables, net,
                                            image_size=32),
                          jax.random.PRNGKey(0))
  fake = jax.tree.map(lambda s: np.full(s.shape, 0.5, s.dtype), shapes)
  assert "fc" in fake["params"]
  seen = []
  v = trainer.initial_variables(
      c, model, jax.random.PRNGKey(0),
      load_resnet50=lambda d: seen.append(d) or fake, init=programs.init)
  assert seen == ["fake_dir"]
  for coll in ("params", "batch_stats"):
    assert "fc" not in v[coll]["backbone"]
    for leaf in jax.tree.leaves(v[coll]["backbone"]):
      assert np.all(np.asarray(leaf) == 0.5)
  heads = [f"m_{h}_1" for h in ensemble_lib.HEADS]
  assert set(v["params"]) == {"backbone", *heads}
  assert float(np.abs(v["params"]["m_shape_1"]["kernel"]).max()) > 0


# ----------------------------------------------------------- train + resume --


def _final_state(config, workdir):
  model = trainer.create_model(config)
  spe = config.data.synthetic.num_train // config.batch_size
  tx = trainer.make_optimizer(config, spe)
  mesh = common.make_mesh()
  ckpt = common.Checkpointer(workdir)
  state, _ = ckpt.restore(trainer.abstract_state(config, model, tx, mesh))
  ckpt.close()
  return jax.device_get(state)


def test_train_resumes_bitwise(programs, tmp_path):
  straight = tmp_path / "straight"
  res = trainer.train_and_evaluate(_smoke(), straight, programs=programs)
  assert [r["epoch"] for r in res["epochs"]] == [1, 2]
  first = res["epochs"][0]
  for key in ("train/loss_real", "train/loss_cf", "train/acc1_shape",
              "acc1/1_real", "acc5/1_real", "acc1/bg", "lr"):
    assert np.isfinite(first[key]), key
  # lr x0.1 after every epoch in smoke (every 15 in the real configs).
  assert res["epochs"][1]["lr"] == pytest.approx(first["lr"] * 0.1)
  assert (straight / "best" / "ckpt").is_dir()
  assert (straight / "metrics.jsonl").is_file()

  resumed = tmp_path / "resumed"
  trainer.train_and_evaluate(_smoke(epochs=1), resumed, programs=programs)
  res2 = trainer.train_and_evaluate(_smoke(), resumed, programs=programs)
  assert res2["epochs"] == res["epochs"]
  a, b = _final_state(_smoke(), straight), _final_state(_smoke(), resumed)
  assert int(a.step) == int(b.step) == 8
  jax.tree.map(np.testing.assert_array_equal, a, b)


def test_programs_of_another_config_are_refused(programs, tmp_path):
  with pytest.raises(ValueError, match="built for another configuration"):
    trainer.train_and_evaluate(_smoke(learning_rate=0.5), tmp_path,
                               programs=programs)


def test_real_only_baseline_runs(programs, tmp_path):
  # The same programs: cf_ratio changes shapes only, not what is compiled in.
  res = trainer.train_and_evaluate(_smoke(epochs=1, cf_ratio=0.0), tmp_path,
                                   programs=programs)
  record = res["epochs"][0]
  assert "train/loss_cf" not in record and np.isfinite(
      record["train/loss_real"])


# ------------------------------------------------- tiny ImageFolder + suite --


def _write_jpegs(folder, n, seed, size=(40, 30)):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  folder.mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(seed)
  for i in range(n):
    x = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(x).save(folder / f"img_{i:03d}.JPEG", format="JPEG")


def _write_counterfactuals(root, split, n, num_classes, seed):
  """Upstream's layout: {split}_run/labels.csv + ims/{name}_x_gen.jpg."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  sub = root / f"{split}_run0"
  (sub / "ims").mkdir(parents=True)
  rng = np.random.default_rng(seed)
  lines = [",im_name,shape_cls,texture_cls,bg_cls"]
  for i in range(n):
    name = f"RUN_{i:07d}"
    Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(
        sub / "ims" / f"{name}_x_gen.jpg")
    y = rng.integers(0, num_classes, 3)
    lines.append(f",{name},{y[0]},{y[1]},{y[2]}")
  (sub / "labels.csv").write_text("\n".join(lines) + "\n")


def test_real_and_counterfactual_step_on_an_image_folder(programs, tmp_path):
  """ImageFolder + counterfactual JPEGs through the torchvision transforms
  (cgn_jax/data), one epoch, then the evaluation suite (ImageNet val and
  counterfactual val; shape bias and IN-9 skipped: no data given)."""
  data = tmp_path / "imagenet"
  # Class indices 0, 1, 2; 16 training images: the smoke config's 4 steps
  # per epoch, so the module's programs serve (the data source is not
  # compiled in).
  for c, (name, n) in enumerate((("ant", 6), ("bee", 5), ("cat", 5))):
    _write_jpegs(data / "train" / name, n, seed=c)
    _write_jpegs(data / "val" / name, 1, seed=10 + c)
  cf = tmp_path / "counterfactuals"
  _write_counterfactuals(cf, "train", 6, 10, seed=0)
  _write_counterfactuals(cf, "val", 3, 10, seed=1)
  c = _smoke(epochs=1)
  c.data.source, c.data.root, c.data.counterfactuals = ("imagefolder",
                                                        str(data), str(cf))
  c.eval.suite = True
  c.eval.before_training = True
  c.eval_batch_size = 2
  res = trainer.train_and_evaluate(c, tmp_path / "run", programs=programs)
  assert res["before_training"]["imagenet_val/num_images"] == 3
  record = res["epochs"][0]
  assert record["step"] == 4  # 16 real images, batch 4
  assert np.isfinite(record["train/loss_cf"])
  assert record["imagenet_val/num_images"] == 3
  assert record["counterfactual_val/num_images"] == 3
  for key in ("acc1/1_real", "counterfactual_val/shape/top1",
              "counterfactual_val/bg/top5"):
    assert 0 <= record[key] <= 100, key
  assert (tmp_path / "run" / "best" / "ckpt").is_dir()
