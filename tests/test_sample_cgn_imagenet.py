"""Interpolation sheets / GIFs / grids of `python -m cgn_jax.sample cgn-imagenet`."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from cgn_jax.counterfactuals import imagenet as cf
from cgn_jax.sample import __main__ as sample_cli
from cgn_jax.sample import cgn_imagenet as sample_lib

pytestmark = pytest.mark.usefixtures("fast_compile")

CLASSES, TARGET, MIDPOINTS = (207, 933, 970), 1, 6


def test_u_fixed_is_upstream_noise(shared_dir):
  np.testing.assert_allclose(cf.fixed_noise()[0, :4],
                             [0.294378, 0.075440, 0.041523, 0.212331],
                             atol=1e-6)
  assert cf.fixed_noise().shape == (1, 128)
  pth = shared_dir / "data" / "cgn_upstream" / "u_fixed.pth"
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    pytest.skip("torch not installed")
  want = torch.load(pth, weights_only=True).numpy()
  np.testing.assert_array_equal(cf.fixed_noise(), want)


def test_class_vectors_blend_only_the_chosen_mechanism():
  v = cf.interpolation_class_vectors(CLASSES, "text", TARGET, 2)
  assert all(x.shape == (4, 1000) for x in v)
  np.testing.assert_array_equal(v[0][:, 207], 1)
  np.testing.assert_allclose(v[1][:, 933], [1, 2 / 3, 1 / 3, 0], atol=1e-7)
  np.testing.assert_allclose(v[1][:, TARGET], [0, 1 / 3, 2 / 3, 1],
                             atol=1e-7)
  np.testing.assert_allclose(v[1].sum(1), 1, rtol=1e-6)
  v = cf.interpolation_class_vectors(CLASSES, "all", TARGET, 0)
  assert all(x[-1, TARGET] == 1 for x in v)


def test_cli_sheet_gif_and_endpoints(tmp_path):
  sheet, gif = tmp_path / "sheet.png", tmp_path / "anim.gif"
  assert sample_cli.main([
      "cgn-imagenet", "--weights", "random", "--classes",
      *map(str, CLASSES), "--interp", "shape", "--interp-class",
      str(TARGET), "--midpoints", str(MIDPOINTS), "--out", str(sheet),
      "--gif", str(gif)]) == 0
  with Image.open(gif) as im:
    assert im.n_frames == MIDPOINTS + 2
    assert im.size == (2 * 32, 32)           # x_gen beside the mask
  with Image.open(sheet) as im:
    assert im.size == (2 + 8 * 34, 2 + 2 * 34)  # 8 frames, 2 rows

  # The ends equal the plain three-class forward of the end classes.
  model, variables, _ = cf.load_cgn("random")
  res = cf.interpolate(model, variables, CLASSES, interp="shape",
                       target=TARGET, midpoints=MIDPOINTS)  # compiled above
  u = jnp.repeat(jnp.asarray(cf.fixed_noise()), 2, axis=0)
  ys = (jnp.array([CLASSES[0], TARGET]), jnp.array([CLASSES[1]] * 2),
        jnp.array([CLASSES[2]] * 2))
  plain = jax.jit(lambda v, u, ys: model.apply(v, u, ys, 0.3))(
      variables, u, ys)
  for k in ("x_gen", "mask", "foreground", "background"):
    np.testing.assert_allclose(res[k][[0, -1]], plain[k], atol=1e-5,
                               err_msg=k)
  # The interpolated mechanism changed the mask by far more than the 1e-5
  # the ends are checked to (random smoke BigGANs with settled spectral
  # norms depend on the class only mildly: ~4e-3 here).
  assert np.abs(res["mask"][0] - res["mask"][-1]).max() > 1e-3
  np.testing.assert_array_equal(res["foreground"][0], res["foreground"][-1])


def test_cli_grid(tmp_path):
  out = tmp_path / "grid.png"
  # Two classes: 2 x 4 = 8 images, the interpolation's compiled shape.
  assert sample_cli.main(["cgn-imagenet", "--weights", "random", "--classes",
                          "207", "933", "--out", str(out)]) == 0
  with Image.open(out) as im:
    assert im.size == (2 + 4 * 34, 2 + 2 * 34)


def test_noise_files(tmp_path):
  np.save(tmp_path / "u.npy", np.ones((1, 128), np.float32))
  assert sample_lib.load_noise(tmp_path / "u.npy").shape == (1, 128)
  np.savetxt(tmp_path / "u.txt", np.zeros(128))
  assert sample_lib.load_noise(tmp_path / "u.txt").shape == (1, 128)
  with pytest.raises(ValueError, match="np.save"):
    (tmp_path / "u.pth").write_bytes(b"x")
    sample_lib.load_noise(tmp_path / "u.pth")
