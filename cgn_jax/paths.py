"""Where the real assets live: one environment variable each, with defaults.

`CGN_SHARED_DIR` points at the project's shared asset folder (default
`../shared` relative to the repository). `CGN_MNIST_DIR` overrides the MNIST
IDX folder alone. Tests that need an asset skip with a reason naming the
variable when it is absent.
"""

import os
import pathlib

_REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent


def shared_dir() -> pathlib.Path:
  """The shared asset folder (`CGN_SHARED_DIR`, default `<repo>/../shared`)."""
  env = os.environ.get("CGN_SHARED_DIR")
  if env:
    return pathlib.Path(env).expanduser().resolve()
  return (_REPO_ROOT.parent / "shared").resolve()


def mnist_dir() -> pathlib.Path | None:
  """The local MNIST IDX folder (`CGN_MNIST_DIR`), or None to download."""
  env = os.environ.get("CGN_MNIST_DIR")
  return pathlib.Path(env).expanduser().resolve() if env else None


def upstream_dir() -> pathlib.Path:
  """The authors' MNIST CGN checkpoints, configs and textures."""
  return shared_dir() / "data" / "cgn_upstream"


def textures_dir() -> pathlib.Path:
  """Wildlife-MNIST textures (`CGN_TEXTURES_DIR`, else the upstream copy)."""
  env = os.environ.get("CGN_TEXTURES_DIR")
  if env:
    return pathlib.Path(env).expanduser().resolve()
  return upstream_dir() / "textures"


def reference_dir() -> pathlib.Path:
  """Golden outputs of the authors' models, for converter parity tests."""
  return shared_dir() / "reference"
