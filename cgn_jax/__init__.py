"""cgn_jax: Counterfactual Generative Networks in JAX/Flax (linen).

Importing the package changes nothing global; the CPU tuning of the entry
points is an explicit call (`cgn_jax.platform.apply_cpu_defaults`).
"""

__version__ = "0.1.0"
