"""CGN on Wildlife MNIST: upstream's `cgn_wildlife_MNIST.yaml` (SPEC §2.6).

Train (15 epochs at batch 16, as upstream ran it):

  python train.py --config=configs/cgn_wildlife_mnist.py \
      --workdir=/tmp/cgn_wildlife

Smoke run, no VGG16 weights needed (2 steps, batch 4, random VGG16):

  python train.py --config=configs/cgn_wildlife_mnist.py:smoke \
      --workdir=/tmp/cgn_smoke

Variants (`:ssim`, `:jitter`, `:edge`, combinable), the VGG16 weights
(`perceptual.vgg16`), locked-field errors and the upstream yaml-vs-command-line
quirk are described once, in configs/cgn_mnist_base.py.

Outputs: WORKDIR/samples/STEP_{x_gen,mask,foreground,background,sheet}.png,
metrics.jsonl, checkpoints/ (resumed automatically), results.json.
"""

from configs import cgn_mnist_base


def get_config(arg=None):
  return cgn_mnist_base.get_config("wildlife", arg)
