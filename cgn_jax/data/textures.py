"""The 20 Wildlife-MNIST texture JPEGs: where they are, and fetching them.

Upstream ships them in its repository (`mnists/data/textures`); they are
fetched from the pinned upstream commit on first use when no local copy is
configured, and every file is checked against its sha256.
"""

import pathlib
import urllib.request

from absl import logging

from cgn_jax import paths

UPSTREAM_COMMIT = "335bebdb47e21a617db9c8ebddce07b670330e7c"
URL = ("https://raw.githubusercontent.com/autonomousvision/"
       "counterfactual_generative_networks/{commit}/mnists/data/textures/{name}")

# name -> sha256, from the upstream tree at UPSTREAM_COMMIT.
FILES = {
    "background/0_veined_0066.jpg": "253effebdb863d8fe4254fd9c3df21e36c9222fad2f454639ad8d1e8b87ed96a",
    "background/1_veined_0067.jpg": "67e555623f1fff4a9abda6036e6c76ce6cbcb801ff240e04d8848b475709a4dd",
    "background/2_veined_0073.jpg": "91b3dc279226199de4dc03b56da0ce892e9d3f10b4b5136037f28de906d2276d",
    "background/3_veined_0180.jpg": "9dbe19a8284cd2b6c1bef09928acdbd9ccdf9ded707ddb6358221968165ce458",
    "background/4_veined_0131.jpg": "9e6d2ae36b8755d2a530005b905c2a3f4e1bc94b1535b6fe6e1c553acfc2b54b",
    "background/5_veined_0157.jpg": "7e34b2b445f50c7af9c86262be9af39c3ce43c61d039d8c44a4afba89d077ae1",
    "background/6_veined_0158.jpg": "4f992fd0da74cc53d37c065699a73af9e42c06dc38b2a2f22673452458708ce6",
    "background/7_veined_0104.jpg": "c43441149846718186ab4c01f61c476c96c748c1149defaf5366e2534431954c",
    "background/8_veined_0188.jpg": "d32d40f567ee3f58d421b9e02265ce1c8f0fe1ed91d8dedaa282cdc114161f39",
    "background/9_veined_0189.jpg": "ab3144757372f34153b29ddf1e2e80cbdf6079bb18233b220ad5dda594829d74",
    "object/0_striped_0001.jpg": "41b22c1a1e5edba336302b2ec175fc280647aaae6ebbbbfa9cfc433596305aff",
    "object/1_striped_0091.jpg": "d6020007460a7e41a5d654e1c3b2b2ef8243e44aeede630aaa2947c0aedfddb9",
    "object/2_striped_0008.jpg": "2ab2fc76e9ffd495ddf690a3d0bdf75158fcc2c73fb24c420ca238ce36a87ca0",
    "object/3_striped_0043.jpg": "b9ab6ae10ddb6381a8021305fd41cdf2e575d9a829e2b79b9db218d89ac66537",
    "object/4_striped_0092.jpg": "90e4b7683d348fb6d940abca13be4ad619b379ad9b3e2c96fab9f7d4dc4214ad",
    "object/5_striped_0028.jpg": "b32940be4462eb40879905f13dfa2753d1e4b044904ed6390da6a8d35735d6d2",
    "object/6_striped_0097.jpg": "bd362eefa810a35a24eeffe542a9727c3953ded745fa68e167b68a718b71d731",
    "object/7_striped_0004.jpg": "0943891ac43a4acd5d8a874f121ef862a97a1de000c3fb1d936bbe2c6d027c2a",
    "object/8_striped_0125.jpg": "edfe305c0e8f9dfa9d1576c9a32ab3f29e74ea1e8b5bab91ab4b9b83aec902e2",
    "object/9_striped_0033.jpg": "d22a5fcf1ce2ea648c506d13f31a50eaf2260b903256e40fec32995b531d6933",
}


def is_complete(directory) -> bool:
  """True when every texture file is present (contents are not hashed)."""
  d = pathlib.Path(directory)
  return all((d / name).is_file() for name in FILES)


def download(directory, url: str = URL) -> pathlib.Path:
  """Fetches the missing textures into `directory`, verifying each sha256.

  Raises:
    RuntimeError: a file could not be fetched or has the wrong sha256; the
      message names the file and the fix (CGN_TEXTURES_DIR).
  """
  d = pathlib.Path(directory)
  for name, digest in FILES.items():
    target = d / name
    if target.is_file():
      continue
    target.parent.mkdir(parents=True, exist_ok=True)
    src = url.format(commit=UPSTREAM_COMMIT, name=name)
    tmp = target.with_suffix(".part")
    logging.info("downloading %s", src)
    try:
      urllib.request.urlretrieve(src, tmp)
    except OSError as e:
      raise RuntimeError(
          f"could not download texture {name} from {src} ({e}). Offline, set "
          "CGN_TEXTURES_DIR to a copy of the upstream mnists/data/textures "
          "folder.") from e
    got = paths.sha256(tmp)
    if got != digest:
      tmp.unlink()
      raise RuntimeError(f"texture {name} from {src} has sha256 {got}, "
                         f"expected {digest}")
    tmp.replace(target)
  return d
