"""The ImageNet CGN (SPEC §4): four BigGAN-deep-256 + U²-Net, six losses.

Train with the paper's pseudo-batch of 2048 and 50 updates (micro-batch 32
x 64 accumulated micro-steps per update), starting from converted weights:

  python -m converters biggan --input biggan-deep-256-pytorch_model.bin \
      --config biggan-deep-256 --output ~/.cache/cgn_jax/biggan-deep-256
  python -m converters u2net --input u2net.pth --output ~/.cache/cgn_jax/u2net
  python -m converters vgg16 --input vgg16-397923af.pth \
      --output ~/.cache/cgn_jax/vgg16
  python train.py --config=configs/cgn_imagenet.py --workdir=/tmp/cgn_in

Or continue from the authors' released CGN (`weights.cgn`, converted with
`python -m converters cgn-imagenet --input cgn.pth --output DIR`; it then
replaces `weights.biggan` and `weights.u2net`).

Variants (after ':', comma separated, combinable):
  upstream  what upstream's command line actually runs (SPEC §4.5): batch 1,
            accumulation 4000, 300 updates (1.2 M forward passes).
  smoke     BigGAN-deep at channel_width 4 in BigGAN-deep-128's layout
            (128² images: VGG16 and U²-Netp, most of a step, cost 4x less
            than at 256²; the code path is the same), U²-Netp and VGG16
            with random weights, micro-batch 1 x 2 accumulation, 2 updates;
            no downloads. On a 2-core CPU most of its time is compiling:
              python train.py --config=configs/cgn_imagenet.py:smoke \
                  --workdir=/tmp/cgn_in_smoke
  no_shape  Table 1 "without L_shape": binary and mask-size λ = 0.
  no_text   Table 1 "without L_text": texture style weights all 0.
  no_bg     Table 1 "without L_bg": background λ = 0.
  no_rec    Table 1 "without L_rec": L1 λ = 0 and perceptual weights all 0
            (the paper's reconstruction loss is L1 + perceptual).
  bf16      compute in bfloat16 (parameters, optimiser state and spectral
            norm stay float32).

Example: `--config=configs/cgn_imagenet.py:no_text,bf16`.

Choices where upstream is ambiguous (SPEC §10 items 18, 21):
  * gradients of the accumulated micro-batches are summed, as upstream
    (`accumulate='sum'`); 'mean' divides by batch_acc. Adam is nearly scale
    invariant, so the two differ only through Adam's epsilon.
  * one class per micro-batch as upstream (`class_per='batch'`); 'sample'
    draws a class per sample (more class diversity per micro-batch).
  * one update = batch_acc micro-steps; metrics, sample sheets and
    checkpoints count updates ("episodes" in upstream's code).

Outputs: WORKDIR/metrics.jsonl (each loss, mean mask, images/s),
samples/sheet_UPDATE.png (rows: classes 15, 251, 330, 382, 385, 483, 559,
751, 938, 947, 999; columns mask | premask | foreground | background | x_gen
| x_gt), checkpoints/ (resumed automatically), results.json.
"""

import ml_collections

from configs import common

DEFAULT_BIGGAN_DIR = "~/.cache/cgn_jax/biggan-deep-256"
DEFAULT_U2NET_DIR = "~/.cache/cgn_jax/u2net"
DEFAULT_VGG16_DIR = "~/.cache/cgn_jax/vgg16"
SHEET_CLASSES = (15, 251, 330, 382, 385, 483, 559, 751, 938, 947, 999)


def get_config(arg=None) -> ml_collections.ConfigDict:
  arg = common.parse_arg(arg, upstream=False, smoke=False, no_shape=False,
                         no_text=False, no_bg=False, no_rec=False, bf16=False)
  c = ml_collections.ConfigDict()
  c.trainer = "cgn_imagenet"
  c.seed = 0

  # Model: BigGAN config name (+ an optional narrower channel width) and the
  # U²-Net variant; the truncation of the training noise (SPEC §4.5: 1.0).
  c.model = ml_collections.ConfigDict(dict(
      biggan="biggan-deep-256", channel_width=0,  # 0: the config's width
      u2net_variant="u2net", bn_interpolation="package",
      dtype="bfloat16" if arg.bf16 else "float32", remat=False))
  c.truncation = 1.0

  # Weights: converted directories (`python -m converters ...`). `cgn` (the
  # authors' converted cgn.pth) replaces `biggan` and `u2net` when set.
  # 'random' gives random weights (smoke runs only).
  c.weights = ml_collections.ConfigDict(dict(
      biggan=DEFAULT_BIGGAN_DIR, u2net=DEFAULT_U2NET_DIR, cgn="",
      vgg16=DEFAULT_VGG16_DIR))

  # Schedule: pseudo-batch = batch_size * batch_acc (paper: 2048 x 50).
  c.batch_size = 32  # global micro-batch, sharded over the devices
  c.batch_acc = 64
  c.num_updates = 50
  c.accumulate = "sum"  # 'sum' (upstream) or 'mean'
  c.class_per = "batch"  # 'batch' (upstream) or 'sample'
  c.shard_params = False  # shard the BigGANs' parameters over the mesh
  # How the micro-steps of an update run: 'scan' (one lax.scan in one
  # program), 'host' (a jitted micro-step per accumulation step; XLA:CPU
  # runs convolutions inside loops far slower) or 'auto' (host on CPU).
  c.accumulation_loop = "auto"

  c.lr = ml_collections.ConfigDict(dict(shape=8e-6, texture=3e-5, bg=1e-5))
  c.adam = ml_collections.ConfigDict(dict(b1=0.9, b2=0.999, eps=1e-8))
  c.lambdas = ml_collections.ConfigDict(dict(
      l1=100.0, perc=(4.0, 4.0, 4.0, 4.0), binary=300.0, mask=500.0,
      text=(0.0, 5.0, 5.0, 0.0), bg=2000.0))

  # Logging, in updates.
  c.log_every = 1
  c.save_every = 10  # sample sheet and checkpoint
  c.keep_checkpoints = 2
  c.progress_bar = True
  # Resuming WORKDIR with another config is refused (the fields are named);
  # True deletes that run's checkpoints and logs and starts over.
  c.overwrite = False
  c.sheet_classes = SHEET_CLASSES
  c.sheet_truncation = 1.0  # upstream draws its fixed noise at TRUNCATION

  if arg.upstream:
    c.batch_size, c.batch_acc, c.num_updates = 1, 4000, 300
    c.save_every = 1  # upstream SAVE_ITER 4000 forward passes = 1 update
  if arg.no_shape:
    c.lambdas.binary = c.lambdas.mask = 0.0
  if arg.no_text:
    c.lambdas.text = (0.0, 0.0, 0.0, 0.0)
  if arg.no_bg:
    c.lambdas.bg = 0.0
  if arg.no_rec:
    c.lambdas.l1 = 0.0
    c.lambdas.perc = (0.0, 0.0, 0.0, 0.0)
  if arg.smoke:
    c.model.biggan = "biggan-deep-128"
    c.model.channel_width = 4
    c.model.u2net_variant = "u2netp"
    c.weights.biggan = c.weights.u2net = c.weights.vgg16 = "random"
    c.batch_size, c.batch_acc, c.num_updates = 1, 2, 2
    c.save_every = 2
    c.progress_bar = False
    c.sheet_classes = (15, 251)
  return c
