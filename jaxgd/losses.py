"""Losses, each beside its derivative with respect to the model output.

Shapes: ``y_hat`` / ``logits`` are ``(batch, k)`` or a single ``(k,)``.
Integer labels are ``(batch,)`` (or a scalar); one-hot or probability targets
have the logits' shape.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array
from jax.typing import ArrayLike


def _is_concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def _check_same_shape(y_hat, y, what):
    if jnp.shape(y_hat) != jnp.shape(y):
        raise ValueError(f"{what}: prediction shape {jnp.shape(y_hat)} != target shape {jnp.shape(y)}")


def sum_squared_residuals(y_hat: Array, y: Array) -> Array:
    """``L = sum_i (y_i - y_hat_i)^2`` over every element (batch and outputs)."""
    _check_same_shape(y_hat, y, "sum_squared_residuals")
    return jnp.sum((y - y_hat) ** 2)


def sum_squared_residuals_grad(y_hat: Array, y: Array) -> Array:
    """``dL/dy_hat = -2 (y - y_hat)``."""
    _check_same_shape(y_hat, y, "sum_squared_residuals")
    return -2 * (y - y_hat)


def mean_squared_error(y_hat: Array, y: Array) -> Array:
    """``L = mean_i (y_i - y_hat_i)^2`` over every element."""
    _check_same_shape(y_hat, y, "mean_squared_error")
    return jnp.mean((y - y_hat) ** 2)


def mean_squared_error_grad(y_hat: Array, y: Array) -> Array:
    """``dL/dy_hat = -2 (y - y_hat) / N`` with N the number of elements."""
    _check_same_shape(y_hat, y, "mean_squared_error")
    return -2 * (y - y_hat) / y.size


def targets(logits: Array, labels: ArrayLike) -> Array:
    """Labels as a ``(n, k)`` probability matrix; validates what it can see."""
    k = logits.shape[-1]
    labels = jnp.asarray(labels)
    if labels.shape == logits.shape:
        return labels.reshape(-1, k).astype(logits.dtype)
    if labels.shape != logits.shape[:-1]:
        raise ValueError(
            f"labels shape {labels.shape} fits neither integer labels {logits.shape[:-1]} "
            f"nor one-hot targets {logits.shape} for logits of shape {logits.shape}"
        )
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise ValueError(f"integer class labels expected, got dtype {labels.dtype}")
    if _is_concrete(labels):
        check_labels(np.asarray(labels), k)  # numpy, so the check is never staged into a jit
    return jax.nn.one_hot(labels.reshape(-1), k, dtype=logits.dtype)


def check_labels(labels: np.ndarray, k: int, what: str = "labels") -> None:
    """Integer class labels (on the host) must lie in ``[0, k)``; ``k=None`` checks only ``>= 0``."""
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{what}: integer class labels expected, got dtype {labels.dtype}")
    if labels.size:
        lo, hi = int(labels.min()), int(labels.max())
        if lo < 0 or (k is not None and hi >= k):
            raise ValueError(f"{what} must lie in [0, {k}) for {k} classes; got min {lo}, max {hi}")


def softmax_cross_entropy(logits: Array, labels: ArrayLike) -> Array:
    """Mean over the batch of ``-sum_k y_k log softmax(s)_k`` (log-sum-exp stable)."""
    y = targets(logits, labels)
    logp = jax.nn.log_softmax(logits.reshape(y.shape), axis=-1)
    return -jnp.sum(y * logp) / y.shape[0]


def softmax_cross_entropy_grad(logits: Array, labels: ArrayLike) -> Array:
    """``dL/ds = (softmax(s) - y) / n`` for the batch-mean loss above."""
    y = targets(logits, labels)
    p = jax.nn.softmax(logits.reshape(y.shape), axis=-1)
    return ((p - y) / y.shape[0]).reshape(logits.shape)


@dataclasses.dataclass(frozen=True)
class CrossEntropy:
    """Softmax cross-entropy against label-smoothed targets, a loss with settings (a model's
    ``loss`` may be one, in place of a name): ``q = (1 - smoothing) y + smoothing / k`` for one-hot
    ``y`` over ``k`` classes, ``L = -sum_i sum_k q_ik log softmax(s_i)_k``, divided by the batch
    size (``reduction="mean"``) or not (``"sum"``). ``torch.nn.CrossEntropyLoss(label_smoothing=,
    reduction=)``; airbench trains on ``CrossEntropy(0.2, "sum")``.

    Derivative: ``dL/ds = softmax(s) - q`` (over the batch size for the mean): smoothing moves the
    target off the vertex of the simplex, so the gradient never vanishes on a confident example.
    """

    smoothing: float = 0.0
    reduction: str = "mean"

    def __post_init__(self):
        if not 0.0 <= self.smoothing < 1.0:
            raise ValueError(f"label smoothing must be in [0, 1), got {self.smoothing}")
        if self.reduction not in ("mean", "sum"):
            raise ValueError(f"reduction must be 'mean' or 'sum', got {self.reduction!r}")

    def _targets(self, logits, labels):
        y = targets(logits, labels)
        return (1.0 - self.smoothing) * y + self.smoothing / y.shape[-1]

    def _divisor(self, q):
        return q.shape[0] if self.reduction == "mean" else 1

    def __call__(self, logits, labels):
        q = self._targets(logits, labels)
        return -jnp.sum(q * jax.nn.log_softmax(logits.reshape(q.shape), axis=-1)) / self._divisor(q)

    def grad(self, logits, labels):
        q = self._targets(logits, labels)
        return ((jax.nn.softmax(logits.reshape(q.shape), axis=-1) - q) / self._divisor(q)).reshape(logits.shape)

    def __str__(self):
        return f"cross_entropy(smoothing={self.smoothing}, reduction={self.reduction!r})"


# name -> (loss(y_hat, y), dloss/dy_hat); what the hand backprop can pair with an MLP.
LOSSES = {
    "cross_entropy": (softmax_cross_entropy, softmax_cross_entropy_grad),
    "ssr": (sum_squared_residuals, sum_squared_residuals_grad),
    "mse": (mean_squared_error, mean_squared_error_grad),
}


def get_loss(name: str | CrossEntropy) -> tuple[Callable, Callable]:
    """``(loss(y_hat, y), dloss/dy_hat)`` of a name in ``LOSSES`` or of a ``CrossEntropy``."""
    if isinstance(name, CrossEntropy):
        return name, name.grad
    if not isinstance(name, str) or name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; choose from {sorted(LOSSES)}")
    return LOSSES[name]


def takes_labels(loss: str | CrossEntropy) -> bool:
    """Whether ``loss`` (a name or a ``CrossEntropy``) compares logits with class labels."""
    return loss == "cross_entropy" or isinstance(loss, CrossEntropy)


def _is_weight(path) -> bool:
    last = path[-1] if path else None
    return isinstance(last, jax.tree_util.DictKey) and last.key == "W"


def l2_penalty(params: Any, lam: ArrayLike) -> Any:
    """``lam * sum_l ||W_l||_F^2`` over leaves named ``"W"``; biases and norm scales are not penalised."""
    leaves = [x for p, x in jax.tree_util.tree_flatten_with_path(params)[0] if _is_weight(p)]
    return lam * sum(jnp.sum(w * w) for w in leaves)


def l2_penalty_grad(params: Any, lam: ArrayLike) -> Any:
    """``2 lam W`` for weight leaves, zeros elsewhere; same structure as ``params``."""
    return jax.tree_util.tree_map_with_path(lambda p, x: 2 * lam * x if _is_weight(p) else jnp.zeros_like(x), params)


def accuracy(logits: Array, labels: ArrayLike) -> Array:
    """Fraction of rows whose arg-max matches the integer label (or the one-hot target's arg-max)."""
    labels = jnp.asarray(labels)
    if labels.shape == logits.shape:
        labels = jnp.argmax(labels, -1)
    return jnp.mean(jnp.argmax(logits, -1) == labels)
