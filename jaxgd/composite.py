"""Composite layers and the layer pair as a ``jax.custom_vjp``: a sequence's shapes, init,
forward and reverse pass; ``Branches`` (a residual block, stax's ``FanOut`` + ``FanInSum`` /
``FanInConcat``) whose backward runs each branch's reverse pass; ``walk`` over nested layers; and
``hand_vjp``. Re-exported by ``jaxgd.layers``, where users find them (``layers.residual``)."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import DTypeLike

from jaxgd.layers import Layer

# ------------------------------------------------------------------------------ sequences and branches


def sequence_shapes(layers: Sequence[Layer], in_shape: tuple[int, ...]) -> list[tuple]:
    """The per-example shape entering each layer of a sequence, then the output's; a layer that
    does not accept its input raises a ``ValueError`` that names it."""
    out = [tuple(in_shape)]
    for i, layer in enumerate(layers):
        try:
            out.append(tuple(layer.out_shape(out[-1])))
        except ValueError as e:
            raise ValueError(f"layer {i} ({layer}): {e}") from None
    return out


def sequence_init(
    layers: Sequence[Layer], key: jax.Array, in_shape: tuple[int, ...], dtype: DTypeLike = jnp.float32
) -> tuple[list, list, tuple]:
    """``(params, state, out_shape)`` of a sequence: lists with one entry per layer, layer ``i``
    initialised from ``fold_in(key, i)``."""
    params, state, shape = [], [], tuple(in_shape)
    for i, layer in enumerate(layers):
        p, s, shape = layer.init(jax.random.fold_in(key, i), shape, dtype)
        params.append(p)
        state.append(s)
    return params, state, shape


def _fold(key, i):
    return None if key is None else jax.random.fold_in(key, i)


def sequence_forward(
    layers: Sequence[Layer],
    params: list,
    state: list,
    x: jax.Array,
    *,
    train: bool = False,
    key: jax.Array | None = None,
) -> tuple[jax.Array, list, list]:
    """``(y, new_state, residuals)``: the layers in order, layer ``i`` drawing its randomness
    (dropout's mask) from ``fold_in(key, i)``."""
    new_state, residuals = [], []
    for i, (layer, p, s) in enumerate(zip(layers, params, state)):
        x, s, r = layer.forward(p, s, x, train=train, key=_fold(key, i))
        new_state.append(s)
        residuals.append(r)
    return x, new_state, residuals


def sequence_backward(layers: Sequence[Layer], params: list, residuals: list, dy: jax.Array) -> tuple[list, jax.Array]:
    """The reverse pass (the delta recursion): ``delta <- dy``, then for each layer from the last,
    ``(grads_i, delta) <- layer_i.backward(params_i, residuals_i, delta)``. Returns
    ``(grads, dx)``, ``dx`` the input's gradient."""
    grads = [None] * len(layers)
    for i in reversed(range(len(layers))):
        grads[i], dy = layers[i].backward(params[i], residuals[i], dy)
    return grads, dy


MERGES = ("add", "concat")


@dataclasses.dataclass(frozen=True)
class Branches(Layer):
    """A fan-out / fan-in: every branch (a tuple of layers; ``()`` is the identity) gets the same
    input, and their outputs merge by ``"add"`` (all the same shape) or ``"concat"`` (on the last
    axis), as stax's ``FanOut`` + ``parallel`` + ``FanInSum`` / ``FanInConcat``. A residual block
    ``y = f(x) + shortcut(x)`` is ``Branches((f_layers, shortcut_layers), "add")`` (``residual``).

    Forward: branch ``b`` runs as a sequence with ``fold_in(key, b)``. Backward: each branch's
    reverse pass gets ``dy`` (its slice of ``dy`` under concat), and where the paths meet again,
    at the input, their gradients add: ``dx = sum_b dx_b``. ``params``, ``state`` and residuals
    hold one list per branch. For concat, the residuals also keep an empty ``(0, c_b)`` array per
    branch, which carries the width to split ``dy`` at.
    """

    branches: tuple
    merge: str = "add"

    def __post_init__(self):
        object.__setattr__(self, "branches", tuple(tuple(b) for b in self.branches))
        if self.merge not in MERGES:
            raise ValueError(f"merge must be one of {MERGES}, got {self.merge!r}")
        if len(self.branches) < 2:
            raise ValueError(f"branches needs at least 2 branches to merge, got {len(self.branches)}")
        for b, branch in enumerate(self.branches):
            for i, layer in enumerate(branch):
                if not isinstance(layer, Layer):
                    raise ValueError(f"branch {b}, layer {i} is {layer!r}, not a layer (build it with jaxgd.layers)")

    def out_shape(self, in_shape):
        outs = []
        for b, branch in enumerate(self.branches):
            try:
                outs.append(sequence_shapes(branch, in_shape)[-1])
            except ValueError as e:
                raise ValueError(f"branch {b}: {e}") from None
        if self.merge == "add" and len(set(outs)) > 1:
            raise ValueError(
                f"add needs branch outputs of one shape; got {outs} for input {tuple(in_shape)} "
                "(a strided or wider body needs a shortcut that matches it, e.g. a 1x1 conv)"
            )
        if self.merge == "concat" and len({o[:-1] for o in outs}) > 1:
            raise ValueError(f"concat needs branch outputs that differ in the last axis only; got {outs}")
        return outs[0] if self.merge == "add" else outs[0][:-1] + (sum(o[-1] for o in outs),)

    def init(self, key, in_shape, dtype=jnp.float32):
        out = self.out_shape(tuple(in_shape))
        inits = [sequence_init(br, jax.random.fold_in(key, b), in_shape, dtype) for b, br in enumerate(self.branches)]
        return [p for p, _, _ in inits], [s for _, s, _ in inits], out

    def forward(self, params, state, x, *, train=False, key=None):
        outs, states, res = [], [], []
        for b, (branch, p, s) in enumerate(zip(self.branches, params, state)):
            y, s, r = sequence_forward(branch, p, s, x, train=train, key=_fold(key, b))
            outs.append(y)
            states.append(s)
            res.append(r)
        if self.merge == "add":
            return functools.reduce(jnp.add, outs), states, res
        widths = [jnp.zeros((0, y.shape[-1]), y.dtype) for y in outs]
        return jnp.concatenate(outs, axis=-1), states, (res, widths)

    def backward(self, params, res, dy):
        if self.merge == "add":
            dys = [dy] * len(self.branches)
        else:
            res, widths = res
            dys = jnp.split(dy, np.cumsum([w.shape[1] for w in widths])[:-1].tolist(), axis=-1)
        grads, dx = [], None
        for branch, p, r, d in zip(self.branches, params, res, dys):
            g, d = sequence_backward(branch, p, r, d)
            grads.append(g)
            dx = d if dx is None else dx + d  # the paths meet at the input: their gradients add
        return grads, dx

    def macs(self, in_shape):
        return sum(sum(l.macs(s) for l, s in zip(br, sequence_shapes(br, in_shape))) for br in self.branches)

    def __str__(self):
        inner = " | ".join(" - ".join(map(str, br)) or "identity" for br in self.branches)
        return f"{self.merge}({inner})"


def residual(body: Sequence[Layer], shortcut: Sequence[Layer] = ()) -> Branches:
    """``y = body(x) + shortcut(x)``: a residual block; ``shortcut=()`` is the identity, and a
    strided or wider body takes a projection, e.g. ``(conv2d(c, 1, stride=2),)``."""
    return Branches((tuple(body), tuple(shortcut)), "add")


def fan_in_sum(*branches: Sequence[Layer]) -> Branches:
    """``y = sum_b branch_b(x)`` (stax's ``FanOut`` + ``parallel`` + ``FanInSum``)."""
    return Branches(branches, "add")


def fan_in_concat(*branches: Sequence[Layer]) -> Branches:
    """``y = concat_b branch_b(x)`` on the last axis (stax's ``FanInConcat``)."""
    return Branches(branches, "concat")


def stateless(layers: Sequence[Layer]) -> list:
    """The state of a sequence whose layers keep none: ``{}`` per layer, a list per branch."""
    return [[stateless(b) for b in l.branches] if isinstance(l, Branches) else {} for l in layers]


def walk(layers: Sequence[Layer], residuals: list | None = None) -> Iterator:
    """Every layer of a sequence, branches opened (depth first), with its residuals when given:
    yields ``layer`` or ``(layer, residual)``."""
    for i, layer in enumerate(layers):
        r = None if residuals is None else residuals[i]
        if isinstance(layer, Branches):
            if r is not None and layer.merge == "concat":
                r = r[0]
            for b, branch in enumerate(layer.branches):
                yield from walk(branch, None if r is None else r[b])
        else:
            yield layer if residuals is None else (layer, r)


# ------------------------------------------------------------------------------ the pair as a custom_vjp


def _zero_cotangent(x):
    x = jnp.asarray(x)
    if jnp.issubdtype(x.dtype, jnp.inexact):
        return jnp.zeros_like(x)
    return np.zeros(x.shape, jax.dtypes.float0)  # integer inputs (PRNG keys) take float0 cotangents


def hand_vjp(layer: Layer, train: bool = False) -> Callable:
    """``f(params, state, x, key) -> (y, new_state)``, differentiable by ``jax.grad`` through
    ``layer.backward`` (a ``jax.custom_vjp``): the state and key get zero cotangents. Built afresh
    per call (no cache keyed on the layer): inside a jitted function it is traced once per trace,
    and a layer changed between two traces is differentiated as it is now."""

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
        return (
            dparams,
            jax.tree_util.tree_map(_zero_cotangent, state),
            dx,
            jax.tree_util.tree_map(_zero_cotangent, key),
        )

    f.defvjp(fwd, bwd)
    return f
