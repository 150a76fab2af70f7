"""jaxgd: backpropagation and SGD with momentum and L2, by hand, in JAX.

Modules: ``layers`` (each layer's forward beside its hand backward), ``models`` (sequential
models and the generic reverse pass), ``losses``, ``backprop`` (derivations done on paper),
``attention`` (scaled dot-product and FlashAttention-2, hand backwards), ``gradcheck``,
``checker`` (``jaxgd.check``: one call proves a hand backward and diagnoses a wrong one),
``optim`` (hand SGD and AdamW + optax twins), ``train`` (the training loop), ``data``.
"""

from jaxgd import attention, backprop, data, gradcheck, layers, losses, models, optim, testing, train  # noqa: F401
from jaxgd.checker import Report, check

__all__ = [
    "Report",
    "attention",
    "backprop",
    "check",
    "data",
    "gradcheck",
    "layers",
    "losses",
    "models",
    "optim",
    "train",
]
try:  # one version, the package metadata's (pyproject.toml)
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as _version

    __version__ = _version("jaxgd")
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"
