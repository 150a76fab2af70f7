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
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax.typing import DTypeLike

from jaxgd import draws

INITS = ("he", "glorot", "torch")


def init_linear(key, d_in: int, d_out: int, init: str = "torch", dtype=jnp.float32) -> dict:
    """``{"W": (d_in, d_out), "b": (d_out,)}`` by one of three schemes (``d_in`` = fan-in):

    - ``he``:     W ~ N(0, 2 / d_in), b = 0 (for ReLU).
    - ``glorot``: W ~ U(-r, r), r = sqrt(6 / (d_in + d_out)), b = 0 (for tanh/sigmoid).
    - ``torch``:  W, b ~ U(-1/sqrt(d_in), 1/sqrt(d_in)): PyTorch's ``nn.Linear`` and ``nn.Conv2d`` default.
    """
    kw, kb = jax.random.split(key)
    if init == "he":
        W = draws.normal(kw, (d_in, d_out), dtype) * jnp.sqrt(2.0 / d_in).astype(dtype)
        b = jnp.zeros((d_out,), dtype)
    elif init == "glorot":
        r = (6.0 / (d_in + d_out)) ** 0.5
        W = draws.uniform(kw, (d_in, d_out), dtype, -r, r)
        b = jnp.zeros((d_out,), dtype)
    elif init == "torch":
        r = d_in**-0.5
        W = draws.uniform(kw, (d_in, d_out), dtype, -r, r)
        b = draws.uniform(kb, (d_out,), dtype, -r, r)
    else:
        raise ValueError(f"unknown init {init!r}; choose from {INITS}")
    return {"W": W, "b": b}


@dataclasses.dataclass(frozen=True)
class Layer:
    """The contract every layer kind implements (see the module docstring)."""

    def init(self, key: jax.Array, in_shape: tuple[int, ...], dtype: DTypeLike = jnp.float32) -> tuple[Any, Any, tuple]:
        return {}, {}, self.out_shape(tuple(in_shape))

    def out_shape(self, in_shape: tuple) -> tuple:
        return in_shape

    def forward(
        self, params: Any, state: Any, x: jax.Array, *, train: bool = False, key: jax.Array | None = None
    ) -> tuple[jax.Array, Any, Any]:
        raise NotImplementedError

    def backward(self, params: Any, residuals: Any, dy: jax.Array) -> tuple[Any, jax.Array]:
        raise NotImplementedError

    def macs(self, in_shape: tuple) -> int:
        return 0

    def __str__(self):
        args = ", ".join(f"{v!r}" for v in dataclasses.astuple(self))
        return f"{type(self).__name__.lower()}({args})"


# ------------------------------------------------------------------------------ dense


@dataclasses.dataclass(frozen=True)
class Dense(Layer):
    """``y = x W + b`` (``y = x W`` with ``bias=False``). Backward: ``dW = x^T dy`` and
    ``db = sum_batch dy`` (summed over every leading axis), ``dx = dy W^T``. Residual: ``x``."""

    features: int
    init_scheme: str = "torch"
    bias: bool = True

    def out_shape(self, in_shape):
        if len(in_shape) != 1:
            raise ValueError(
                f"dense({self.features}) needs flat inputs but gets per-example shape "
                f"{tuple(in_shape)}: put flatten() before it"
            )
        return (self.features,)

    def init(self, key, in_shape, dtype=jnp.float32):
        shape = self.out_shape(in_shape)
        p = init_linear(key, in_shape[-1], self.features, self.init_scheme, dtype)
        return (p if self.bias else {"W": p["W"]}), {}, shape

    def forward(self, params, state, x, *, train=False, key=None):
        y = x @ params["W"]
        return (y + params["b"] if self.bias else y), state, x

    def backward(self, params, x, dy):
        d_in, d_out = params["W"].shape
        x2, dy2 = x.reshape(-1, d_in), dy.reshape(-1, d_out)  # a single example is a batch of one
        grads = {"W": x2.T @ dy2, **({"b": jnp.sum(dy2, axis=0)} if self.bias else {})}
        return grads, dy @ params["W"].T

    def macs(self, in_shape):
        return int(math.prod(in_shape)) * self.features

    def __str__(self):
        return (
            f"{type(self).__name__.lower()}({self.features}, {self.init_scheme!r}{'' if self.bias else ', bias=False'})"
        )


# ------------------------------------------------------------------------------ activations

# name -> (f(z), f'(z) written with y = f(z)): the derivative needs only the output, which is the residual.
ACTIVATIONS: dict[str, tuple[Callable, Callable | None]] = {
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


def relu() -> Activation:
    """The rectifier ``y = max(x, 0)``; backward ``dx = dy * (x > 0)`` (0 at the kink, as PyTorch)."""
    return Activation("relu")


def sigmoid() -> Activation:
    """The logistic ``y = 1 / (1 + exp(-x))``; backward ``dx = dy * y (1 - y)``."""
    return Activation("sigmoid")


def tanh() -> Activation:
    """``y = tanh(x)``; backward ``dx = dy * (1 - y^2)``."""
    return Activation("tanh")


def identity() -> Activation:
    """``y = x``; backward ``dx = dy``."""
    return Activation("identity")


@dataclasses.dataclass(frozen=True)
class LeakyReLU(Layer):
    """``y = x`` where ``x > 0``, else ``slope * x``. Backward ``dx = dy`` where ``y > 0``, else
    ``slope * dy`` (for ``slope > 0``, ``y`` has the sign of ``x``; the kink at 0 gets ``slope``,
    as PyTorch's ``LeakyReLU``). Residual: ``y``."""

    slope: float = 0.01

    def __post_init__(self):
        if not 0 < self.slope < 1:
            raise ValueError(f"leaky_relu slope must be in (0, 1), got {self.slope}")

    def forward(self, params, state, x, *, train=False, key=None):
        y = jnp.where(x > 0, x, self.slope * x)
        return y, state, y

    def backward(self, params, y, dy):
        return {}, jnp.where(y > 0, dy, self.slope * dy)


_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_GELU_C = 0.044715


@dataclasses.dataclass(frozen=True)
class GELU(Layer):
    """``y = x Phi(x)``, ``Phi`` the standard normal CDF (``approximate=False``, exact), or the tanh
    form ``y = x/2 (1 + tanh(u))``, ``u = sqrt(2/pi) (x + 0.044715 x^3)`` (``approximate=True``,
    GPT-2's and ``jax.nn.gelu``'s default). Backward, from ``x``:

    - exact: ``f'(x) = Phi(x) + x phi(x)``, ``phi(x) = exp(-x^2/2) / sqrt(2 pi)``
    - tanh:  ``f'(x) = (1 + t)/2 + x/2 (1 - t^2) sqrt(2/pi) (1 + 3 * 0.044715 x^2)``, ``t = tanh(u)``

    Residual: ``x``."""

    approximate: bool = False

    def forward(self, params, state, x, *, train=False, key=None):
        return jax.nn.gelu(x, approximate=self.approximate), state, x

    def backward(self, params, x, dy):
        if self.approximate:
            t = jnp.tanh(_SQRT_2_OVER_PI * (x + _GELU_C * x**3))
            d = 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * _SQRT_2_OVER_PI * (1 + 3 * _GELU_C * x * x)
        else:
            d = 0.5 * (1 + jax.lax.erf(x / math.sqrt(2.0))) + x * jnp.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)
        return {}, dy * d

    def __str__(self):
        return f"gelu({'tanh' if self.approximate else 'exact'})"


@dataclasses.dataclass(frozen=True)
class Softmax(Layer):
    """``y = softmax(x)`` over the last axis. Backward (the Jacobian ``diag(y) - y y^T`` applied
    to ``dy``): ``dx = y * (dy - sum(dy * y))``, the sum over the last axis. Residual: ``y``."""

    def forward(self, params, state, x, *, train=False, key=None):
        y = jax.nn.softmax(x, axis=-1)
        return y, state, y

    def backward(self, params, y, dy):
        return {}, y * (dy - jnp.sum(dy * y, axis=-1, keepdims=True))

    def __str__(self):
        return "softmax"


@dataclasses.dataclass(frozen=True)
class Scale(Layer):
    """``y = factor * x``, a constant (airbench's ``Mul(1/9)`` on the logits). Backward:
    ``dx = factor * dy``. Residual: none."""

    factor: float

    def forward(self, params, state, x, *, train=False, key=None):
        return x * jnp.asarray(self.factor, x.dtype), state, None

    def backward(self, params, res, dy):
        return {}, dy * jnp.asarray(self.factor, dy.dtype)


def scale(factor: float) -> Scale:
    """``y = factor * x``, no parameters; backward ``dx = factor * dy``."""
    return Scale(float(factor))


def leaky_relu(slope: float = 0.01) -> LeakyReLU:
    """PyTorch's default negative slope, 0.01."""
    return LeakyReLU(slope)


def gelu(approximate: bool = False) -> GELU:
    """Exact by default, as PyTorch's ``nn.GELU()``; ``approximate=True`` is the tanh form."""
    return GELU(approximate)


def softmax() -> Softmax:
    """Softmax over the last axis; backward ``dx = y * (dy - sum(dy * y))`` per row."""
    return Softmax()


# ------------------------------------------------------------------------------ conv

from jaxgd.conv import (  # noqa: E402
    CONV_IMPLS,
    PADDINGS,
    WEIGHT_GRADS,
    conv,
    conv_input_grad,
    conv_out_size,
    conv_weight_grad,
    forward_impl,
    im2col,
)


@dataclasses.dataclass(frozen=True)
class Conv2D(Layer):
    """Convolution of NHWC input with an HWIO kernel, plus a bias per channel; ``stride`` and
    ``padding``: ``"same"`` pads ``size // 2`` zeros on each side (odd sizes: with stride 1 the
    output keeps the input's height and width, PyTorch's ``padding=size//2``), ``"valid"`` pads
    none. Output size ``floor((n + 2 pad - size) / stride) + 1`` (``conv_out_size``).

    Forward, two implementations of the one layer (equal up to rounding; a test checks both
    against ``lax.conv_general_dilated``):

    - ``impl="lax"``:    ``lax.conv_general_dilated``.
    - ``impl="im2col"``: ``im2col(x) @ W.reshape(kh*kw*c_in, c_out)``, one matmul.
    - ``impl="auto"`` (the default): im2col for an input of at most ``IM2COL_MAX_CHANNELS``
      channels (an image), lax.conv otherwise (``conv.forward_impl``).

    ``bias=False`` leaves the bias out (before a batch norm, which removes it anyway).
    ``weight_grad`` is how ``dW`` is computed (``conv_weight_grad``'s ``by``): as a convolution
    (the default), from the im2col matrix, or one matmul per kernel tap.
    ``init_scheme="dirac"``: PyTorch's default, then the first ``min(c_in, c_out)`` filters set to
    the identity (``torch.nn.init.dirac_``: filter ``i`` passes channel ``i`` through its centre),
    so that the convolution starts close to the identity map (airbench's convolutions).

    Backward (the same for both), with ``dy`` shaped ``(n, h_out, w_out, c_out)``:

    - ``db = sum_{n,h,w} dy``
    - ``dW = im2col(x)^T dy``, reshaped to HWIO: each kernel tap sees the input shifted by it;
      the same sum is a convolution of the input (its batch as the channels) by ``dy``
      (``conv_weight_grad_as_conv``).
    - ``dx = conv(dy, W')`` with ``W'[i, j, o, c] = W[kh-1-i, kw-1-j, c, o]``: the kernel flipped
      in space with its channel axes swapped (a stride-1 "same" convolution is its own transpose,
      up to the flip, for odd kernels); with a stride, ``dy`` is first dilated by it and padded
      so that ``dx`` has the input's shape (``conv_input_grad``).

    Residual: ``x``. Inside a compiled epoch on XLA:CPU, ``jax.grad`` of ``lax.conv`` ran an
    order of magnitude slower than these (its weight gradient is a convolution with other
    dimension numbers, which XLA:CPU runs far slower inside a ``lax.scan``); the defaults are the
    fastest combination measured in the MNIST CNN's compiled epoch, with jaxgd's compiler options
    (``jaxgd.xla``): ``jaxgd bench``'s ``cnn_epoch`` section times it beside the earlier
    im2col path, and ``conv_parts`` each part beside PyTorch's kernel for it.
    """

    features: int
    size: int = 3
    impl: str = "auto"
    init_scheme: str = "torch"
    stride: int = 1
    padding: str = "same"
    bias: bool = True
    weight_grad: str = "conv"

    def __post_init__(self):
        if self.init_scheme not in INITS + ("dirac",):
            raise ValueError(f"unknown init {self.init_scheme!r}; choose from {INITS + ('dirac',)}")
        if self.padding not in PADDINGS:
            raise ValueError(f"conv2d padding must be one of {PADDINGS}, got {self.padding!r}")
        if self.size < 1 or (self.padding == "same" and self.size % 2 == 0):
            raise ValueError(
                f"conv2d with padding 'same' supports odd kernel sizes only, got {self.size} "
                "(use padding='valid' for an even size)"
            )
        if not isinstance(self.stride, int) or self.stride < 1:
            raise ValueError(f"conv2d stride must be an integer >= 1, got {self.stride!r}")
        if self.impl not in CONV_IMPLS:
            raise ValueError(f"unknown conv impl {self.impl!r}; choose from {CONV_IMPLS}")
        if self.weight_grad not in WEIGHT_GRADS:
            raise ValueError(f"unknown conv weight_grad {self.weight_grad!r}; choose from {WEIGHT_GRADS}")

    @property
    def pad(self) -> int | None:
        """Zeros on each side, or None for stride-1 "same" (the fast path of the course models)."""
        if self.padding == "valid":
            return 0
        return None if self.stride == 1 else self.size // 2

    def out_shape(self, in_shape):
        if len(in_shape) != 3:
            raise ValueError(f"conv2d needs (height, width, channels) inputs, gets per-example shape {tuple(in_shape)}")
        hw = [conv_out_size(n, self.size, self.stride, self.pad) for n in in_shape[:2]]
        if min(hw) < 1:
            raise ValueError(
                f"conv2d({self.features}, {self.size}, padding={self.padding!r}) needs inputs of at "
                f"least {self.size} x {self.size} pixels; gets {tuple(in_shape)}"
            )
        return tuple(hw) + (self.features,)

    def init(self, key, in_shape, dtype=jnp.float32):
        shape = self.out_shape(in_shape)
        k, c_in = self.size, in_shape[2]
        scheme = "torch" if self.init_scheme == "dirac" else self.init_scheme
        lin = init_linear(key, k * k * c_in, self.features, scheme, dtype)
        W = lin["W"].reshape(k, k, c_in, self.features)
        if self.init_scheme == "dirac":
            n = min(c_in, self.features)
            W = W.at[..., :n].set(0.0).at[k // 2, k // 2, jnp.arange(n), jnp.arange(n)].set(1.0)
        return {"W": W, **({"b": lin["b"]} if self.bias else {})}, {}, shape

    def forward(self, params, state, x, *, train=False, key=None):
        W = params["W"]
        kh, kw, c_in, c_out = W.shape
        if x.ndim != 4 or x.shape[-1] != c_in:
            raise ValueError(f"conv2d expects NHWC input with {c_in} channels; got shape {tuple(x.shape)}")
        if forward_impl(self.impl, c_in) == "lax":
            y = conv(x, W, self.stride, self.pad)
        else:
            y = im2col(x, kh, kw, self.stride, self.pad) @ W.reshape(kh * kw * c_in, c_out)
        return (y + params["b"] if self.bias else y), state, x

    def backward(self, params, x, dy):
        W = params["W"]
        grads = {
            "W": conv_weight_grad(x, dy, W.shape, self.stride, self.pad, self.weight_grad),
            **({"b": jnp.sum(dy, axis=(0, 1, 2))} if self.bias else {}),
        }
        return grads, conv_input_grad(dy, W, self.stride, self.pad, x.shape[1:3])

    def macs(self, in_shape):
        h, w, _ = self.out_shape(in_shape)
        return int(h * w * self.size * self.size * in_shape[2] * self.features)

    def __str__(self):
        extra = (
            (f", stride={self.stride}" if self.stride != 1 else "")
            + (f", padding={self.padding!r}" if self.padding != "same" else "")
            + ("" if self.bias else ", bias=False")
            + (f", weight_grad={self.weight_grad!r}" if self.weight_grad != "conv" else "")
        )
        return f"conv2d({self.features}, {self.size}, {self.impl!r}, {self.init_scheme!r}{extra})"


# ------------------------------------------------------------------------------ pooling, reshaping


def _pooled_shape(name, size, in_shape, crop=False):
    """Non-overlapping ``size`` x ``size`` windows: height and width divide by ``size`` (with
    ``crop``, rounded down)."""
    if len(in_shape) != 3 or min(in_shape[:2]) < size or (not crop and (in_shape[0] % size or in_shape[1] % size)):
        raise ValueError(
            f"{name}({size}) needs (height, width, channels) inputs with height and "
            f"width divisible by {size}{' (or crop=True)' if name == 'max_pool' else ''}; "
            f"gets per-example shape {tuple(in_shape)}"
        )
    return (in_shape[0] // size, in_shape[1] // size, in_shape[2])


def _index_dtype(count: int) -> jnp.dtype:
    """The narrowest signed integer that holds the indices 0 .. count - 1."""
    return next(jnp.dtype(t) for t in (jnp.int8, jnp.int16, jnp.int32) if count - 1 <= jnp.iinfo(t).max)


@dataclasses.dataclass(frozen=True)
class MaxPool(Layer):
    """Non-overlapping ``size`` x ``size`` max-pooling of NHWC input (height and width divisible by
    ``size``; with ``crop=True`` any size, the last rows and columns that fill no window left out,
    as PyTorch's ``MaxPool2d`` does: 31 x 31 pools to 15 x 15, and those pixels get zero gradient).

    Forward: a running maximum over the ``size**2`` strided views of the windows, which also keeps
    the index of the winner; a later element wins only if strictly greater, so a tie goes to the
    *first* maximum in row-major order within the window (PyTorch's ``MaxPool2d`` rule).

    Backward: each window's ``dy`` goes to that one element, the others get 0 (``jax.grad`` of
    ``jnp.max`` instead splits ``dy`` equally among tied maxima; the forward here selects with
    ``jnp.where``, so that ``jax.grad`` of it follows the same first-maximum rule: ties are common
    in real images, in saturated regions, and in a dirac-initialised network they reach every
    layer). Residual: the winner's index per window (int8, or wider for windows of over 127 elements).

    The index is kept rather than recomputed as ``x == max(x)``: under jit, XLA may recompute ``x``
    inside two fusions that round differently, and an equality test can then select no element.
    """

    size: int = 2
    crop: bool = False

    def out_shape(self, in_shape):
        return _pooled_shape("max_pool", self.size, in_shape, self.crop)

    def forward(self, params, state, x, *, train=False, key=None):
        n, h, w, c = x.shape
        s = self.size
        self.out_shape((h, w, c))
        hs, ws = h // s, w // s
        residual_shape = jnp.zeros((0, h - hs * s, w - ws * s), jnp.int8)  # what the crop left out
        x6 = x[:, : hs * s, : ws * s].reshape(n, hs, s, ws, s, c)
        index = _index_dtype(s * s)
        best, idx = x6[:, :, 0, :, 0, :], jnp.zeros((n, h // s, w // s, c), index)
        for k in range(1, s * s):
            v = x6[:, :, k // s, :, k % s, :]
            idx = jnp.where(v > best, index.type(k), idx)
            best = jnp.where(v > best, v, best)  # not jnp.maximum: its derivative splits ties
        return best, state, (idx, residual_shape) if self.crop else idx

    def backward(self, params, res, dy):
        idx, left_out = res if self.crop else (res, None)
        s = self.size
        n, hs, ws, c = dy.shape
        where = jnp.arange(s * s, dtype=idx.dtype).reshape(1, 1, s, 1, s, 1)  # each element's index in its window
        dx = jnp.where(idx[:, :, None, :, None, :] == where, dy[:, :, None, :, None, :], jnp.zeros((), dy.dtype))
        dx = dx.reshape(n, hs * s, ws * s, c)  # (n, h/s, s, w/s, s, c) -> (n, h, w, c)
        if left_out is not None:  # the cropped rows and columns had no effect: zero gradient
            dx = jnp.pad(dx, ((0, 0), (0, left_out.shape[1]), (0, left_out.shape[2]), (0, 0)))
        return {}, dx

    def __str__(self):
        return f"{type(self).__name__.lower()}({self.size}{', crop=True' if self.crop else ''})"


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


@dataclasses.dataclass(frozen=True)
class AvgPool(Layer):
    """Non-overlapping ``size`` x ``size`` average pooling of NHWC input (height and width
    divisible by ``size``): ``y = mean of each window``. Backward: every element of a window gets
    ``dy / size**2``. Residual: none."""

    size: int = 2

    def out_shape(self, in_shape):
        return _pooled_shape("avg_pool", self.size, in_shape)

    def forward(self, params, state, x, *, train=False, key=None):
        n, h, w, c = x.shape
        s = self.size
        self.out_shape((h, w, c))
        return x.reshape(n, h // s, s, w // s, s, c).mean(axis=(2, 4)), state, None

    def backward(self, params, res, dy):
        s = self.size
        n, hs, ws, c = dy.shape
        dx = jnp.broadcast_to((dy / (s * s))[:, :, None, :, None, :], (n, hs, s, ws, s, c))
        return {}, dx.reshape(n, hs * s, ws * s, c)


@dataclasses.dataclass(frozen=True)
class GlobalAvgPool(Layer):
    """``(n, h, w, c) -> (n, c)``: the mean over all positions. Backward: ``dx = dy / (h w)`` at
    every position. Residual: an empty ``(0, h, w)`` array that carries the spatial shape."""

    def out_shape(self, in_shape):
        if len(in_shape) != 3:
            raise ValueError(f"global_avg_pool needs (height, width, channels) inputs; gets {tuple(in_shape)}")
        return (in_shape[2],)

    def forward(self, params, state, x, *, train=False, key=None):
        return x.mean(axis=(1, 2)), state, jnp.zeros((0,) + x.shape[1:3], x.dtype)

    def backward(self, params, hw, dy):
        h, w = hw.shape[1:]
        return {}, jnp.broadcast_to((dy / (h * w))[:, None, None, :], (dy.shape[0], h, w, dy.shape[1]))

    def __str__(self):
        return "global_avg_pool"


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
                raise ValueError(
                    f"batch norm in training mode needs more than one value per feature to "
                    f"normalise, but input of shape {tuple(x.shape)} has {m}: use a batch of at least 2"
                )
            mean = jnp.mean(x, axes)
            var = jnp.mean(jnp.square(x - mean), axes)
            mom = self.momentum
            state = {
                "mean": (1 - mom) * state["mean"] + mom * mean,
                "var": (1 - mom) * state["var"] + mom * var * (m / (m - 1)),
            }
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


@dataclasses.dataclass(frozen=True)
class LayerNorm(Layer):
    """Layer normalisation over the last axis (features; channels of each NHWC pixel), the same
    in training and evaluation, no running statistics. With ``d`` features:
    ``mu = mean x``, ``var = mean (x - mu)^2``, ``x_hat = (x - mu) / sqrt(var + eps)``,
    ``y = scale * x_hat + shift``.

    Backward, with ``g = dy * scale`` and sums over the last axis (mu and var depend on x):
    ``dx = 1 / (d sqrt(var + eps)) * (d g - sum g - x_hat * sum(g x_hat))``;
    ``dscale = sum_{other axes} dy * x_hat``, ``dshift = sum_{other axes} dy``.
    Residuals: ``x_hat`` and ``1 / sqrt(var + eps)``.
    """

    eps: float = 1e-5

    def init(self, key, in_shape, dtype=jnp.float32):
        c = in_shape[-1]
        return {"scale": jnp.ones((c,), dtype), "shift": jnp.zeros((c,), dtype)}, {}, tuple(in_shape)

    def forward(self, params, state, x, *, train=False, key=None):
        mean = jnp.mean(x, -1, keepdims=True)
        inv = jax.lax.rsqrt(jnp.mean(jnp.square(x - mean), -1, keepdims=True) + self.eps)
        x_hat = (x - mean) * inv
        return params["scale"] * x_hat + params["shift"], state, (x_hat, inv)

    def backward(self, params, res, dy):
        x_hat, inv = res
        axes = tuple(range(dy.ndim - 1))
        g = dy * params["scale"]
        d = dy.shape[-1]
        dx = (inv / d) * (d * g - jnp.sum(g, -1, keepdims=True) - x_hat * jnp.sum(g * x_hat, -1, keepdims=True))
        return {"scale": jnp.sum(dy * x_hat, axes), "shift": jnp.sum(dy, axes)}, dx

    def __str__(self):
        return "layer_norm"


def dense(features: int, init: str = "torch", *, bias: bool = True) -> Dense:
    """A fully connected layer ``y = x W + b`` (``W`` shaped ``(d_in, features)``); backward ``dW = x^T dy``, ``db =
    sum_batch dy``, ``dx = dy W^T``. ``init``: ``"torch"``, ``"he"`` or ``"glorot"``."""
    return Dense(features, init, bias)


def conv2d(
    features: int,
    size: int = 3,
    impl: str = "auto",
    init: str = "torch",
    *,
    stride: int = 1,
    padding: str = "same",
    bias: bool = True,
    weight_grad: str = "conv",
) -> Conv2D:
    """A 2-D convolution with ``features`` output channels and a ``size x size`` kernel (NHWC input,
    HWIO kernel): ``Conv2D``'s forward by im2col or ``lax.conv`` (``impl``; ``"auto"``: im2col for
    images of at most 4 channels), its hand backward ``dx`` as the transposed convolution and
    ``dW`` as a convolution, from the im2col columns or per kernel tap (``weight_grad``)."""
    return Conv2D(features, size, impl, init, stride, padding, bias, weight_grad)


def max_pool(size: int = 2, crop: bool = False) -> MaxPool:
    """Max pooling over ``size x size`` windows (stride ``size``); the gradient goes to each window's first maximum
    (PyTorch's rule). ``crop=True`` pools any size, leaving out what fills no window."""
    return MaxPool(size, crop)


def flatten() -> Flatten:
    """Each example's features as one vector; backward reshapes ``dy`` back."""
    return Flatten()


def dropout(rate: float) -> Dropout:
    """Inverted dropout with drop probability ``rate`` in training (``y = x * mask / (1 - rate)``), the identity in
    evaluation; backward reuses the mask."""
    return Dropout(rate)


def batch_norm(momentum: float = 0.1, eps: float = 1e-5) -> BatchNorm:
    """PyTorch's ``BatchNorm`` defaults: momentum 0.1, eps 1e-5."""
    return BatchNorm(momentum, eps)


def layer_norm(eps: float = 1e-5) -> LayerNorm:
    """PyTorch's ``LayerNorm`` default eps, 1e-5 (over the last axis only)."""
    return LayerNorm(eps)


def avg_pool(size: int = 2) -> AvgPool:
    """Average pooling over ``size x size`` windows (stride ``size``); backward spreads ``dy / size^2`` over each
    window."""
    return AvgPool(size)


def global_avg_pool() -> GlobalAvgPool:
    """The mean over height and width, one value per channel; backward spreads ``dy / (h w)``."""
    return GlobalAvgPool()


# sequences, branches and the pair as a custom_vjp (``jaxgd.composite``), here for ``layers.residual`` etc.
from jaxgd.composite import (  # noqa: E402,F401
    Branches,
    fan_in_concat,
    fan_in_sum,
    hand_vjp,
    residual,
    sequence_backward,
    sequence_forward,
    sequence_init,
    sequence_shapes,
    stateless,
    walk,
)

# a transformer's layers (``jaxgd.transformer``), here for ``layers.multi_head_attention`` etc.
from jaxgd.transformer import (  # noqa: E402,F401
    ClassToken,
    MultiHeadAttention,
    PatchEmbed,
    PositionEmbedding,
    TakeToken,
    TokenDense,
    TokenMean,
    class_token,
    multi_head_attention,
    patch_embed,
    position_embedding,
    take_token,
    token_dense,
    token_mean,
    transformer_block,
)
