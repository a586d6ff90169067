"""Sampling command lines: `python -m cgn_jax.sample {biggan,u2net} ...`."""
