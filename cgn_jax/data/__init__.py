"""MNIST through TFDS (`mnist`), the three CGN variants (`variants`), their
grain input pipeline (`pipeline`) and a preview CLI (`preview`)."""
