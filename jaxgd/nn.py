"""Pure models: an MLP that keeps its forward cache, and sequential models (CNN, dropout, batch norm).

A model is two pure functions: ``init(key, ...) -> params`` and a forward that
maps ``(params, x)`` to an output. Params are plain pytrees: an MLP is a list of
``{"W": (d_in, d_out), "b": (d_out,)}`` dicts and a layer computes
``z = x @ W + b`` (row-major samples, as ``torch.nn.Linear`` with ``W`` stored
transposed). Weight decay in a loss (``losses.l2_penalty``) sees every leaf named
``"W"`` and nothing else.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp

# name -> (f(z), f'(z) written with z and a = f(z), whichever is cheaper)
ACTIVATIONS = {
    "relu": (jax.nn.relu, lambda z, a: (z > 0).astype(z.dtype)),
    "sigmoid": (jax.nn.sigmoid, lambda z, a: a * (1 - a)),
    "tanh": (jnp.tanh, lambda z, a: 1 - a * a),
    "identity": (lambda z: z, lambda z, a: jnp.ones_like(z)),
}

INITS = ("he", "glorot", "torch")


def resolve_activations(activations: str | Sequence[str], n_layers: int) -> tuple[str, ...]:
    """One activation name per layer.

    A single name means: that activation on every hidden layer and ``identity``
    on the output layer (logits / regression output). A sequence must name one
    activation per layer.
    """
    if isinstance(activations, str):
        if activations not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activations!r}; choose from {sorted(ACTIVATIONS)}")
        names = (activations,) * (n_layers - 1) + ("identity",)
    else:
        names = tuple(activations)
        if len(names) != n_layers:
            raise ValueError(
                f"activations has {len(names)} names but the MLP has {n_layers} layers; "
                "give one name per layer, or a single name for all hidden layers")
    for name in names:
        if name not in ACTIVATIONS:
            raise ValueError(f"unknown activation {name!r}; choose from {sorted(ACTIVATIONS)}")
    return names


def init_linear(key, d_in: int, d_out: int, init: str = "he", dtype=jnp.float32) -> dict:
    """One dense layer ``{"W": (d_in, d_out), "b": (d_out,)}``.

    - ``he``:     W ~ N(0, 2 / d_in), b = 0 (for ReLU).
    - ``glorot``: W ~ U(-r, r), r = sqrt(6 / (d_in + d_out)), b = 0 (for tanh/sigmoid).
    - ``torch``:  W, b ~ U(-1/sqrt(d_in), 1/sqrt(d_in)), PyTorch's ``nn.Linear`` default.
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


def init_mlp(key, sizes: Sequence[int], init: str = "he", dtype=jnp.float32) -> list[dict]:
    """MLP params for layer widths ``sizes = (d_0, d_1, ..., d_L)``: L dense layers."""
    sizes = tuple(int(s) for s in sizes)
    if len(sizes) < 2 or min(sizes) < 1:
        raise ValueError(f"sizes must list at least an input and an output width, all >= 1; got {sizes}")
    keys = jax.random.split(key, len(sizes) - 1)
    return [init_linear(k, a, b, init, dtype) for k, a, b in zip(keys, sizes[:-1], sizes[1:])]


def count_params(params) -> int:
    return int(sum(x.size for x in jax.tree_util.tree_leaves(params)))


def _check_mlp_input(params, x):
    if not params:
        raise ValueError("params is empty: build it with init_mlp(key, sizes)")
    d_in = params[0]["W"].shape[0]
    if x.ndim not in (1, 2) or x.shape[-1] != d_in:
        raise ValueError(
            f"MLP input must have shape (batch, {d_in}) or ({d_in},); got {tuple(x.shape)}")
    for l in range(1, len(params)):
        if params[l]["W"].shape[0] != params[l - 1]["W"].shape[1]:
            raise ValueError(
                f"layer {l} expects {params[l]['W'].shape[0]} inputs but layer {l - 1} "
                f"gives {params[l - 1]['W'].shape[1]}")


def mlp_forward(params, x, activations="relu"):
    """Forward pass that keeps what backprop needs.

    ``z_l = a_{l-1} @ W_l + b_l``, ``a_l = f_l(z_l)``, ``a_0 = x``. ``x`` is
    ``(batch, d_0)`` or a single ``(d_0,)`` example. Returns ``(a_L, cache)`` with
    ``cache = {"z": [z_1..z_L], "a": [a_0..a_L]}``.
    """
    names = resolve_activations(activations, len(params))
    _check_mlp_input(params, x)
    zs, acts = [], [x]
    for layer, name in zip(params, names):
        z = acts[-1] @ layer["W"] + layer["b"]
        zs.append(z)
        acts.append(ACTIVATIONS[name][0](z))
    return acts[-1], {"z": zs, "a": acts}


def mlp_apply(params, x, activations="relu"):
    """The MLP's output alone (see ``mlp_forward``)."""
    return mlp_forward(params, x, activations)[0]


# --------------------------------------------------------------------------------------------
# Layers for sequential models (the MNIST zoo): conv, max-pool, dropout, batch norm.
#
# A sequential model is a tuple of layer specs, e.g. ``(("conv", 32), ("relu",), ("maxpool", 2),
# ("flatten",), ("dense", 10))``. ``init_sequential`` builds ``(params, state)``: one entry per
# layer in each list (``{}`` for a layer without any). ``sequential_apply(layers, params, state,
# x, train, key)`` returns ``(output, new_state)``. Images are NHWC, conv kernels HWIO.

def conv2d(x, W, b):
    """Stride-1 "same" convolution of NHWC ``x`` with an HWIO kernel (odd height and width).

    Written as im2col + one matmul: the kh*kw shifted views of the zero-padded input are
    concatenated on the channel axis, ``(n, h, w, kh*kw*c_in) @ (kh*kw*c_in, c_out)``. On
    XLA:CPU this compiles to a fast GEMM forward and backward, where the zoo CNN built on
    ``lax.conv_general_dilated`` ran about 20x slower inside a ``lax.scan`` epoch
    (scripts/bench.py's ``lax.conv/im2col`` ratio). It equals
    ``lax.conv_general_dilated(x, W, (1, 1), "SAME")`` (a test checks it).
    """
    kh, kw, c_in, c_out = W.shape
    if x.ndim != 4 or x.shape[-1] != c_in:
        raise ValueError(f"conv2d expects NHWC input with {c_in} channels; got shape {tuple(x.shape)}")
    if kh % 2 == 0 or kw % 2 == 0:
        raise ValueError(f"conv2d supports odd kernel sizes only, got {kh}x{kw}")
    n, h, w, _ = x.shape
    xp = jnp.pad(x, ((0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0)))
    cols = jnp.concatenate([xp[:, i:i + h, j:j + w, :] for i in range(kh) for j in range(kw)], axis=-1)
    return cols @ W.reshape(kh * kw * c_in, c_out) + b


def max_pool(x, size: int = 2):
    """Non-overlapping ``size`` x ``size`` max-pooling of NHWC ``x`` by a reshape and a max.

    The gradient of a max over an axis is an elementwise mask, where ``lax.reduce_window``'s
    (select-and-scatter) was slow on XLA:CPU. Height and width must be multiples of ``size``.
    """
    n, h, w, c = x.shape
    if h % size or w % size:
        raise ValueError(f"max_pool({size}) needs height and width divisible by {size}; got {h}x{w}")
    return x.reshape(n, h // size, size, w // size, size, c).max(axis=(2, 4))


def dropout(key, x, rate: float, train: bool):
    """Inverted dropout: in training zero each unit with probability ``rate`` and scale the
    survivors by ``1 / (1 - rate)`` (so the expected activation is unchanged); identity at eval."""
    if not train or rate == 0.0:
        return x
    if key is None:
        raise ValueError("dropout in training mode needs a PRNG key: pass key=jax.random.PRNGKey(...)")
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), 0.0).astype(x.dtype)


BN_MOMENTUM, BN_EPS = 0.1, 1e-5  # PyTorch's BatchNorm defaults


def batch_norm(params, state, x, train: bool, momentum=BN_MOMENTUM, eps=BN_EPS):
    """Batch normalisation over every axis but the last (features / channels).

    Training: normalise with the batch mean and (biased) variance, then update the running
    statistics as PyTorch does, ``r <- (1 - momentum) r + momentum * batch_stat``, with the
    unbiased batch variance for ``r_var``. Eval: normalise with the running statistics. Then
    ``y = scale * x_hat + shift``. Returns ``(y, new_state)``; state is ``{"mean", "var"}``.
    """
    axes = tuple(range(x.ndim - 1))
    if train:
        mean = jnp.mean(x, axes)
        var = jnp.mean(jnp.square(x - mean), axes)
        m = x.size // x.shape[-1]
        state = {"mean": (1 - momentum) * state["mean"] + momentum * mean,
                 "var": (1 - momentum) * state["var"] + momentum * var * (m / max(m - 1, 1))}
    else:
        mean, var = state["mean"], state["var"]
    x_hat = (x - mean) * jax.lax.rsqrt(var + eps)
    return params["scale"] * x_hat + params["shift"], state


LAYERS = ("dense", "conv", "relu", "maxpool", "flatten", "dropout", "batchnorm")


def _spec(layer):
    kind, *args = layer if isinstance(layer, (tuple, list)) else (layer,)
    if kind not in LAYERS:
        raise ValueError(f"unknown layer {layer!r}; a layer is one of {LAYERS}, e.g. ('dense', 128)")
    return kind, args


def init_sequential(key, layers, in_shape, init: str = "torch", dtype=jnp.float32):
    """``(params, state)`` for ``layers`` fed examples of shape ``in_shape`` (no batch axis).

    Dense and conv layers use ``init_linear``'s schemes with fan-in = inputs per output
    (``kh*kw*c_in`` for a conv; ``"torch"`` is PyTorch's default for both). Batch norm
    starts at scale 1, shift 0, running mean 0, running variance 1.
    """
    shape, params, state = tuple(in_shape), [], []
    for i, layer in enumerate(layers):
        kind, args = _spec(layer)
        k = jax.random.fold_in(key, i)
        p, s = {}, {}
        if kind == "dense":
            if len(shape) != 1:
                raise ValueError(f"layer {i} ('dense') needs flat inputs but gets {shape}: add ('flatten',) before it")
            p, shape = init_linear(k, shape[0], args[0], init, dtype), (args[0],)
        elif kind == "conv":
            if len(shape) != 3:
                raise ValueError(f"layer {i} ('conv') needs (h, w, c) inputs, gets {shape}")
            c_out, size = args[0], (args[1] if len(args) > 1 else 3)
            lin = init_linear(k, size * size * shape[2], c_out, init, dtype)
            p, shape = {"W": lin["W"].reshape(size, size, shape[2], c_out), "b": lin["b"]}, shape[:2] + (c_out,)
        elif kind == "maxpool":
            if len(shape) != 3 or shape[0] % args[0] or shape[1] % args[0]:
                raise ValueError(f"layer {i} (maxpool {args[0]}) needs (h, w, c) inputs with h, w divisible by it, gets {shape}")
            shape = (shape[0] // args[0], shape[1] // args[0], shape[2])
        elif kind == "flatten":
            shape = (int(math.prod(shape)),)
        elif kind == "dropout":
            if not 0.0 <= args[0] < 1.0:
                raise ValueError(f"layer {i}: dropout rate must be in [0, 1), got {args[0]}")
        elif kind == "batchnorm":
            c = shape[-1]
            p = {"scale": jnp.ones((c,), dtype), "shift": jnp.zeros((c,), dtype)}
            s = {"mean": jnp.zeros((c,), dtype), "var": jnp.ones((c,), dtype)}
        params.append(p)
        state.append(s)
    return params, state


def sequential_apply(layers, params, state, x, train: bool = False, key=None):
    """Run ``layers`` on a batch ``x``; returns ``(output, new_state)``.

    ``train=True`` turns dropout on (layer ``i`` draws its mask from ``fold_in(key, i)``) and
    makes batch norm use and update batch statistics.
    """
    if len(params) != len(layers) or len(state) != len(layers):
        raise ValueError(f"{len(layers)} layers but {len(params)} params / {len(state)} state entries: "
                         "build them with init_sequential(key, layers, in_shape)")
    new_state = []
    for i, (layer, p, s) in enumerate(zip(layers, params, state)):
        kind, args = _spec(layer)
        if kind == "dense":
            x = x @ p["W"] + p["b"]
        elif kind == "conv":
            x = conv2d(x, p["W"], p["b"])
        elif kind == "relu":
            x = jax.nn.relu(x)
        elif kind == "maxpool":
            x = max_pool(x, args[0])
        elif kind == "flatten":
            x = x.reshape(x.shape[0], -1)
        elif kind == "dropout":
            x = dropout(None if key is None else jax.random.fold_in(key, i), x, args[0], train)
        elif kind == "batchnorm":
            x, s = batch_norm(p, s, x, train)
        new_state.append(s)
    return x, new_state


# The MNIST zoo: three families, each plain, with dropout, and with batch norm.
# Dropout sits after each hidden activation (after each pool in the CNN) and, in softmax
# regression, on the input pixels; batch norm sits between each hidden linear/conv layer and
# its ReLU, and on the input pixels of softmax regression (it has no hidden layer).
ZOO_FAMILIES = ("softmax", "mlp", "cnn")
ZOO_VARIANTS = ("plain", "dropout", "batchnorm")


def mnist_zoo(family: str, variant: str = "plain") -> tuple:
    """The layer list of one of the 9 MNIST models; input is a (28, 28, 1) image.

    - softmax: flatten - dense 10                                    (7,850 params)
    - mlp:     flatten - dense 256 - relu - dense 128 - relu - dense 10 (235,146 params)
    - cnn:     conv 3x3x32 - relu - pool 2 - conv 3x3x64 - relu - pool 2 - flatten
               - dense 128 - relu - dense 10                          (421,642 params)

    ``dropout``: rate 0.2 on softmax regression's input, 0.5 after the MLP's hidden ReLUs,
    0.25 after each CNN pool and 0.5 after its dense ReLU. ``batchnorm``: on the input of
    softmax regression, before every hidden ReLU of the MLP and the CNN.
    """
    if family not in ZOO_FAMILIES or variant not in ZOO_VARIANTS:
        raise ValueError(f"unknown model {family!r}/{variant!r}; families {ZOO_FAMILIES}, variants {ZOO_VARIANTS}")
    drop, bn = variant == "dropout", variant == "batchnorm"

    def block(linear, rate, pool=False):  # linear - [batchnorm] - relu - [maxpool] - [dropout]
        return ([linear] + [("batchnorm",)] * bn + [("relu",)] + [("maxpool", 2)] * pool
                + [("dropout", rate)] * drop)

    if family == "softmax":
        layers = [("flatten",)] + [("dropout", 0.2)] * drop + [("batchnorm",)] * bn + [("dense", 10)]
    elif family == "mlp":
        layers = [("flatten",)] + block(("dense", 256), 0.5) + block(("dense", 128), 0.5) + [("dense", 10)]
    else:
        layers = (block(("conv", 32), 0.25, pool=True) + block(("conv", 64), 0.25, pool=True)
                  + [("flatten",)] + block(("dense", 128), 0.5) + [("dense", 10)])
    return tuple(layers)
