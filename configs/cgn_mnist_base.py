"""Shared fields of the MNIST CGN configs (SPEC §2.6, §2.7, §7).

Not a runnable config on its own: `configs/cgn_{colored,double_colored,
wildlife}_mnist.py` call `get_config(VARIANT, arg)` here and override only
what their upstream yaml file changes, so the variants never copy fields.

Where the upstream yaml and the upstream command line disagree (SPEC §2.6,
"override quirk": `train_cgn.py` copies its argparse defaults over the yaml),
these configs follow what upstream actually ran: batch 16, 15 epochs, a
sample sheet every 1000 steps (the yaml's SAVE_ITER 4000 was never used).

Config arguments (after the file name, comma separated, combinable):
  smoke   a few steps at batch 4 with random VGG16 weights: runs anywhere,
          no downloads, for tests and first contact.
  ssim    adds lambda_ssim * (1 - SSIM(x_gen, x_real)) to the generator loss,
          with a gradient that reaches the generator and data range 2 (the
          reproduction's version was detached; SPEC §7.1, §10.9).
  jitter  colour jitter (0.1 each) on the real [0, 1] images before
          normalisation, training only (SPEC §7.2, §10.8).
  edge    the edge loss of the second reproduction against mask collapse
          (SPEC §8.3, §10.2).
"""

import ml_collections

from configs import common

# Upstream's three yaml files share everything but these (SPEC §2.6).
VARIANTS = {
    "colored": dict(
        init_type="orthogonal", init_gain=0.1, disc="linear", ndf=512,
        mask=0.1, perc=(0.05, 0.1, 0.01, 0.0)),
    "double_colored": dict(
        init_type="orthogonal", init_gain=0.2, disc="linear", ndf=512,
        mask=0.3, perc=(0.0, 0.05, 0.0, 0.05)),
    "wildlife": dict(
        init_type="normal", init_gain=0.03, disc="conv", ndf=32,
        mask=0.3, perc=(0.01, 0.05, 0.0, 0.01)),
}

# Where `python -m converters vgg16 --output DIR` is expected to have put the
# converted torchvision weights; a missing directory is a clear error.
DEFAULT_VGG16_DIR = "~/.cache/cgn_jax/vgg16"


def get_config(variant: str, arg: str | None = None
               ) -> ml_collections.ConfigDict:
  """The config of one MNIST variant.

  Args:
    variant: 'colored', 'double_colored' or 'wildlife'.
    arg: the text after ':' in `--config=FILE:ARG`, e.g. 'smoke,ssim'.

  Returns:
    The (unlocked) ConfigDict; `train.py` locks it.
  """
  v = VARIANTS[variant]
  arg = common.parse_arg(arg, smoke=False, ssim=False, jitter=False,
                         edge=False)
  c = ml_collections.ConfigDict()
  c.trainer = "cgn_mnist"
  c.dataset = variant
  c.seed = 0
  # True redoes a workdir whose provenance differs (else that is an error).
  c.overwrite = False

  # Loop (SPEC §2.6 effective values, §2.7).
  c.batch_size = 16
  c.num_epochs = 15
  c.num_train_steps = -1  # > 0 overrides num_epochs
  # Steps fused into one jitted lax.scan; raise it on GPUs, where the host
  # dispatch of a 16-image step costs more than the step itself.
  c.steps_per_call = 1
  c.log_every_steps = 100
  c.sample_every_steps = 1000  # upstream SAVE_ITER as run (not the yaml)
  c.ckpt_every_steps = 1000
  c.keep_checkpoints = 2
  c.progress_bar = True
  # A converted authors' generator to start G from (converters/cgn_mnist.py).
  c.init_from = ""

  c.model = ml_collections.ConfigDict(dict(
      n_classes=10, latent_sz=32, ngf=32, img_sz=32,
      init_type=v["init_type"], init_gain=v["init_gain"]))
  c.disc = ml_collections.ConfigDict(dict(type=v["disc"], ndf=v["ndf"]))
  c.optim = ml_collections.ConfigDict(dict(lr=2e-4, b1=0.5, b2=0.999))
  c.lambdas = ml_collections.ConfigDict(dict(
      mask=v["mask"],
      perc=v["perc"],  # style weights w for relu1_2..relu4_3 (w^2 * 5000)
      ssim=1.0 if arg.ssim else 0.0,
      edge=1.0 if arg.edge else 0.0))
  c.perceptual = ml_collections.ConfigDict(dict(vgg16=DEFAULT_VGG16_DIR))
  c.jitter = ml_collections.ConfigDict(dict(
      enabled=arg.jitter, brightness=0.1, contrast=0.1, saturation=0.1,
      hue=0.1))

  if arg.smoke:
    c.batch_size = 4
    c.num_train_steps = 2
    c.log_every_steps = 1
    c.sample_every_steps = 2
    c.ckpt_every_steps = 2
    c.progress_bar = False
    c.perceptual.vgg16 = "random"
  return c
