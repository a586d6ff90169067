"""The paper's ImageNet evaluation suite (Tables 3 and 4) with one command.

  python -m cgn_jax.experiments.imagenet_eval --weights DIR \\
      [--imagenet-val DIR] [--cue-conflict DIR] [--in9 DIR] \\
      [--counterfactuals DIR] --out results.json

Scores the invariant classifier ensemble (SPEC §6.3):
* ImageNet validation top-1 / top-5 of the averaged logits (`--imagenet-val`:
  an ImageFolder `val/` of wnid folders, or `tfds` for a prepared TFDS
  imagenet2012 in CGN_TFDS_DIR);
* counterfactual validation top-1 / top-5 of each head against its label
  (`--counterfactuals`: a counterfactual dataset with val* data);
* shape bias of each head on the 1,200 conflicting cue-conflict stimuli
  (`--cue-conflict`: texture-vs-shape/stimuli/style-transfer-preprocessed-
  512);
* the backgrounds challenge: IN-9 (`original`), Mixed-Same, Mixed-Rand of
  every prediction and BG-Gap on shape_texture (`--in9`: the unpacked
  MadryLab release).

A part whose data is not given or missing is skipped with a message naming
the data and where to get it. Writes results.json and, beside it,
results.md: markdown tables of this run next to the paper's Tables 3-4 and
the reproductions' numbers (SPEC §8).

--weights is a directory written by `python -m converters
invariant-ensemble` (an upstream train_classifier.py checkpoint) or by the
trainer (`WORKDIR/best`, or a WORKDIR holding `best/`). `--smoke` instead
uses a randomly initialised ensemble (a tiny one with `--smoke-tiny`) to
check the plumbing.
"""

import argparse
import json
import os
import pathlib
import sys
import tempfile

import numpy as np

from cgn_jax.data import imagenet
from cgn_jax.evaluation import suite

# ------------------------------------------------------------------ tables

# SPEC §8: (row, shape-bias shape/texture/bg head %, top-1, top-5).
TABLE3_REFERENCE = (
    ("paper: IN + CGN (ResNet-50)", (54.8, 16.7, 22.9), 74.0, 91.7),
    ("paper/[GE]: IN (ResNet-50)", (21.39, None, None), 76.13, 92.86),
    ("paper/[GE]: SIN", (81.37, None, None), 60.18, 82.62),
    ("paper/[GE]: IN + SIN", (34.65, None, None), 74.59, 92.14),
    ("paper/[GE]: IN + SIN, fine-tuned on IN", (20.54, None, None), 76.72,
     93.28),
    ("[RR]: IN-mini (single head)", (48.1, None, None), 73.12, None),
    ("[RR]: IN-mini + CGN", (47.00, 37.01, 47.02), 11.36, None),
    ("[BG]: IN-mini + CGN", (49.1, 20.5, 25.7), 56.2, 79.1),
)
# (row, IN-9, Mixed-Same, Mixed-Rand, BG-Gap) in %.
TABLE4_REFERENCE = (
    ("paper: IN ([MA] ResNet-50)", 95.6, 86.2, 78.9, 7.3),
    ("paper: SIN", 89.2, 73.1, 63.7, 9.4),
    ("paper: IN + SIN", 94.7, 85.9, 78.5, 7.4),
    ("paper: Mixed-Rand ([MA])", 73.3, 71.5, 71.3, 0.2),
    ("paper: IN + CGN", 94.2, 83.4, 80.1, 3.3),
    ("[BG]: IN-mini + CGN (shape_texture)", 86.8, 73.2, 68.3, 4.9),
)


def _f(v, digits=2):
  return "–" if v is None else f"{v:.{digits}f}"


def markdown(results: dict, name: str = "this run") -> str:
  """Tables 3 and 4 with this run's row first, then the published rows."""
  lines = ["## Table 3: shape vs texture (ResNet-50)", "",
           "| model | shape bias: shape head | texture head | bg head "
           "| top-1 | top-5 |", "|---|---|---|---|---|---|"]
  sb = results.get("shape_bias")
  val = results.get("imagenet_val")
  heads = [100 * sb[h]["shape_bias"] if sb else None
           for h in ("shape", "texture", "bg")]
  lines.append(f"| **{name}** | " + " | ".join(_f(h) for h in heads) +
               f" | {_f(val and val['top1'])} | {_f(val and val['top5'])} |")
  for row, bias, t1, t5 in TABLE3_REFERENCE:
    lines.append(f"| {row} | " + " | ".join(_f(b) for b in bias) +
                 f" | {_f(t1)} | {_f(t5)} |")
  lines += ["", "Shape bias in % (shape hits / (shape + texture hits), "
            "1,200 conflicting stimuli); top-1/top-5 of the averaged logits "
            "on ImageNet val ([RR]/[BG]: their IN-mini val)."]
  if sb and sb.get("note"):
    lines.append(f"This run: {sb['note']}.")
  lines += ["",
            "## Table 4: backgrounds challenge (accuracy %)", "",
            "| model | IN-9 | Mixed-Same | Mixed-Rand | BG-Gap |",
            "|---|---|---|---|---|"]
  in9 = results.get("in9") or {}

  def acc(v, pred="shape_texture"):
    return in9[v][pred] if v in in9 else None
  lines.append(f"| **{name}** (shape_texture) | {_f(acc('original'))} | "
               f"{_f(acc('mixed_same'))} | {_f(acc('mixed_rand'))} | "
               f"{_f(in9.get('bg_gap'))} |")
  if in9:
    ms, mr = acc("mixed_same", "avg"), acc("mixed_rand", "avg")
    gap = ms - mr if ms is not None and mr is not None else None
    lines.append(f"| **{name}** (avg, all heads) | "
                 f"{_f(acc('original', 'avg'))} | {_f(ms)} | {_f(mr)} | "
                 f"{_f(gap)} |")
  for row, *vals in TABLE4_REFERENCE:
    lines.append(f"| {row} | " + " | ".join(_f(v, 1) for v in vals) + " |")
  lines += ["", "BG-Gap = Mixed-Same − Mixed-Rand (the paper's on the "
            "shape_texture prediction, i.e. without the background head). "
            "[RR]'s Table 2(b) is empty in their report."]
  cf = results.get("counterfactual_val")
  if cf:
    lines += ["", "## Counterfactual validation (per head vs its label)", "",
              "| head | top-1 | top-5 |", "|---|---|---|"]
    for h in ("shape", "texture", "bg"):
      lines.append(f"| {h} | {_f(cf[h]['top1'])} | {_f(cf[h]['top5'])} |")
  if results.get("skipped"):
    lines += ["", "Skipped: " + "; ".join(
        f"{k} ({v.split('.')[0]})" for k, v in results["skipped"].items())]
  return "\n".join(lines) + "\n"


def write_atomic(path: pathlib.Path, text: str) -> None:
  """Writes `text` to `path` through a temporary file and a rename."""
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=path.name, dir=path.parent)
  try:
    with os.fdopen(fd, "w") as f:
      f.write(text)
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.unlink(tmp)


# ------------------------------------------------------------------ model


def weights_dir(path) -> pathlib.Path:
  """The variables directory: DIR (holding ckpt/) or DIR/best (a workdir)."""
  p = pathlib.Path(path).expanduser()
  for cand in (p, p / "best"):
    if (cand / "ckpt").is_dir():
      return cand
  raise imagenet.DataError(
      f"{p} holds no ensemble weights (no ckpt/ or best/ckpt/): pass a "
      "directory written by `python -m converters invariant-ensemble --input "
      "checkpoint.pth --output DIR` or a trainer workdir (`python train.py "
      "--config=configs/classifier_imagenet.py ...`), or use --smoke.")


def load_variables(path) -> dict:
  """{'params', 'batch_stats'} of a saved ensemble, as numpy arrays."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  d = weights_dir(path).resolve()
  with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as ckptr:
    restored = ckptr.restore(d / "ckpt", args=ocp.args.Composite(
        variables=ocp.args.StandardRestore()))
  return restored["variables"]


def model_for(variables):
  """An InvariantEnsemble whose sizes match `variables` (any ResNet depth
  of bottleneck stages and width, e.g. a smoke run's tiny one)."""
  from cgn_jax.models import ensemble  # pylint: disable=g-import-not-at-top
  backbone = variables["params"]["backbone"]
  stages = []
  for s in range(1, 5):
    n = sum(1 for k in backbone if k.startswith(f"layer{s}_"))
    if n:
      stages.append(n)
  width = int(np.shape(backbone["conv1"]["kernel"])[-1])
  classes = int(np.shape(variables["params"]["m_shape_1"]["kernel"])[-1])
  return ensemble.InvariantEnsemble(num_classes=classes,
                                    stage_sizes=tuple(stages), width=width)


def smoke_variables(tiny: bool, seed: int = 0):
  """A randomly initialised ensemble (ResNet-50, or a tiny one)."""
  import jax  # pylint: disable=g-import-not-at-top
  from cgn_jax.models import ensemble  # pylint: disable=g-import-not-at-top
  kw = dict(stage_sizes=(1, 1, 1, 1), width=8) if tiny else {}
  model = ensemble.InvariantEnsemble(**kw)
  return model, ensemble.init_variables(model, jax.random.key(seed))


# -------------------------------------------------------------------- CLI


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
      prog="python -m cgn_jax.experiments.imagenet_eval",
      description=__doc__.split("\n\n")[0])
  parser.add_argument("--weights", help="converted or trained ensemble dir")
  parser.add_argument("--smoke", action="store_true",
                      help="random-init ensemble instead of --weights")
  parser.add_argument("--smoke-tiny", action="store_true",
                      help="with --smoke: a tiny backbone (fast on CPU)")
  parser.add_argument("--imagenet-val", help="ImageNet val folder, or 'tfds'")
  parser.add_argument("--cue-conflict", help="style-transfer-preprocessed-512")
  parser.add_argument("--in9", help="backgrounds challenge folder")
  parser.add_argument("--counterfactuals", help="counterfactual dataset")
  parser.add_argument("--out", required=True, help="results.json path")
  parser.add_argument("--batch-size", type=int, default=64)
  parser.add_argument("--workers", type=int, default=0,
                      help="JPEG-decoding processes")
  args = parser.parse_args(argv)
  if not args.smoke and not args.weights:
    parser.error("give --weights DIR (or --smoke)")
  try:
    if args.smoke:
      model, variables = smoke_variables(args.smoke_tiny)
      name = "smoke (random init)"
    else:
      variables = load_variables(args.weights)
      model = model_for(variables)
      name = pathlib.Path(args.weights).name
  except imagenet.DataError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  apply_fn = suite.make_apply_fn(model, variables)
  data = {"imagenet_val": args.imagenet_val,
          "counterfactual_val": args.counterfactuals,
          "shape_bias": args.cue_conflict, "in9": args.in9}
  results = suite.run_suite(apply_fn, data, batch_size=args.batch_size,
                      worker_count=args.workers)
  results["weights"] = "smoke" if args.smoke else str(args.weights)
  out = pathlib.Path(args.out)
  write_atomic(out, json.dumps(results, indent=1) + "\n")
  table = markdown(results, name)
  write_atomic(out.with_suffix(".md"), table)
  print(table)
  print(f"wrote {out} and {out.with_suffix('.md')}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
