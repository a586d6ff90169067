"""A LIME explanation of the ensemble's averaged prediction ([RR]'s figure).

  python -m cgn_jax.experiments.lime --weights DIR --image x.jpg \\
      --out lime.png [--num-samples 1000] [--segments 50]

As the reproduction's `lime_plot.py` (SPEC §7.4): the image is resized to
256x256 (both sides, as its `Resize((256, 256))`) and centre-cropped to 224;
the classifier is the softmax of the ensemble's *avg* logits on ImageNet-
normalised perturbations; the top class of five is explained with 1,000
samples, hidden superpixels black, and the 10 superpixels of largest |weight|
are marked (green: for the class, red: against) with yellow boundaries. The
top-5 classes are printed with their names. The LIME algorithm is this
project's own (cgn_jax.evaluation.lime; its docstring lists what differs from
the `lime` package). `--smoke` uses a random tiny ensemble instead of
--weights.
"""

import argparse
import json
import pathlib
import sys

import numpy as np
from PIL import Image

from cgn_jax import paths
from cgn_jax.data import imagenet
from cgn_jax.data import transforms
from cgn_jax.evaluation import lime
from cgn_jax.evaluation import suite
from cgn_jax.experiments import imagenet_eval


def load_image(path) -> np.ndarray:
  """uint8 [224, 224, 3]: Resize((256, 256)) → CenterCrop(224), as [FA]."""
  img = transforms.load_rgb(path).resize((256, 256), Image.BILINEAR)
  return np.asarray(transforms.center_crop(img, 224))


def softmax(x: np.ndarray) -> np.ndarray:
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def class_names() -> list[str]:
  """The 1000 human-readable names, else the wnids, else the indices."""
  path = (paths.shared_dir() / "data" / "imagenet_meta" /
          "imagenet_class_index.json")
  if path.is_file():
    index = json.loads(path.read_text())
    return [index[str(i)][1] for i in range(1000)]
  return [str(i) for i in range(1000)]


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m cgn_jax.experiments.lime",
                                   description=__doc__.split("\n\n")[0])
  parser.add_argument("--weights", help="converted or trained ensemble dir")
  parser.add_argument("--smoke", action="store_true",
                      help="a random tiny ensemble instead of --weights")
  parser.add_argument("--image", required=True)
  parser.add_argument("--out", required=True, help="PNG to write")
  parser.add_argument("--num-samples", type=int, default=1000)
  parser.add_argument("--segments", type=int, default=50,
                      help="about how many superpixels")
  parser.add_argument("--num-features", type=int, default=10)
  parser.add_argument("--batch-size", type=int, default=50)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)
  if not args.smoke and not args.weights:
    parser.error("give --weights DIR (or --smoke)")
  try:
    image = load_image(args.image)
    if args.smoke:
      model, variables = imagenet_eval.smoke_variables(tiny=True)
    else:
      variables = imagenet_eval.load_variables(args.weights)
      model = imagenet_eval.model_for(variables)
  except (imagenet.DataError, FileNotFoundError, OSError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  apply_fn = suite.make_apply_fn(model, variables)

  def classifier_fn(images):
    return softmax(np.asarray(apply_fn(transforms.normalize(images))["avg"],
                              np.float64))

  exp = lime.explain(classifier_fn, image, num_samples=args.num_samples,
                     batch_size=args.batch_size, seed=args.seed,
                     segments=lime.slic_segments(image, args.segments))
  names = class_names()
  for rank, label in enumerate(exp.top_labels):
    print(f"top-{rank + 1}: {label} {names[label]} "
          f"p={exp.probabilities[label]:.4f} "
          f"(local R² {exp.score[label]:.3f})")
  temp, mask = lime.image_and_mask(exp, image, exp.top_labels[0],
                                   num_features=args.num_features)
  out = lime.mark_boundaries(temp / 255.0, mask)
  path = pathlib.Path(args.out)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(path.name + ".tmp")
  Image.fromarray(np.rint(np.clip(out, 0, 1) * 255).astype(np.uint8)).save(
      tmp, format="PNG")
  tmp.replace(path)
  print(f"wrote {path}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
