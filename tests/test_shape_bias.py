"""The cue-conflict shape-bias metric against reference/shape_bias/."""

import ast
import hashlib

import numpy as np
import pytest

from cgn_jax.data import imagenet
from cgn_jax.evaluation import shape_bias as sb

pytestmark = pytest.mark.shared


@pytest.fixture(scope="module")
def golden(shared_dir):
  z = np.load(shared_dir / "reference" / "shape_bias" /
              "shape_bias_golden.npz")
  return {k: z[k] for k in z.files}


def _index(names):
  where = {c: i for i, c in enumerate(sb.CATEGORIES)}
  return np.asarray([where[str(n)] for n in names])


def test_category_indices_equal_upstream(shared_dir):
  # Read human_categories.py's `<category>_indices` lists without running it.
  src = (shared_dir / "reference" / "upstream_cgn" / "utils" /
         "eval_shape_bias" / "human_categories.py").read_text()
  found = {}
  for node in ast.walk(ast.parse(src)):
    if (isinstance(node, ast.Assign) and len(node.targets) == 1
        and isinstance(node.targets[0], ast.Name)
        and node.targets[0].id.endswith("_indices")):
      found[node.targets[0].id[:-len("_indices")]] = ast.literal_eval(
          node.value)
  assert found == sb.CATEGORY_INDICES
  assert list(sb.CATEGORIES) == sorted(found)
  assert len(sb.CATEGORY_INDICES["dog"]) == 109
  assert len(sb.CATEGORY_INDICES["bird"]) == 49


def test_names_parse_as_upstream(golden):
  parsed = [sb.parse_name(p) for p in golden["paths"]]
  np.testing.assert_array_equal([s for s, _ in parsed], golden["shape_labels"])
  np.testing.assert_array_equal([t for _, t in parsed],
                                golden["texture_labels"])
  np.testing.assert_array_equal([s != t for s, t in parsed], golden["kept"])
  assert golden["kept"].sum() == 1200
  with pytest.raises(ValueError, match="not a cue-conflict"):
    sb.parse_name("zebra1-cat2.png")


def test_golden_logits_reproduce_every_decision(golden):
  got = np.asarray(sb.CATEGORIES)[sb.decisions(golden["logits"])]
  np.testing.assert_array_equal(got, golden["decisions"])  # all 1,280
  res = sb.shape_bias(sb.decisions(golden["logits"]),
                      _index(golden["shape_labels"]),
                      _index(golden["texture_labels"]))
  assert res["num_images"] == 1200
  assert (res["shape_hits"], res["texture_hits"]) == (63, 75)
  assert res["shape_bias"] == pytest.approx(float(golden["shape_bias"]),
                                            abs=0, rel=1e-15)
  assert res["shape_bias"] == pytest.approx(0.45652173913043476)


def test_geirhos_resnet50_csv(shared_dir):
  res = sb.geirhos_csv_shape_bias(
      shared_dir / "reference" / "shape_bias" /
      "geirhos_resnet50_decisions.csv")
  assert (res["shape_hits"], res["texture_hits"]) == (162, 572)
  assert round(res["shape_bias"], 4) == 0.2207


def test_no_hits_is_zero():
  assert sb.shape_bias([0, 0], [1, 2], [3, 4])["shape_bias"] == 0.0


def test_sample_stimuli_load_and_parse(shared_dir):
  root = shared_dir / "data" / "cue_conflict_sample"
  sums = dict(line.split()[::-1] for line in
              (root / "SHA256SUMS").read_text().splitlines())
  assert len(sums) == 1280
  listed = sb.list_stimuli(root)
  assert len(listed) == 32  # two per category
  assert {s for _, s, _ in listed} == set(sb.CATEGORIES)
  all_files = (root / "ALL_FILES.txt").read_text().split()
  for rel, shape, texture in listed:
    assert rel in all_files
    assert hashlib.sha256((root / rel).read_bytes()).hexdigest() == sums[rel]
    assert rel.split("/")[0] == shape and shape in sb.CATEGORIES
    assert texture in sb.CATEGORIES
  src = sb.stimulus_source(root)
  kept = [r for r in listed if r[1] != r[2]]
  assert len(src) == len(kept)
  batch = next(imagenet.batches(imagenet.eval_dataset(src, len(src))))
  assert batch["image"].shape == (len(src), 224, 224, 3)
  assert batch["mask"].all()


def test_evaluate_with_a_stub_model(shared_dir):
  # A stub whose every head puts all mass on the stimulus' shape category
  # (read back from the image's batch position) gives shape bias 1; a head
  # that votes texture gives 0.
  root = shared_dir / "data" / "cue_conflict_sample"
  src = sb.stimulus_source(root)
  shapes = src.labels["shape_label"]
  textures = src.labels["texture_label"]
  calls = iter([(shapes, textures)])

  def apply_fn(images):
    s, t = next(calls)
    n = len(images)
    def onehot(cats):
      x = np.full((n, 1000), -30.0, np.float32)
      for i, c in enumerate(cats[:n]):
        x[i, sb.CATEGORY_INDICES[sb.CATEGORIES[c]]] = 30.0
      return x
    out = {k: onehot(s) for k in ("shape", "avg", "shape_texture")}
    out["texture"] = onehot(t)
    out["bg"] = np.zeros((n, 1000), np.float32)
    return out

  ds = imagenet.eval_dataset(src, 64)
  res = sb.evaluate(apply_fn, imagenet.batches(ds))
  assert res["shape"]["shape_bias"] == 1.0
  assert res["texture"]["shape_bias"] == 0.0
  assert res["shape"]["num_images"] == len(src)
