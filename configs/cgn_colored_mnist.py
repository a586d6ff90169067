"""CGN on Colored MNIST: upstream's `cgn_colored_MNIST.yaml` (SPEC §2.6).

Train (15 epochs at batch 16, as upstream ran it):

  python train.py --config=configs/cgn_colored_mnist.py \
      --workdir=/tmp/cgn_colored

Smoke run, no VGG16 weights needed (2 steps, batch 4, random VGG16):

  python train.py --config=configs/cgn_colored_mnist.py:smoke \
      --workdir=/tmp/cgn_smoke

Variants combine after the colon: `:ssim`, `:jitter`, `:edge`, e.g.
`:smoke,ssim` (see configs/cgn_mnist_base.py). Fields are overridden as
`--config.batch_size=64`; a field that does not exist is an error (the
config is locked: AttributeError), and so is an unknown `:word`
(ValueError). The style loss needs torchvision's ImageNet VGG16 converted
with `python -m converters vgg16` into `perceptual.vgg16` (default
~/.cache/cgn_jax/vgg16); a missing directory raises FileNotFoundError saying
how to get it; `--config.perceptual.vgg16=random` runs with random weights
(a logged warning), `none` drops the style loss.

Where the yaml and upstream's command line disagree, this follows what
upstream actually ran (SPEC §2.6 override quirk): batch 16 (yaml 16 too),
15 epochs (yaml 15), sample sheets every 1000 steps (the yaml's SAVE_ITER
4000 was overridden by the argparse default 1000).

Outputs: WORKDIR/samples/STEP_{x_gen,mask,foreground,background,sheet}.png,
metrics.jsonl, checkpoints/ (resumed automatically), results.json.
"""

from configs import cgn_mnist_base


def get_config(arg=None):
  return cgn_mnist_base.get_config("colored", arg)
