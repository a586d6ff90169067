"""Where the real assets live: one environment variable each, with defaults.

`CGN_SHARED_DIR` points at the project's shared asset folder (default
`../shared` relative to the repository). `CGN_MNIST_DIR` overrides the MNIST
IDX folder alone. Tests that need an asset skip with a reason naming the
variable when it is absent.
"""

import hashlib
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
  """Wildlife-MNIST textures.

  `CGN_TEXTURES_DIR` if set; else the upstream copy in the shared folder when
  it exists; else a per-user cache that `cgn_jax.data.textures` fills on
  first use.
  """
  env = os.environ.get("CGN_TEXTURES_DIR")
  if env:
    return pathlib.Path(env).expanduser().resolve()
  shared = upstream_dir() / "textures"
  if shared.is_dir():
    return shared
  return cache_dir() / "textures"


def cache_dir() -> pathlib.Path:
  """Downloads land here (`CGN_CACHE_DIR`, default ~/.cache/cgn_jax)."""
  env = os.environ.get("CGN_CACHE_DIR")
  return pathlib.Path(env or "~/.cache/cgn_jax").expanduser().resolve()


def reference_dir() -> pathlib.Path:
  """Golden outputs of the authors' models, for converter parity tests."""
  return shared_dir() / "reference"


def sha256(path: os.PathLike | str) -> str:
  """Hex sha256 of a file, read in 1 MiB chunks (checkpoints are large)."""
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      h.update(chunk)
  return h.hexdigest()
