"""The ImageNet invariant classifier ensemble (paper Tables 3-4, SPEC §6).

  python -m converters resnet50 --input resnet50-0676ba61.pth \
      --output RESNET50_DIR
  python train.py --config=configs/classifier_imagenet.py:mini \
      --workdir=DIR --config.pretrained=RESNET50_DIR \
      --config.data.root=IMAGENET_DIR --config.data.counterfactuals=CF_DIR
  python train.py --config=configs/classifier_imagenet.py:full \
      --workdir=DIR --config.pretrained=RESNET50_DIR ... \
      --config.eval.cue_conflict=STIMULI_DIR --config.eval.in9=IN9_DIR
  python train.py --config=configs/classifier_imagenet.py:smoke --workdir=DIR

ARG: `mini` (the default) is the reproductions' run and upstream's README
command (`-a resnet50 --pretrained -b 32 --lr 0.001 --epochs 45`, 1:1
counterfactuals): batch 32 real + 32 counterfactual images per step on one
device, e.g. on the Kaggle "imagenetmini-1000" set (34,745 train / 3,923 val
images) with a 35k counterfactual set at truncation 0.5 ([RR]/[FA]).
`full` is upstream's multi-GPU command: batch 256 (+256 counterfactuals)
over all devices, still lr 0.001. `smoke` is a seconds-long CPU run on
synthetic data with a tiny ResNet (same code path). Typed overrides:
`cf_ratio=0` (real-only baseline), `epochs=N`, `seed=N`.

Recipe (upstream train_classifier.py): SGD momentum 0.9, weight decay 1e-4,
lr x0.1 at epochs 15 and 30, 45 epochs; BatchNorm frozen; loss = CE(avg
logits, real label) + Σ_heads CE(head, counterfactual label). Expected
(SPEC §8): paper Table 3 (full ImageNet, `full`): ensemble top-1 74.0 /
top-5 91.7, shape bias 54.8 % (shape head), 16.7 % (texture), 22.9 % (bg);
the second reproduction on ImageNet-mini (`mini`): top-1 56.2 / top-5 79.1,
shape bias 49.1 / 20.5 / 25.7 %. A mini epoch is 1,085 steps of 32 + 32
images.
"""

import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The ensemble's training config (see the module docstring)."""
  a = common.parse_arg(arg, mini=False, full=False, smoke=False,
                       cf_ratio=1.0, epochs=45, seed=0)
  if a.mini and a.full:
    raise ValueError("choose one of `mini` and `full`")
  c = ml_collections.ConfigDict()
  c.trainer = "classifier_imagenet"

  # A directory written by `python -m converters resnet50` (torchvision's
  # ImageNet ResNet-50); 'none' starts the backbone from random weights.
  c.pretrained = ""

  c.data = ml_collections.ConfigDict()
  # 'imagefolder' (train/<wnid>/*.JPEG, val/<wnid>/*.JPEG), 'tfds'
  # (imagenet2012 from its manual dir) or 'synthetic' (tests, smoke).
  c.data.source = "imagefolder"
  c.data.root = ""              # ImageNet (ImageFolder root or TFDS dir)
  c.data.counterfactuals = ""   # the counterfactual dataset's directory
  c.data.image_size = 224
  c.data.num_classes = 1000
  c.data.synthetic = ml_collections.ConfigDict(
      dict(num_train=0, num_val=0, num_cf=0))

  c.model = ml_collections.ConfigDict()
  c.model.stage_sizes = (3, 4, 6, 3)   # ResNet-50
  c.model.width = 64
  c.model.dtype = "float32"            # compute dtype ('bfloat16' on GPUs)

  # Optimisation (upstream README command and argparse defaults).
  c.epochs = a.epochs
  c.batch_size = 32                    # real images per step (global)
  c.cf_ratio = a.cf_ratio              # counterfactuals per real image
  c.learning_rate = 1e-3
  c.momentum = 0.9
  c.weight_decay = 1e-4
  c.lr_decay = 0.1
  c.lr_decay_every_epochs = 15         # x0.1 at epochs 15 and 30
  c.seed = a.seed

  # Input pipeline (none of these changes the batches).
  c.worker_count = 6                   # JPEG-decoding processes (upstream -j 6)
  c.read_threads = 4
  c.prefetch = 4

  # Evaluation after every epoch: the paper's suite (cgn_jax/evaluation);
  # a part whose data is not given is skipped with where to get it.
  c.eval = ml_collections.ConfigDict()
  c.eval.suite = True
  # rgeirhos/texture-vs-shape stimuli/style-transfer-preprocessed-512:
  c.eval.cue_conflict = ""
  # MadryLab's backgrounds challenge (original/, mixed_same/, mixed_rand/):
  c.eval.in9 = ""
  c.eval.before_training = True  # as upstream (logged at step 0)
  c.eval_batch_size = 256
  c.eval_limit = 0          # without the suite: first N val images; 0 = all

  c.keep_checkpoints = 2
  c.log_every_steps = 50
  c.progress_bar = True
  c.overwrite = False       # True: delete another config's checkpoints

  if a.full:
    c.batch_size = 256
  if a.smoke:
    c.pretrained = "none"
    c.data.source = "synthetic"
    c.data.image_size = 32
    c.data.num_classes = 10
    c.worker_count = 0
    c.read_threads = 2
    c.eval.suite = False
    c.eval.before_training = False
    c.data.synthetic = ml_collections.ConfigDict(
        dict(num_train=16, num_val=6, num_cf=12))
    c.model.stage_sizes = (1, 1, 1, 1)
    c.model.width = 4
    c.epochs = 2
    c.batch_size = 4
    c.lr_decay_every_epochs = 1
    c.learning_rate = 0.01
    c.eval_batch_size = 4
    c.log_every_steps = 2
    c.progress_bar = False
  return c
