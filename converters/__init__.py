"""PyTorch -> Flax weight converters (`python -m converters NAME ...`)."""
