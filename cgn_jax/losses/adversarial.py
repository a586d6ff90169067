"""LSGAN generator and discriminator losses (SPEC §2.5, upstream mnists)."""

import jax
import jax.numpy as jnp


def lsgan_generator_loss(d_fake: jax.Array) -> jax.Array:
  """MSE(D(x_gen, y_gen), 1).

  Args:
    d_fake: [B] raw discriminator scores of generated images.

  Returns:
    scalar loss.
  """
  return jnp.mean(jnp.square(d_fake.astype(jnp.float32) - 1.0))


def lsgan_discriminator_loss(d_real: jax.Array,
                             d_fake: jax.Array) -> jax.Array:
  """½·[MSE(D(x_real), 1) + MSE(D(x_gen), 0)].

  Args:
    d_real: [B] scores of real images.
    d_fake: [B] scores of generated images (computed on
      `jax.lax.stop_gradient(x_gen)`, or with G's params held fixed).

  Returns:
    scalar loss.
  """
  real = jnp.mean(jnp.square(d_real.astype(jnp.float32) - 1.0))
  fake = jnp.mean(jnp.square(d_fake.astype(jnp.float32)))
  return 0.5 * (real + fake)
