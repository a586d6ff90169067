"""Table 1 command and the Inception Score CLI, end to end on random weights."""

import json

import numpy as np
import pytest
from PIL import Image

from cgn_jax.experiments import imagenet_table1
from cgn_jax.experiments import inception_score as is_cli

pytestmark = pytest.mark.usefixtures("fast_compile", "compile_cache")


def test_table1_smoke(tmp_path, capsys):
  assert imagenet_table1.main(["--smoke", "--json",
                               str(tmp_path / "t.json")]) == 0
  out = capsys.readouterr().out
  assert "| all losses |" in out and "| BigGAN (upper bound) |" in out
  assert "| 130.2 | 0.3 | 156.1 | 0.3 |" in out        # paper, [BG]
  assert "| without L_rec | not run |" in out
  rows = json.loads((tmp_path / "t.json").read_text())
  assert set(rows) == {"full", "biggan"}
  assert rows["full"]["num"] == 8 and rows["full"]["splits"] == 2
  assert 0 < rows["full"]["mu_mask"] < 1
  assert rows["full"]["is_mean"] >= 1 - 1e-5


def test_inception_score_cli_cgn(capsys):
  # Same shapes as the smoke table above: its compiled steps are reused.
  assert is_cli.main(["--weights", "random", "--cgn", "random", "--num", "8",
                      "--splits", "2", "--batch-size", "4"]) == 0
  out = capsys.readouterr().out
  assert "over 2 splits of 8 images; µ_mask = " in out


def test_inception_score_cli_images(tmp_path, capsys):
  rng = np.random.default_rng(0)
  for i, size in enumerate([(16, 16), (20, 24), (16, 16), (30, 10),
                            (16, 16)]):
    Image.fromarray(rng.integers(0, 256, size + (3,), dtype=np.uint8)).save(
        tmp_path / f"im{i}.png")
  assert is_cli.main(["--weights", "random", "--images", str(tmp_path),
                      "--splits", "2", "--batch-size", "4"]) == 0
  assert "over 2 splits of 5 images" in capsys.readouterr().out
  # A generate.py dataset directory works the same way.
  from cgn_jax.data import records  # pylint: disable=g-import-not-at-top
  w = records.ShardedWriter(tmp_path / "ds", num=6, shard_size=4,
                            metadata={})
  images = rng.integers(0, 256, (6, 16, 16, 3), dtype=np.uint8)
  for s in range(2):
    a, b = w.shard_range(s)
    w.write_shard(s, records.encode_records(
        a, images[a:b], np.zeros((b - a, 3), int), quality=90))
  assert is_cli.main(["--weights", "random", "--images",
                      str(tmp_path / "ds"), "--num", "5", "--splits", "2",
                      "--batch-size", "4"]) == 0
  assert "over 2 splits of 5 images" in capsys.readouterr().out
  with pytest.raises(FileNotFoundError, match="no"):
    is_cli.main(["--weights", "random", "--images", str(tmp_path / "none")])
