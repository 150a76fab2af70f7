"""jaxgd: backpropagation and SGD with momentum and L2, by hand, in JAX.

Modules: ``nn`` (models), ``losses``, ``backprop`` (hand gradients), ``gradcheck``,
``optim`` (hand SGD + optax twin), ``train`` (the training loop), ``data``.
"""
from jaxgd import backprop, data, gradcheck, losses, nn, optim, train  # noqa: F401

__all__ = ["backprop", "data", "gradcheck", "losses", "nn", "optim", "train"]
__version__ = "0.1.0"
