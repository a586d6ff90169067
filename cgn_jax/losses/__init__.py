"""CGN losses as small pure functions, one idea per module.

MNIST (SPEC §2.5), the reproduction's extras (§7.1-7.2), [BG]'s edge loss
(§8.3) and the ImageNet CGN's losses (§4.4). Images are NHWC; generator
images are in [-1, 1]. Every weight lives inside its term, so a generator
loss is the plain sum of the returned values, as upstream
(`mnists/train_cgn.py`, `imagenet/train_cgn.py`, `shared/losses.py` of
autonomousvision/counterfactual_generative_networks, commit 335bebd).

The names below are re-exported so `from cgn_jax import losses` keeps one flat
namespace.
"""

from cgn_jax.losses.adversarial import lsgan_discriminator_loss
from cgn_jax.losses.adversarial import lsgan_generator_loss
from cgn_jax.losses.background import background_loss
from cgn_jax.losses.cgn_imagenet import cgn_imagenet_losses
from cgn_jax.losses.jitter import adjust_color
from cgn_jax.losses.jitter import color_jitter
from cgn_jax.losses.mask import binary_entropy_loss
from cgn_jax.losses.mask import edge_loss
from cgn_jax.losses.mask import mask_size_loss
from cgn_jax.losses.reconstruction import l1_loss
from cgn_jax.losses.ssim import ssim_loss
from cgn_jax.losses.style import gram_matrix
from cgn_jax.losses.style import STYLE_LAYERS
from cgn_jax.losses.style import STYLE_SCALE
from cgn_jax.losses.style import style_loss
from cgn_jax.losses.style import style_loss_terms
from cgn_jax.losses.texture import resize_bicubic
from cgn_jax.losses.texture import texture_loss
from cgn_jax.losses.texture import texture_target
