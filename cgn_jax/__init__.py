"""cgn_jax: Counterfactual Generative Networks in JAX/Flax (linen)."""

from cgn_jax import platform as _platform

__version__ = "0.1.0"

# Before any JAX backend exists: XLA reads XLA_FLAGS once, and the backend's
# threads take their malloc arenas when they start (see platform.py).
_platform.apply_cpu_defaults()
_platform.keep_freed_memory()
