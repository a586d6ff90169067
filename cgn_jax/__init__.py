"""cgn_jax: Counterfactual Generative Networks in JAX/Flax (linen)."""

__version__ = "0.1.0"
