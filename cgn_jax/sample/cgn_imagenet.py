"""Interpolation sheets, GIFs and counterfactual grids from an ImageNet CGN.

  python -m cgn_jax.sample cgn-imagenet --weights DIR --classes 207 933 970 \\
      --interp all --interp-class 1 --midpoints 6 --out sheet.png \\
      --gif anim.gif
  python -m cgn_jax.sample cgn-imagenet --weights DIR --classes 207 933 970 \\
      --out grid.png

With `--interp {all,shape,text,bg}` (upstream `generate_data.py --interp`,
SPEC §5): the classes are (shape, texture, background); the chosen
mechanism(s) move from their class to `--interp-class` (-1: a random class
from `--seed`) over midpoints + 2 frames of soft one-hot class vectors, with
one noise vector for every frame. The sheet's first row is x_gen; for a
single mechanism a second row shows that mechanism's own output (mask,
foreground or background), as upstream's `{name}_{mode}_interp.jpg`. The
GIF has one frame per step (x_gen, beside the mechanism's output).

Without `--interp`: a counterfactual grid of every (shape, texture,
background) combination of the given classes; row i has shape class i,
column j * n + k texture class j and background class k.

Noise: `--noise FILE` (.npy or whitespace-separated text, 128 values),
default upstream's `imagenet/data/u_fixed.pth` (shipped as
`cgn_jax.counterfactuals.imagenet.U_FIXED`; convert another .pth with
`np.save(f, torch.load(p).numpy())`). The default truncation 0.3 is the
README's interpolation example (u_fixed was drawn at about 0.3, SPEC §4.6).
Images map [-1, 1] -> [0, 255]; masks [0, 1] -> [0, 255] (upstream
min-max-normalises each sheet instead).
"""

import pathlib

import numpy as np

from cgn_jax.counterfactuals import imagenet as cf


def load_noise(path) -> np.ndarray:
  """A [1, 128] float32 noise vector from .npy / .npz (one array) / text."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"noise file {path} does not exist")
  if path.suffix in (".pth", ".pt"):
    raise ValueError(f"{path}: PyTorch files are not read here; convert it "
                     "once with `np.save('u.npy', torch.load(p).numpy())`")
  if path.suffix == ".npy":
    u = np.load(path)
  elif path.suffix == ".npz":
    with np.load(path) as z:
      if len(z.files) != 1:
        raise ValueError(f"{path} holds {z.files}; expected one array")
      u = z[z.files[0]]
  else:
    u = np.loadtxt(path)
  u = np.asarray(u, np.float32).reshape(1, -1)
  return u


def _to_uint8(x) -> np.ndarray:
  return np.round(np.clip((np.asarray(x) + 1) * 127.5, 0, 255)).astype(
      np.uint8)


def interpolation_frames(result: dict, interp: str) -> np.ndarray:
  """uint8 GIF frames [F, H, W', 3]: x_gen, beside the mechanism's output."""
  x = _to_uint8(result["x_gen"])
  if interp == "all":
    return x
  other = result["out"]
  other = _to_uint8(other * 2 - 1 if interp == "shape" else other)
  return np.concatenate([x, other], axis=2)


def sheet_images(result: dict, interp: str) -> np.ndarray:
  """[-1, 1] images of the sheet, row-major (x_gen row, then the IM's)."""
  rows = [result["x_gen"]]
  if interp != "all":
    out = result["out"]
    rows.append(out * 2 - 1 if interp == "shape" else out)
  return np.concatenate(rows)


def save_gif(path, frames: np.ndarray, duration_ms: int = 250) -> None:
  from PIL import Image  # pylint: disable=g-import-not-at-top
  images = [Image.fromarray(f) for f in frames]
  pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
  images[0].save(path, save_all=True, append_images=images[1:],
                 duration=duration_ms, loop=0)


def add_arguments(parser) -> None:
  parser.add_argument("--weights", required=True,
                      help="directory written by `python -m converters "
                      "cgn-imagenet` ('random': tiny random CGN, smoke)")
  parser.add_argument("--classes", type=int, nargs="+", required=True,
                      help="with --interp: shape, texture, background; "
                      "without: the classes of the grid")
  parser.add_argument("--interp", choices=cf.INTERP_MODES, default=None)
  parser.add_argument("--interp-class", type=int, default=-1,
                      help="class to interpolate to (-1: random from --seed)")
  parser.add_argument("--midpoints", type=int, default=6)
  parser.add_argument("--noise", default=None,
                      help="noise file (.npy/.txt, 128 values); default: "
                      "upstream's u_fixed")
  parser.add_argument("--truncation", type=float, default=0.3)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--dtype", default="float32",
                      choices=("float32", "bfloat16"))
  parser.add_argument("--out", default="sheet.png")
  parser.add_argument("--gif", default=None, help="also write an animation")


def run(args) -> int:
  from cgn_jax.train import common  # pylint: disable=g-import-not-at-top
  u = None if args.noise is None else load_noise(args.noise)
  model, variables, _ = cf.load_cgn(args.weights, args.dtype)
  if args.interp is None:
    if args.gif:
      raise SystemExit("--gif needs --interp")
    grid = cf.counterfactual_grid(model, variables, args.classes, u=u,
                                  truncation=args.truncation)
    n = len(args.classes)
    common.save_image_grid(args.out, grid.reshape((-1,) + grid.shape[2:]),
                           nrow=n * n)
    print(f"wrote {args.out}: {n} shape rows x {n * n} (texture, background) "
          "columns")
    return 0
  if len(args.classes) != 3:
    raise SystemExit("--interp needs three --classes: shape texture "
                     "background")
  target = args.interp_class
  if target == -1:
    target = int(np.random.default_rng(args.seed).integers(0, 1000))
  result = cf.interpolate(model, variables, args.classes, interp=args.interp,
                          target=target, midpoints=args.midpoints, u=u,
                          truncation=args.truncation)
  frames = args.midpoints + 2
  common.save_image_grid(args.out, sheet_images(result, args.interp),
                         nrow=frames)
  if args.gif:
    save_gif(args.gif, interpolation_frames(result, args.interp))
  print(f"wrote {args.out}{' and ' + args.gif if args.gif else ''}: "
        f"{args.interp} from {args.classes} to class {target}, {frames} "
        "frames")
  return 0
