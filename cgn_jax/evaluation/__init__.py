"""Evaluation metrics of the paper's ImageNet experiments, one module each
(`inception_score`, and the shape-bias and backgrounds metrics)."""
