"""PyTorch re-creation of upstream's `imagenet/generate_data.py`, for timing.

The same-machine baseline of the JAX `imagenet_counterfactuals` benchmark
and of `generate.py --config=configs/counterfactuals_imagenet.py`. Upstream's
loop, per image (SPEC §5.1; copy in ../shared/reference/upstream_cgn/):

* `sample_classes('random')`: three classes from numpy;
* `cgn(ys=ys)` at batch 1 under `torch.no_grad()` in eval mode: biggan_GT,
  f_shape, U²-Net on the premask, f_text, f_bg and U²-Net on the background
  (upstream computes x_gt and the background mask and throws them away);
* `x_gen = mask·fg + (1−mask)·bg`, then torchvision's
  `save_image(normalize=True)`: per-image min-max to [0, 1], `·255 + 0.5`,
  clamp, uint8, PIL JPEG at PIL's default quality 75;
* one `labels.csv` row appended per image (upstream appends an empty pandas
  frame whose header is the row; the csv module writes the same bytes' worth).

The model is `torch_baseline_imagenet.CGN` (checked against the golden by
tests/test_torch_baseline_imagenet.py), random weights of the released
shapes. torchvision and pandas are not needed.

Usage:
  python -m benchmarks.torch_generate_imagenet --size full --num 4 \
      --json torch_generate_imagenet.json
"""

import argparse
import csv
import json
import pathlib
import statistics
import sys
import tempfile
import time

import numpy as np
from PIL import Image
import torch

try:
  from benchmarks import torch_baseline_imagenet as tbi
except ImportError:  # run as a script from benchmarks/
  import torch_baseline_imagenet as tbi  # pylint: disable=g-import-not-at-top


def save_image(im: torch.Tensor, path) -> None:
  """torchvision.utils.save_image(im [1, 3, H, W], path, normalize=True)."""
  x = im[0].clone()
  lo, hi = float(x.min()), float(x.max())
  x.clamp_(min=lo, max=hi).sub_(lo).div_(max(hi - lo, 1e-5))
  arr = x.mul(255).add_(0.5).clamp_(0, 255).permute(1, 2, 0)
  Image.fromarray(arr.to("cpu", torch.uint8).numpy()).save(path)


def generate(cgn, out_dir: pathlib.Path, num: int, start: int = 0) -> None:
  """Upstream's main loop (mode 'random') for images start..start+num-1."""
  ims = out_dir / "ims"
  ims.mkdir(parents=True, exist_ok=True)
  with torch.no_grad(), open(out_dir / "labels.csv", "a",
                             newline="") as f:
    writer = csv.writer(f)
    for i in range(start, start + num):
      ys = np.random.randint(0, 1000, 3).tolist()
      name = f"bench_{i:07}"
      _, mask, _, foreground, background, _ = cgn(ys=ys)
      x_gen = mask * foreground + (1 - mask) * background
      save_image(x_gen, ims / f"{name}_x_gen.jpg")
      writer.writerow([name] + ys)


def main(argv=None):
  """Command line; prints one JSON record per size."""
  parser = argparse.ArgumentParser(
      description="Times upstream's generate_data.py loop (batch 1, one "
      "forward and one JPEG per image).")
  parser.add_argument("--size", nargs="+", default=["full"],
                      choices=list(tbi.SIZES))
  parser.add_argument("--num", type=int, default=4,
                      help="timed images per size")
  parser.add_argument("--warmup", type=int, default=1)
  parser.add_argument("--threads", type=int, default=None)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--json", metavar="FILE")
  args = parser.parse_args(argv)
  if args.num < 1:
    parser.error("--num must be >= 1")
  if args.threads is not None:
    torch.set_num_threads(args.threads)
  torch.manual_seed(args.seed)
  np.random.seed(args.seed)
  records = []
  for size in args.size:
    spec = tbi.SIZES[size]
    cgn = tbi.CGN(1, 0.5, spec["channel_width"], spec["u2net"]).eval()
    with tempfile.TemporaryDirectory() as tmp:
      out = pathlib.Path(tmp)
      generate(cgn, out, args.warmup)
      times, cpu = [], []
      for i in range(args.num):
        t0, c0 = time.perf_counter(), time.process_time()
        generate(cgn, out, 1, start=args.warmup + i)
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    median = statistics.median(times)
    rec = {"name": f"torch_imagenet_generate/{size}/b1",
           "backend": "torch-cpu", "size": size, "batch": 1,
           "repeats": len(times), "median_s": median, "min_s": min(times),
           "max_s": max(times), "img_per_s": 1.0 / median,
           "median_cpu_s": statistics.median(cpu),
           "torch_version": torch.__version__,
           "num_threads": torch.get_num_threads()}
    records.append(rec)
    print(json.dumps(rec), flush=True)
    if args.json:
      with open(args.json, "w") as f:
        json.dump(records, f, indent=1)
  return 0


if __name__ == "__main__":
  sys.exit(main())
