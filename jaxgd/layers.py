"""Layers, each one definition with its forward and its hand-derived backward side by side.

Every layer kind is a small frozen dataclass (its hyperparameters, nothing learned) with

    init(key, in_shape, dtype)               -> (params, state, out_shape)
    forward(params, state, x, *, train, key) -> (y, new_state, residuals)
    backward(params, residuals, dy)          -> (dparams, dx)
    macs(in_shape)                           -> multiply-adds per example of the forward

``in_shape``/``out_shape`` are per example (no batch axis); ``x`` carries a leading batch
axis. ``params`` and ``state`` are plain dicts (``{}`` for a layer without any);
``residuals`` is what ``forward`` keeps for ``backward``; ``dparams`` has the structure of
``params``. ``backward`` never calls ``jax.grad``: the tests check each one against
``jax.vjp``, central finite differences and ``jax.test_util.check_vjp``, and
``hand_vjp(layer)`` wraps the pair as a ``jax.custom_vjp`` so that ``jax.grad`` can run
*through* the hand backwards (a third gradient path).

Dense layers compute ``y = x @ W + b`` with ``W`` shaped ``(d_in, d_out)`` (samples are
rows: ``torch.nn.Linear`` with ``W`` stored transposed). Images are NHWC, conv kernels HWIO.
"""
from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

INITS = ("he", "glorot", "torch")


def init_linear(key, d_in: int, d_out: int, init: str = "torch", dtype=jnp.float32) -> dict:
    """``{"W": (d_in, d_out), "b": (d_out,)}`` by one of three schemes (``d_in`` = fan-in):

    - ``he``:     W ~ N(0, 2 / d_in), b = 0 (for ReLU).
    - ``glorot``: W ~ U(-r, r), r = sqrt(6 / (d_in + d_out)), b = 0 (for tanh/sigmoid).
    - ``torch``:  W, b ~ U(-1/sqrt(d_in), 1/sqrt(d_in)): PyTorch's ``nn.Linear`` and ``nn.Conv2d`` default.
    """
    kw, kb = jax.random.split(key)
    if init == "he":
        W = jax.random.normal(kw, (d_in, d_out), dtype) * jnp.sqrt(2.0 / d_in).astype(dtype)
        b = jnp.zeros((d_out,), dtype)
    elif init == "glorot":
        r = (6.0 / (d_in + d_out)) ** 0.5
        W = jax.random.uniform(kw, (d_in, d_out), dtype, -r, r)
        b = jnp.zeros((d_out,), dtype)
    elif init == "torch":
        r = d_in ** -0.5
        W = jax.random.uniform(kw, (d_in, d_out), dtype, -r, r)
        b = jax.random.uniform(kb, (d_out,), dtype, -r, r)
    else:
        raise ValueError(f"unknown init {init!r}; choose from {INITS}")
    return {"W": W, "b": b}


@dataclasses.dataclass(frozen=True)
class Layer:
    """The contract every layer kind implements (see the module docstring)."""

    def init(self, key, in_shape, dtype=jnp.float32):
        return {}, {}, self.out_shape(tuple(in_shape))

    def out_shape(self, in_shape: tuple) -> tuple:
        return in_shape

    def forward(self, params, state, x, *, train=False, key=None):
        raise NotImplementedError

    def backward(self, params, residuals, dy):
        raise NotImplementedError

    def macs(self, in_shape) -> int:
        return 0

    def __str__(self):
        args = ", ".join(f"{v!r}" for v in dataclasses.astuple(self))
        return f"{type(self).__name__.lower()}({args})"


# ------------------------------------------------------------------------------ dense

@dataclasses.dataclass(frozen=True)
class Dense(Layer):
    """``y = x W + b``. Backward: ``dW = x^T dy`` and ``db = sum_batch dy`` (summed over every
    leading axis), ``dx = dy W^T``. Residual: ``x``."""
    features: int
    init_scheme: str = "torch"

    def out_shape(self, in_shape):
        if len(in_shape) != 1:
            raise ValueError(f"dense({self.features}) needs flat inputs but gets per-example shape "
                             f"{tuple(in_shape)}: put flatten() before it")
        return (self.features,)

    def init(self, key, in_shape, dtype=jnp.float32):
        shape = self.out_shape(in_shape)
        return init_linear(key, in_shape[0], self.features, self.init_scheme, dtype), {}, shape

    def forward(self, params, state, x, *, train=False, key=None):
        return x @ params["W"] + params["b"], state, x

    def backward(self, params, x, dy):
        d_in, d_out = params["W"].shape
        x2, dy2 = x.reshape(-1, d_in), dy.reshape(-1, d_out)  # a single example is a batch of one
        return {"W": x2.T @ dy2, "b": jnp.sum(dy2, axis=0)}, dy @ params["W"].T

    def macs(self, in_shape):
        return int(in_shape[0]) * self.features


# ------------------------------------------------------------------------------ activations

# name -> (f(z), f'(z) written with y = f(z)): the derivative needs only the output, which is the residual.
ACTIVATIONS = {
    "relu": (jax.nn.relu, lambda y: (y > 0).astype(y.dtype)),
    "sigmoid": (jax.nn.sigmoid, lambda y: y * (1 - y)),
    "tanh": (jnp.tanh, lambda y: 1 - y * y),
    "identity": (lambda z: z, None),
}


@dataclasses.dataclass(frozen=True)
class Activation(Layer):
    """Elementwise ``y = f(x)``; backward ``dx = dy * f'(x)`` with ``f'`` read from ``y``
    (ReLU: ``y > 0``, so the kink at 0 gets slope 0, as in PyTorch; sigmoid ``y (1 - y)``;
    tanh ``1 - y^2``). Residual: ``y`` (nothing for identity)."""
    name: str

    def __post_init__(self):
        if self.name not in ACTIVATIONS:
            raise ValueError(f"unknown activation {self.name!r}; choose from {sorted(ACTIVATIONS)}")

    def forward(self, params, state, x, *, train=False, key=None):
        y = ACTIVATIONS[self.name][0](x)
        return y, state, (None if self.name == "identity" else y)

    def backward(self, params, y, dy):
        deriv = ACTIVATIONS[self.name][1]
        return {}, (dy if deriv is None else dy * deriv(y))

    def __str__(self):
        return self.name


def relu():
    return Activation("relu")


def sigmoid():
    return Activation("sigmoid")


def tanh():
    return Activation("tanh")


def identity():
    return Activation("identity")


# ------------------------------------------------------------------------------ conv

CONV_IMPLS = ("lax", "im2col")


def im2col(x, kh: int, kw: int):
    """The ``kh*kw`` shifted views of the zero-padded NHWC ``x``, concatenated on the channel
    axis: ``(n, h, w, kh*kw*c)``, ordered (row, column, channel) as an HWIO kernel flattens."""
    h, w = x.shape[1:3]
    xp = jnp.pad(x, ((0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0)))
    return jnp.concatenate([xp[:, i:i + h, j:j + w, :] for i in range(kh) for j in range(kw)], axis=-1)


def _conv(x, W):
    return jax.lax.conv_general_dilated(x, W, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))


def conv_weight_grad(x, dy, w_shape):
    """``dW = im2col(x)^T dy`` of a stride-1 "same" convolution, reshaped to ``w_shape`` (HWIO)."""
    kh, kw, c_in, c_out = w_shape
    return (im2col(x, kh, kw).reshape(-1, kh * kw * c_in).T @ dy.reshape(-1, c_out)).reshape(w_shape)


def conv_input_grad(dy, W):
    """``dx = conv(dy, W')`` of a stride-1 "same" convolution, ``W'`` the kernel flipped in space
    with its channel axes swapped."""
    return _conv(dy, jnp.flip(W, (0, 1)).transpose(0, 1, 3, 2))


@dataclasses.dataclass(frozen=True)
class Conv2D(Layer):
    """Stride-1 "same" convolution, NHWC input, HWIO kernel of odd size, plus a bias per channel.

    Forward, two implementations of the one layer (equal up to rounding; a test checks both
    against ``lax.conv_general_dilated``):

    - ``impl="lax"``:    ``lax.conv_general_dilated``.
    - ``impl="im2col"``: ``im2col(x) @ W.reshape(kh*kw*c_in, c_out)``, one matmul.

    Backward (the same for both), with ``dy`` shaped ``(n, h, w, c_out)``:

    - ``db = sum_{n,h,w} dy``
    - ``dW = im2col(x)^T dy``, reshaped to HWIO: each kernel tap sees the input shifted by it.
    - ``dx = conv(dy, W')`` with ``W'[i, j, o, c] = W[kh-1-i, kw-1-j, c, o]``: the kernel flipped
      in space with its channel axes swapped (a "same" convolution is its own transpose, up to
      the flip, for odd kernels and stride 1).

    Residual: ``x``. Inside a compiled epoch on XLA:CPU, ``jax.grad`` of ``lax.conv`` ran an
    order of magnitude slower than these three (one forward convolution and two matmuls), and
    the im2col forward a little faster than ``lax.conv``'s: ``jaxgd bench``'s ``cnn_epoch``
    section measures all four combinations, and its ``conv_parts`` section times each part
    (``conv_weight_grad``, ``conv_input_grad``, both forwards) beside PyTorch's kernel for it.
    """
    features: int
    size: int = 3
    impl: str = "im2col"
    init_scheme: str = "torch"

    def __post_init__(self):
        if self.size < 1 or self.size % 2 == 0:
            raise ValueError(f"conv2d supports odd kernel sizes only, got {self.size}")
        if self.impl not in CONV_IMPLS:
            raise ValueError(f"unknown conv impl {self.impl!r}; choose from {CONV_IMPLS}")

    def out_shape(self, in_shape):
        if len(in_shape) != 3:
            raise ValueError(f"conv2d needs (height, width, channels) inputs, gets per-example shape {tuple(in_shape)}")
        return tuple(in_shape[:2]) + (self.features,)

    def init(self, key, in_shape, dtype=jnp.float32):
        shape = self.out_shape(in_shape)
        k, c_in = self.size, in_shape[2]
        lin = init_linear(key, k * k * c_in, self.features, self.init_scheme, dtype)
        return {"W": lin["W"].reshape(k, k, c_in, self.features), "b": lin["b"]}, {}, shape

    def forward(self, params, state, x, *, train=False, key=None):
        W = params["W"]
        kh, kw, c_in, c_out = W.shape
        if x.ndim != 4 or x.shape[-1] != c_in:
            raise ValueError(f"conv2d expects NHWC input with {c_in} channels; got shape {tuple(x.shape)}")
        if self.impl == "lax":
            y = _conv(x, W)
        else:
            y = im2col(x, kh, kw) @ W.reshape(kh * kw * c_in, c_out)
        return y + params["b"], state, x

    def backward(self, params, x, dy):
        W = params["W"]
        return {"W": conv_weight_grad(x, dy, W.shape), "b": jnp.sum(dy, axis=(0, 1, 2))}, conv_input_grad(dy, W)

    def macs(self, in_shape):
        h, w, c_in = in_shape
        return int(h * w * self.size * self.size * c_in * self.features)


# ------------------------------------------------------------------------------ pooling, reshaping

@dataclasses.dataclass(frozen=True)
class MaxPool(Layer):
    """Non-overlapping ``size`` x ``size`` max-pooling of NHWC input (height and width divisible by
    ``size``).

    Forward: a running maximum over the ``size**2`` strided views of the windows, which also keeps
    the index of the winner; a later element wins only if strictly greater, so a tie goes to the
    *first* maximum in row-major order within the window (PyTorch's ``MaxPool2d`` rule).

    Backward: each window's ``dy`` goes to that one element, the others get 0 (``jax.grad`` of a
    max instead splits ``dy`` equally among tied maxima; the two agree wherever a window has one
    maximum, and after a ReLU the tied windows are mostly all-zero ones, whose gradient the ReLU
    then discards either way). Residual: the winner's index per window (int8).

    The index is kept rather than recomputed as ``x == max(x)``: under jit, XLA may recompute ``x``
    inside two fusions that round differently, and an equality test can then select no element.
    """
    size: int = 2

    def out_shape(self, in_shape):
        if len(in_shape) != 3 or in_shape[0] % self.size or in_shape[1] % self.size:
            raise ValueError(f"max_pool({self.size}) needs (height, width, channels) inputs with height and "
                             f"width divisible by {self.size}; gets per-example shape {tuple(in_shape)}")
        return (in_shape[0] // self.size, in_shape[1] // self.size, in_shape[2])

    def forward(self, params, state, x, *, train=False, key=None):
        n, h, w, c = x.shape
        s = self.size
        self.out_shape((h, w, c))
        x6 = x.reshape(n, h // s, s, w // s, s, c)
        best, idx = x6[:, :, 0, :, 0, :], jnp.zeros((n, h // s, w // s, c), jnp.int8)
        for k in range(1, s * s):
            v = x6[:, :, k // s, :, k % s, :]
            idx = jnp.where(v > best, jnp.int8(k), idx)
            best = jnp.maximum(best, v)
        return best, state, idx

    def backward(self, params, idx, dy):
        s = self.size
        n, hs, ws, c = dy.shape
        where = jnp.arange(s * s, dtype=idx.dtype).reshape(1, 1, s, 1, s, 1)  # each element's index in its window
        dx = jnp.where(idx[:, :, None, :, None, :] == where, dy[:, :, None, :, None, :], jnp.zeros((), dy.dtype))
        return {}, dx.reshape(n, hs * s, ws * s, c)  # (n, h/s, s, w/s, s, c) -> (n, h, w, c)


@dataclasses.dataclass(frozen=True)
class Flatten(Layer):
    """``(n, ...) -> (n, prod(...))``; backward reshapes ``dy`` back. Residual: an empty array
    of shape ``(0, *x.shape[1:])``, which carries the input's shape and no data."""

    def out_shape(self, in_shape):
        return (int(math.prod(in_shape)),)

    def forward(self, params, state, x, *, train=False, key=None):
        return x.reshape(x.shape[0], -1), state, jnp.zeros((0,) + x.shape[1:], x.dtype)

    def backward(self, params, shape_of_x, dy):
        return {}, dy.reshape((dy.shape[0],) + shape_of_x.shape[1:])

    def __str__(self):
        return "flatten"


# ------------------------------------------------------------------------------ dropout, batch norm

@dataclasses.dataclass(frozen=True)
class Dropout(Layer):
    """Inverted dropout; ``rate`` is the probability of *dropping* a unit (stax's ``Dropout``
    takes the keep probability instead). Training: ``y = x * m / (1 - rate)`` with
    ``m ~ Bernoulli(1 - rate)`` drawn from ``key``; eval: ``y = x``. Backward reuses the mask:
    ``dx = dy * m / (1 - rate)``. Residual: ``m`` (nothing at eval)."""
    rate: float

    def __post_init__(self):
        if not 0.0 <= self.rate < 1.0:
            raise ValueError(f"dropout rate must be in [0, 1), got {self.rate}")

    def forward(self, params, state, x, *, train=False, key=None):
        if not train or self.rate == 0.0:
            return x, state, None
        if key is None:
            raise ValueError("dropout in training mode needs a PRNG key: pass key=jax.random.PRNGKey(...)")
        keep = jax.random.bernoulli(key, 1.0 - self.rate, x.shape)
        return jnp.where(keep, x / (1.0 - self.rate), jnp.zeros((), x.dtype)), state, keep

    def backward(self, params, keep, dy):
        if keep is None:
            return {}, dy
        return {}, jnp.where(keep, dy / (1.0 - self.rate), jnp.zeros((), dy.dtype))


class _BatchStats(tuple):
    """Batch-norm residuals of a training step: normalised by the batch's own statistics."""


class _RunningStats(tuple):
    """Batch-norm residuals at eval: normalised by the running statistics (constants)."""


jax.tree_util.register_pytree_node(_BatchStats, lambda t: (tuple(t), None), lambda _, c: _BatchStats(c))
jax.tree_util.register_pytree_node(_RunningStats, lambda t: (tuple(t), None), lambda _, c: _RunningStats(c))


@dataclasses.dataclass(frozen=True)
class BatchNorm(Layer):
    """Batch normalisation over every axis but the last (features, or channels of NHWC).

    Forward, with ``m`` values per feature in the batch:
    training ``mu = mean x``, ``var = mean (x - mu)^2`` (biased), ``x_hat = (x - mu) / sqrt(var + eps)``,
    and the running statistics move as PyTorch's do, ``r <- (1 - momentum) r + momentum * batch stat``
    with the unbiased ``var * m / (m - 1)`` for the running variance; eval normalises with the
    running statistics. Then ``y = scale * x_hat + shift``.

    Backward: ``dscale = sum dy * x_hat``, ``dshift = sum dy``, and

    - training (``mu`` and ``var`` depend on ``x``):
      ``dx = scale / (m sqrt(var + eps)) * (m dy - dshift - x_hat * dscale)``
    - eval (constants): ``dx = dy * scale / sqrt(r_var + eps)``.

    Residuals: ``x_hat`` and ``1 / sqrt(var + eps)``, tagged with the mode.
    """
    momentum: float = 0.1
    eps: float = 1e-5

    def init(self, key, in_shape, dtype=jnp.float32):
        c = in_shape[-1]
        params = {"scale": jnp.ones((c,), dtype), "shift": jnp.zeros((c,), dtype)}
        return params, {"mean": jnp.zeros((c,), dtype), "var": jnp.ones((c,), dtype)}, tuple(in_shape)

    def forward(self, params, state, x, *, train=False, key=None):
        axes = tuple(range(x.ndim - 1))
        if train:
            m = x.size // x.shape[-1]
            if m < 2:
                raise ValueError(f"batch norm in training mode needs more than one value per feature to "
                                 f"normalise, but input of shape {tuple(x.shape)} has {m}: use a batch of at least 2")
            mean = jnp.mean(x, axes)
            var = jnp.mean(jnp.square(x - mean), axes)
            mom = self.momentum
            state = {"mean": (1 - mom) * state["mean"] + mom * mean,
                     "var": (1 - mom) * state["var"] + mom * var * (m / (m - 1))}
        else:
            mean, var = state["mean"], state["var"]
        inv = jax.lax.rsqrt(var + self.eps)
        x_hat = (x - mean) * inv
        res = (_BatchStats if train else _RunningStats)((x_hat, inv))
        return params["scale"] * x_hat + params["shift"], state, res

    def backward(self, params, res, dy):
        x_hat, inv = res
        axes = tuple(range(dy.ndim - 1))
        dshift = jnp.sum(dy, axes)
        dscale = jnp.sum(dy * x_hat, axes)
        if isinstance(res, _RunningStats):
            dx = dy * (params["scale"] * inv)
        else:
            m = dy.size // dy.shape[-1]
            dx = (params["scale"] * inv / m) * (m * dy - dshift - x_hat * dscale)
        return {"scale": dscale, "shift": dshift}, dx

    def __str__(self):
        return "batch_norm"


def dense(features: int, init: str = "torch") -> Dense:
    return Dense(features, init)


def conv2d(features: int, size: int = 3, impl: str = "im2col", init: str = "torch") -> Conv2D:
    return Conv2D(features, size, impl, init)


def max_pool(size: int = 2) -> MaxPool:
    return MaxPool(size)


def flatten() -> Flatten:
    return Flatten()


def dropout(rate: float) -> Dropout:
    return Dropout(rate)


def batch_norm(momentum: float = 0.1, eps: float = 1e-5) -> BatchNorm:
    """PyTorch's ``BatchNorm`` defaults: momentum 0.1, eps 1e-5."""
    return BatchNorm(momentum, eps)


# ------------------------------------------------------------------------------ the pair as a custom_vjp

def _zero_cotangent(x):
    x = jnp.asarray(x)
    if jnp.issubdtype(x.dtype, jnp.inexact):
        return jnp.zeros_like(x)
    return np.zeros(x.shape, jax.dtypes.float0)  # integer inputs (PRNG keys) take float0 cotangents


@functools.lru_cache(maxsize=None)
def hand_vjp(layer: Layer, train: bool = False):
    """``f(params, state, x, key) -> (y, new_state)``, differentiable by ``jax.grad`` through
    ``layer.backward`` (a ``jax.custom_vjp``): the state and key get zero cotangents."""
    @jax.custom_vjp
    def f(params, state, x, key):
        y, new_state, _ = layer.forward(params, state, x, train=train, key=key)
        return y, new_state

    def fwd(params, state, x, key):
        y, new_state, res = layer.forward(params, state, x, train=train, key=key)
        return (y, new_state), (params, res, state, key)

    def bwd(saved, cotangents):
        params, res, state, key = saved
        dparams, dx = layer.backward(params, res, cotangents[0])
        return (dparams, jax.tree_util.tree_map(_zero_cotangent, state), dx,
                jax.tree_util.tree_map(_zero_cotangent, key))

    f.defvjp(fwd, bwd)
    return f
