"""Every configs/*.py: imports, documents its command, builds its variants.

Generic over the config files (STYLE habit 2): each must export
`get_config(arg=None)` and give the exact `train.py --config=...` (or
`generate.py --config=...`) command in its docstring; every `:ARG` that its
docstring's commands use must build, and so must its smoke mode.
`common.py` and `*_base.py` are shared helpers, not configs. The MNIST CGN
configs are also checked against the upstream yaml values of SPEC §2.6.
"""

import importlib
import pathlib
import re
import sys

import ml_collections
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
  sys.path.insert(0, str(ROOT))

CONFIG_FILES = sorted(
    p for p in (ROOT / "configs").glob("*.py")
    if p.name not in ("__init__.py", "common.py")
    and not p.stem.endswith("_base"))
COMMAND = re.compile(
    r"(?:train|generate)\.py\s+--config=configs/(\w+)\.py(?::([\w,=.\-]+))?")


def load(path: pathlib.Path):
  return importlib.import_module(f"configs.{path.stem}")


def documented_args(module) -> set[str]:
  """The ':ARG' parts of the commands in the docstring (None: no arg)."""
  doc = module.__doc__ or ""
  return {arg for name, arg in COMMAND.findall(doc)
          if name == module.__name__.rsplit(".", 1)[-1] and arg}


def test_there_are_configs():
  assert CONFIG_FILES, "no configs/*.py found"


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: p.stem)
def test_config_builds_and_documents_its_command(path):
  module = load(path)
  doc = module.__doc__ or ""
  assert re.search(rf"(train|generate)\.py --config=configs/{path.stem}\.py",
                   doc), f"{path.name}: docstring lacks its train.py command"
  # Configs whose ARG is required (e.g. a dataset) document it; the others
  # build without one. Every config has a smoke mode (STYLE habit 3).
  args = sorted(documented_args(module)) or [None]
  args += [f"{a},smoke" if a else "smoke" for a in args
           if "smoke" not in (a or "")]
  for arg in args:
    variant = module.get_config(arg)
    assert isinstance(variant, ml_collections.ConfigDict), arg
    # The locked config that train.py builds still rejects new fields.
    variant.lock()
    with pytest.raises(AttributeError):
      variant.no_such_field_anywhere = 1


# ---------------------------------------------------------- MNIST CGN --

# SPEC §2.6, as upstream ran it (command line over yaml: batch 16, 15
# epochs, sample sheets every 1000 steps).
UPSTREAM = {
    "colored": dict(init_type="orthogonal", init_gain=0.1, disc="linear",
                    ndf=512, mask=0.1, perc=(0.05, 0.1, 0.01, 0.0)),
    "double_colored": dict(init_type="orthogonal", init_gain=0.2,
                           disc="linear", ndf=512, mask=0.3,
                           perc=(0.0, 0.05, 0.0, 0.05)),
    "wildlife": dict(init_type="normal", init_gain=0.03, disc="conv",
                     ndf=32, mask=0.3, perc=(0.01, 0.05, 0.0, 0.01)),
}


@pytest.mark.parametrize("variant", sorted(UPSTREAM))
def test_cgn_mnist_config_has_upstream_values(variant):
  module = importlib.import_module(f"configs.cgn_{variant}_mnist")
  c, up = module.get_config(), UPSTREAM[variant]
  assert c.trainer == "cgn_mnist" and c.dataset == variant
  assert (c.batch_size, c.num_epochs, c.sample_every_steps) == (16, 15, 1000)
  assert (c.model.n_classes, c.model.latent_sz, c.model.ngf,
          c.model.img_sz) == (10, 32, 32, 32)
  assert (c.model.init_type, c.model.init_gain) == (up["init_type"],
                                                    up["init_gain"])
  assert (c.disc.type, c.disc.ndf) == (up["disc"], up["ndf"])
  assert (c.optim.lr, c.optim.b1, c.optim.b2) == (2e-4, 0.5, 0.999)
  assert c.lambdas.mask == up["mask"]
  assert tuple(c.lambdas.perc) == up["perc"]
  assert (c.lambdas.ssim, c.lambdas.edge, c.jitter.enabled) == (0, 0, False)
  assert c.perceptual.vgg16 not in ("random", "none")  # real weights


@pytest.mark.parametrize("variant", sorted(UPSTREAM))
def test_cgn_mnist_config_variants_combine(variant):
  module = importlib.import_module(f"configs.cgn_{variant}_mnist")
  c = module.get_config("smoke,ssim,jitter,edge")
  assert c.num_train_steps > 0 and c.batch_size < 16
  assert c.perceptual.vgg16 == "random"
  assert c.lambdas.ssim > 0 and c.lambdas.edge > 0 and c.jitter.enabled
  # Variants change only their own fields.
  plain = module.get_config("ssim").to_dict()
  base = module.get_config().to_dict()
  changed = {k for k in base if base[k] != plain[k]}
  assert changed == {"lambdas"}
  with pytest.raises(ValueError, match="unknown config argument"):
    module.get_config("smoke,typo")
