"""``check``: prove a hand-written backward in one call, and say what is wrong when it is wrong.

    report = jaxgd.check(my_layer, (6,))      # a layer: any object with jaxgd's layer contract
    report = jaxgd.check(model)               # a models.Model: its reverse pass and its loss gradient
    print(report)                              # the verdict, a row per gradient, a cause per wrong one
    report.passed, report.as_dict()            # a bool, and JSON

For each mode (train, eval) and dtype (float64, float32), with parameters and running statistics
moved off their constant initial values (a ``scale`` of ones hides a missing factor) and a random
cotangent ``c`` (never all ones: batch norm's output sums to zero per feature, so an all-ones
cotangent gives dx = 0 whatever the backward does), the hand ``backward(params, residuals, c)`` is
compared with ``jax.vjp`` of the forward, leaf by leaf (every parameter and the input):

- ``exact``: equal to the last bit; ``close``: ``max |hand - vjp| / max |vjp|`` within
  ``VJP_TOLERANCES`` (1e-10 in float64, 1e-4 in float32); ``wrong`` otherwise. The denominator is at
  least ``ZERO_FLOOR`` (1/100) of the problem's largest gradient, so a gradient that is 0 on
  paper (a bias right before batch norm, in training) is not judged by its rounding noise. In
  float32 a gradient may also differ by ``F32_SLACK`` (10) times the largest float32 error
  jax.vjp itself makes on the problem (against float64): a deep network with batch norm over a
  small batch amplifies rounding. float64 is the strict test; float32 checks that the backward
  works in float32 and keeps its numbers.
- In float64, also central finite differences of ``L = sum(c * y)`` on sampled coordinates
  (INF265's elementwise relative error <= 1e-6, with a floor of 1e-5 on the denominator, raised
  to where the difference quotient's own rounding, ``10 eps sum|c y| / h``, stays under 1e-6 of it;
  a stencil that crosses a ReLU or max-pool kink is left out) and ``jax.test_util.check_vjp``
  (random directions).
- The forward's output shape and dtype, the new state's, and each gradient's shape and dtype; in
  eval mode, the state must come back unchanged.
- The backward must run under ``jit`` (every comparison above is compiled; a backward that cannot
  be traced is run eagerly instead, and the check says why it fails under jit) and under ``vmap``
  (two problems stacked) must give what it gives one problem at a time.
- A model, in training: ``model.grad`` (its loss's hand derivative, then the reverse pass) against
  ``jax.grad`` of the loss, on random labels (or targets).

Each wrong gradient gets a diagnosis: the first of ``DIAGNOSES`` that fits it, tried against the
true gradient (transposed, summed over the wrong axis, a constant factor such as the batch size
or -1, the true gradient recomputed with a square weight transposed or a kernel flipped in space,
``dy`` times a term of the input (``INPUT_TERMS``: GELU's ``x phi(x)`` forgotten) added, a
coupling term through the output forgotten (softmax's ``y sum(dy y)``) or through the batch
statistics (batch norm's ``mean(dy)`` and ``xhat mean(dy xhat)``), a pooling's gradient spread
over its window where it is routed to the maximum (or the reverse), all zero, examples mixed, a
broadcasting mistake, only some coordinates wrong: at kinks, ties, or the padded border). A diagnosis is a hypothesis about how the hand gradient was made from
the true one, printed only when applying it to the true gradient gives the hand one; where none
does, the diagnosis says the cause is not recognised. Findings across gradients and modes (the
input gradient right but a parameter's wrong; right in eval but wrong in training) come after.

A check is a few compiled programs per mode and dtype (the forward, ``jax.vjp`` and the hand
backward as one; the backward under ``vmap``; the finite-difference stencils; a model's loss
gradients), drawn on one problem made on the host, and kept for the process: a second check of the
same subject on the same shapes compiles nothing. They run once, so they are compiled with LLVM's
optimisation of the generated code off (``_jit``): same computation, rounding that may differ in the
last bits. The bench's ``startup`` section counts them.
"""
from __future__ import annotations

import collections
import dataclasses
import functools
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.test_util import check_vjp

from jaxgd import gradcheck

# The checker's programs run once, on a few examples: compiling them is most of a check's time. XLA:CPU
# spends half of that in LLVM's optimisation of the generated code, which these programs do not need:
# they are compiled with it off. The HLO (what is computed, and XLA's own passes) is the same; the
# rounding may differ in the last bits (on the suite's layers and the gallery, the errors a report
# prints moved at the 1e-11 level, and no verdict or diagnosis changed), which the checker's tolerances
# allow for. The bench's ``startup`` section counts the programs and the seconds.
_jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})

VJP_TOLERANCES = {"float64": 1e-10, "float32": 1e-4}  # max |hand - vjp| / max |vjp| per leaf
# A leaf whose true gradient is zero or nearly (in training, a bias right before batch norm: exactly
# 0 on paper, rounding noise of ~1e-15 in float64) is measured against this fraction of the
# problem's largest gradient instead of its own largest entry, which would be the noise itself.
ZERO_FLOOR = 1e-2
# float32 rounding grows with depth and with batch norm over a small batch, and spreads through the
# quantities gradients share (a bias before batch norm sums dx, 0 on paper, noise of dx's size in
# float32): a float32 gradient may also differ from jax.vjp's by F32_SLACK times the largest float32
# error jax.vjp itself makes on any gradient of the problem (against float64).
F32_SLACK = 10.0
FD_TOLERANCE, FD_EPS, FD_H, FD_PER_LEAF = 1e-6, 1e-5, 1e-4, 16
MODES = ("train", "eval")
DTYPES = ("float64", "float32")


# ------------------------------------------------------------------------------ what is checked

@dataclasses.dataclass(frozen=True)
class _Subject:
    """A layer or a model behind one interface: ``init(key, dtype) -> (params, state)``,
    ``forward(p, s, x, train, key) -> (y, s, res)``, ``backward(p, res, dy) -> (dp, dx)``."""
    name: str
    in_shape: tuple
    out_shape: tuple
    init: object
    forward: object
    backward: object
    layers: tuple  # for the kinks of the finite differences
    model: object = None


def _subject(obj, in_shape):
    from jaxgd import layers as L
    from jaxgd import models
    if isinstance(obj, models.Model):
        return _Subject(" - ".join(obj.describe()), obj.in_shape, obj.shapes()[-1], obj.init,
                        lambda p, s, x, train, key: obj.forward(p, s, x, train, key),
                        lambda p, r, dy: obj.backward(p, r, dy, with_input=True), obj.layers, obj)
    if callable(obj) and not hasattr(obj, "backward"):
        raise TypeError(f"check({getattr(obj, '__name__', obj)!r}, ...): nothing to check, it has no custom derivative "
                        "rule (jax.custom_vjp or jax.custom_jvp) and is not a layer: JAX derives its gradient itself")
    for attr in ("init", "forward", "backward"):
        if not callable(getattr(obj, attr, None)):
            raise TypeError(f"check needs a layer (init, forward, backward: see jaxgd.layers) or a models.Model; "
                            f"{obj!r} has no {attr}()")
    if in_shape is None:
        raise ValueError(f"check({obj}) needs the per-example input shape, e.g. check(layer, (6,)) or (8, 8, 3)")
    in_shape = tuple(int(s) for s in in_shape)
    out_shape = tuple(obj.out_shape(in_shape)) if hasattr(obj, "out_shape") else None
    return _Subject(str(obj), in_shape, out_shape, lambda key, dtype: obj.init(key, in_shape, dtype)[:2],
                    lambda p, s, x, train, key: obj.forward(p, s, x, train=train, key=key), obj.backward,
                    (obj,) if isinstance(obj, L.Layer) else ())


def _batch_size(shapes):
    """The smallest of 3, 5, 7, ... that is no dimension of the shapes: a gradient that kept or
    lost the batch axis then shows in its shape."""
    dims = {d for s in shapes if s for d in s}
    return next(n for n in itertools.count(3, 2) if n not in dims)


# ------------------------------------------------------------------------------ diagnoses

def _close(a, b, tol=1e-6):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return a.shape == b.shape and np.max(np.abs(a - b), initial=0.0) <= tol * max(np.max(np.abs(b), initial=0.0),
                                                                                  1e-300)


def shape_mismatch(h, t, ctx):
    """A gradient of another shape: transposed (axes permuted), the batch axis kept (not summed
    over the batch), or reduced over the wrong axis."""
    if h.shape == t.shape:
        return None
    if h.ndim == t.ndim and sorted(h.shape) == sorted(t.shape):
        for perm in itertools.permutations(range(h.ndim)):
            if perm != tuple(range(h.ndim)) and _close(np.transpose(h, perm), t, 1e-4):
                return ("transposed: hand.T equals the true gradient (e.g. dy^T x where x^T dy is meant)"
                        if h.ndim == 2 else f"axes permuted: hand.transpose{perm} equals the true gradient")
    n = ctx["batch"]
    if h.ndim == t.ndim + 1 and h.shape[0] == n and h.shape[1:] == t.shape:
        if _close(h.sum(0), t, 1e-4):
            return (f"not summed over the batch: hand keeps the batch axis (shape {h.shape}); its sum over axis 0 "
                    "equals the true gradient")
        if _close(h.mean(0), t, 1e-4):
            return (f"not reduced over the batch: hand keeps the batch axis (shape {h.shape}); its mean over axis 0 "
                    "equals the true gradient")
    wrong_axis = _reduced_over(h, t, ctx.get("c"))
    if wrong_axis:
        return wrong_axis
    return f"wrong shape: {h.shape} instead of {t.shape}"


def _reduced_over(h, t, c):
    """For a gradient that is the cotangent ``dy`` summed over some axes (a bias's): the axes of
    ``dy`` whose sum gives ``hand``, when they are not the ones whose sum gives the true gradient."""
    if c is None:
        return None
    c = np.asarray(c, np.float64)
    sums = {axes: c.sum(axis=axes) for k in range(1, c.ndim) for axes in itertools.combinations(range(c.ndim), k)}
    true_axes = [a for a, v in sums.items() if _close(v, t, 1e-6)]
    hand_axes = [a for a, v in sums.items() if _close(v, h, 1e-6)]
    if true_axes and hand_axes and hand_axes[0] not in true_axes:
        return (f"reduced over the wrong axis: hand is dy summed over axis {_axes(hand_axes[0])} (shape {h.shape}), "
                f"the true gradient dy summed over axis {_axes(true_axes[0])} (shape {t.shape})")
    return None


def _axes(axes) -> str:
    return str(axes[0]) if len(axes) == 1 else str(axes)


def transposed(h, t, ctx):
    """The right shape, but the true gradient with axes of equal length swapped (``dy^T x`` where
    ``x^T dy`` is meant, with as many inputs as outputs; a kernel's rows and columns): the shape
    cannot show it."""
    if h.shape != t.shape or h.ndim < 2:
        return None
    for perm in itertools.permutations(range(h.ndim)):
        if (perm != tuple(range(h.ndim)) and tuple(h.shape[i] for i in perm) == h.shape
                and _close(np.transpose(h, perm), t, 1e-4)):
            return ("transposed: hand.T equals the true gradient (e.g. dy^T x where x^T dy is meant)"
                    if h.ndim == 2 else f"axes permuted: hand.transpose{perm} equals the true gradient")
    return None


# a parameter changed as a backward's classic slip changes it: (test, change, what it means)
PARAM_CHANGES = (
    (lambda w: w.ndim == 2 and w.shape[0] == w.shape[1] > 1, lambda w: w.T,
     "{p} transposed: the factor used where its transpose belongs (e.g. dy W where dy W^T is meant)"),
    (lambda w: w.ndim == 4 and w.shape[0] * w.shape[1] > 1, lambda w: w[::-1, ::-1],
     "the kernel {p} flipped in space: a correlation where the backward needs a convolution, or the reverse"),
)


def factor_changed(h, t, ctx):
    """Verified: ``hand`` is the true gradient recomputed with one parameter changed by a classic
    slip (``PARAM_CHANGES``: a square weight transposed, a kernel flipped in space), to within the
    check's tolerance. Needs ``ctx["true_with"](params)``, the true gradients at other parameters."""
    redo, params, leaf = ctx.get("true_with"), ctx.get("params"), ctx.get("leaf")
    if redo is None or leaf is None:
        return None
    ws, tree = jax.tree_util.tree_flatten(params)
    names = _leaf_names(params)
    for j, w in enumerate(ws):
        w = np.asarray(w)
        for applies, change, text in PARAM_CHANGES:
            if not applies(w):
                continue
            w2 = np.ascontiguousarray(change(w))
            if np.array_equal(w2, w):
                continue
            alt = np.asarray(redo(jax.tree_util.tree_unflatten(tree, ws[:j] + [w2] + ws[j + 1:]))[leaf])
            if _close(h, alt, ctx["tol"]) and not _close(t, alt, ctx["tol"]):
                return "hand is the true gradient with " + text.format(p=names[j].removeprefix("param "))
    return None


def wrong_dtype(h, t, ctx):
    """Right shape, another dtype (a hard-coded float32, a NumPy float64)."""
    if h.dtype != ctx["dtype"]:
        right = _close(h, t, 1e-4 if h.dtype == np.float32 else 1e-10)
        values = "the values are right" if right else "the values are wrong too"
        return f"dtype {h.dtype} instead of {ctx['dtype']} ({values}): a hard-coded dtype in the backward?"
    return None


def all_zero(h, t, ctx):
    if not np.any(h) and np.any(t):
        return "zero everywhere: a term that is never computed, or a gradient that is dropped"
    return None


FACTORS = (("the batch size {n}", lambda n: n),
           ("1 / the batch size {n} (a mean where the forward sums)", lambda n: 1 / n),
           ("-1 (the sign is flipped)", lambda n: -1.0), ("2", lambda n: 2.0),
           ("1/2 (a factor 2 is missing)", lambda n: 0.5))


def constant_factor(h, t, ctx):
    """``hand = k * true`` for one constant ``k``: named when it is the batch size, its inverse, -1, 2 or 1/2."""
    tt = float(np.sum(t * t))
    if tt == 0:
        return None
    k = float(np.sum(h * t)) / tt
    if not _close(h, k * t, 1e-6) or abs(k - 1) < 1e-6:
        return None
    for text, f in FACTORS:
        v = f(ctx["batch"])
        if abs(k - v) <= 1e-6 * abs(v):
            return f"off by a constant factor {text.format(n=ctx['batch'])}: hand = {k:g} * true"
    return f"off by a constant factor: hand = {k:.6g} * true"


def mixes_examples(h, t, ctx):
    """For the input gradient: ``dx`` of one example depends on ``dy`` of another in the hand
    backward but not in the true one (a sum or mean over the batch axis that belongs on another)."""
    probe = ctx.get("coupling")
    if probe is None or not ctx["is_input"]:
        return None
    hand_couples, true_couples = probe()
    if hand_couples and not true_couples:
        return ("mixes examples: dy of example 0 changes dx of the other examples, which the layer never "
                "does (a sum or mean over the batch axis where the features' axis is meant)")
    return None


def _rounding(h, t) -> float:
    """A few ulps of the true gradient's scale in hand's dtype: differences below are rounding."""
    dtype = h.dtype if np.issubdtype(h.dtype, np.floating) else np.float64
    return 16 * float(np.finfo(dtype).eps) * float(np.max(np.abs(t), initial=0.0))


def broadcast_mistake(h, t, ctx):
    """``hand - true`` is the same along an axis: a term broadcast (or reduced) over the wrong axis.
    Verified: ``true`` plus that one term, broadcast along the axis, gives ``hand`` to within a
    millionth of the error itself or the dtype's rounding (a single wrong entry, however small, is
    not a broadcast)."""
    d = np.asarray(h, np.float64) - np.asarray(t, np.float64)
    if h.ndim < 2 or not np.any(d):
        return None
    for axis in range(h.ndim):
        term = d.mean(axis=axis, keepdims=True)
        if h.shape[axis] > 1 and np.max(np.abs(d - term)) <= max(1e-6 * np.max(np.abs(d)), _rounding(h, t)):
            return (f"a broadcasting mistake: hand - true is the same at every index of axis {axis} (length "
                    f"{h.shape[axis]}): a term broadcast over that axis, or reduced over the wrong one")
    return None


def pooling_swapped(h, t, ctx):
    """For a pooling layer's input gradient: ``hand`` is the other pooling's true gradient at the
    same input and ``dy``: spread evenly over each window where max pooling routes ``dy`` to the
    window's maximum, or routed where average pooling spreads. Verified by computing it."""
    from jaxgd import layers as L
    layer, x, c = ctx.get("layer"), ctx.get("x"), ctx.get("c")
    if not ctx["is_input"] or x is None or c is None or getattr(layer, "crop", False):
        return None
    if not isinstance(layer, (L.MaxPool, L.AvgPool)):
        return None
    is_max = isinstance(layer, L.MaxPool)
    other = L.AvgPool(layer.size) if is_max else L.MaxPool(layer.size)
    xj = jnp.asarray(x, ctx["dtype"])
    _, vjp = jax.vjp(lambda v: other.forward({}, {}, v)[0], xj)
    alt = np.asarray(vjp(jnp.asarray(c, ctx["dtype"]))[0])
    if not _close(h, alt, ctx["tol"]) or _close(t, alt, ctx["tol"]):
        return None
    return ("hand is average pooling's gradient: dy spread evenly over each window, where max pooling routes it to "
            "the window's maximum" if is_max else
            "hand is max pooling's gradient: dy routed to each window's maximum, where average pooling spreads it "
            "evenly over the window")


def _within(residual, t, tol) -> bool:
    """A fitted hypothesis reproduces hand: ``|hand - (true + fit)|`` is within ``tol`` of the true
    gradient's largest entry (the check's own tolerance)."""
    return np.max(np.abs(residual), initial=0.0) <= tol * max(float(np.max(np.abs(t), initial=0.0)), 1e-300)


def coupling_term(h, t, ctx):
    """For the input gradient: ``hand - true = y * s`` with one number ``s`` per row of the last
    axis (``y`` the output): the coupling term of a normalising layer forgotten or doubled, e.g.
    softmax's ``- y sum(dy y)``. Verified: ``true + y * s`` gives ``hand`` within the tolerance."""
    y, c = ctx.get("y"), ctx.get("c")
    if not ctx["is_input"] or y is None or np.shape(y) != h.shape or h.ndim < 2 or h.shape[-1] < 2:
        return None
    y = np.asarray(y, np.float64)
    d = np.asarray(h, np.float64) - np.asarray(t, np.float64)
    yy = np.sum(y * y, -1, keepdims=True)
    if not np.all(yy > 0):
        return None
    s = np.sum(d * y, -1, keepdims=True) / yy
    if np.max(np.abs(s)) == 0 or not _within(d - s * y, t, ctx["tol"]):
        return None
    text = "hand - true = y * (one number per row of the last axis): a coupling term of the derivative"
    if c is not None and np.shape(c) == h.shape:
        dyy = np.sum(np.asarray(c, np.float64) * y, -1, keepdims=True)
        for k, what in ((1.0, "forgotten"), (-1.0, "counted twice")):
            if _within(d - k * dyy * y, t, ctx["tol"]):
                return f"hand = true {'+' if k > 0 else '-'} y sum(dy y): softmax's coupling term {what}"
    return text + " forgotten or scaled (softmax's y sum(dy y), a normalisation's mean terms)"


def batch_statistics_terms(h, t, ctx):
    """For the input gradient: ``hand - true = a + b * xhat`` for each feature over the batch
    (``xhat`` the input standardised over the batch axis; least squares per feature, at least 3
    examples): batch norm's terms through the batch mean and variance, ``mean(dy)`` and
    ``xhat mean(dy xhat)``, forgotten or wrong. Verified: the fit reproduces ``hand`` within the
    tolerance."""
    x = ctx.get("x")
    if not ctx["is_input"] or x is None or np.shape(x) != h.shape or h.ndim < 2 or h.shape[0] < 3:
        return None
    n = h.shape[0]
    x2 = np.asarray(x, np.float64).reshape(n, -1)
    d = (np.asarray(h, np.float64) - np.asarray(t, np.float64)).reshape(n, -1)
    sd = x2.std(0)
    if not np.all(sd > 0):
        return None
    xhat = (x2 - x2.mean(0)) / sd
    a, b = d.mean(0), np.sum(d * xhat, 0) / np.sum(xhat * xhat, 0)
    if np.max(np.abs(a)) + np.max(np.abs(b)) == 0 or not _within(d - a - b * xhat, t, ctx["tol"]):
        return None
    return ("hand - true = a + b * xhat for each feature over the batch (xhat: the input standardised over the batch): "
            "the terms through the batch mean and variance, mean(dy) and xhat mean(dy xhat), forgotten or wrong "
            "(the batch statistics treated as constants?)")


def _phi(x):
    return np.exp(-0.5 * x * x) / np.sqrt(2 * np.pi)


def _sigmoid(x):
    return 0.5 * (1 + np.tanh(0.5 * x))


# elementwise terms an activation's derivative is made of: name -> f(x), on the host
INPUT_TERMS = {
    "x phi(x) (GELU's second term)": lambda x: x * _phi(x),
    "phi(x), the normal density": _phi,
    "Phi(x), the normal CDF": lambda x: 0.5 * (1 + np.vectorize(math.erf, otypes=[float])(x / np.sqrt(2))),
    "x": lambda x: x,
    "x^2": lambda x: x * x,
    "sigmoid(x)": _sigmoid,
    "sigmoid(x) (1 - sigmoid(x))": lambda x: _sigmoid(x) * (1 - _sigmoid(x)),
    "tanh(x)": np.tanh,
    "1 - tanh(x)^2": lambda x: 1 - np.tanh(x) ** 2,
    "exp(x)": np.exp,
}


def input_term(h, t, ctx):
    """For the input gradient of an elementwise layer: ``hand = true + k * dy * f(x)`` for one term
    ``f`` of ``INPUT_TERMS`` and a constant ``k`` (fitted by least squares): a term of the
    derivative forgotten (``k = -1``), doubled, or added. Verified: that formula gives ``hand``
    within the check's tolerance."""
    x, c = ctx.get("x"), ctx.get("c")
    if not ctx["is_input"] or x is None or c is None or not (np.shape(x) == np.shape(c) == h.shape):
        return None
    x, c = np.asarray(x, np.float64), np.asarray(c, np.float64)
    d = np.asarray(h, np.float64) - np.asarray(t, np.float64)
    for name, f in INPUT_TERMS.items():
        term = c * f(x)
        tt = float(np.sum(term * term))
        if not np.isfinite(tt) or tt == 0:
            continue
        k = float(np.sum(d * term)) / tt
        if abs(k) > 1e-6 and _within(d - k * term, t, ctx["tol"]):
            what = "forgotten" if abs(k + 1) < 1e-3 else "counted twice" if abs(k - 1) < 1e-3 else f"scaled by {k + 1:.6g}"
            return (f"hand = true {'-' if k < 0 else '+'} {abs(k):.6g} * dy * {name}: that term of the derivative "
                    f"{what}")
    return None


def some_coordinates(h, t, ctx):
    """Only some coordinates wrong: named when they are where the input is exactly 0 (a ReLU
    kink), where it has ties (a max-pool tie), or on the border of an image (the padding)."""
    d = np.abs(np.asarray(h, np.float64) - np.asarray(t, np.float64))
    # wrong: an error above a thousandth of the largest one and above the dtype's rounding, so a
    # single coordinate is found however small its error
    bad = d > max(1e-3 * np.max(d, initial=0.0), _rounding(h, t))
    k, size = int(bad.sum()), bad.size
    if not k or k == size or np.max(d[~bad]) > ctx["tol"] * max(np.max(np.abs(t)), 1e-300):
        return None  # (the rest must be right: then hand is the true gradient with those k entries changed)
    where = np.argwhere(bad)
    listed = ", ".join(str(tuple(int(i) for i in w)) for w in where[:3]) + (", ..." if k > 3 else "")
    if h.ndim == 4 and min(h.shape[1:3]) > 2:
        hh, ww = h.shape[1:3]
        rows, cols = where[:, 1], where[:, 2]
        border = int(np.minimum(np.minimum(rows, hh - 1 - rows), np.minimum(cols, ww - 1 - cols)).max()) + 1
        if 2 * border < min(hh, ww):
            return (f"only {k} of {size} coordinates wrong ({listed}), all within {border} pixel(s) of the image's "
                    "border: the padding is handled wrongly (e.g. an input gradient computed without it)")
    x = ctx.get("x")
    if ctx["is_input"] and x is not None and x.shape == h.shape:
        for side, where in (("negative", x < 0), ("positive", x > 0)):
            if np.array_equal(bad, where):
                return (f"{k} of {size} coordinates wrong ({listed}), exactly those where the input is {side}: "
                        f"the backward of the forward's x {'<' if side == 'negative' else '>'} 0 branch (e.g. a slope "
                        "forgotten)")
        xb = x[bad]
        if np.all(xb == 0):
            return (f"only {k} of {size} coordinates wrong ({listed}), all where the input is exactly 0: "
                    "a kink (ReLU's at 0), where the hand backward takes another slope than jax.vjp")
        values, counts = np.unique(x, return_counts=True)
        if np.all(np.isin(xb, values[counts > 1])):
            return (f"only {k} of {size} coordinates wrong ({listed}), all at tied input values: "
                    "a tie (max-pool's), where the hand backward breaks it another way than jax.vjp")
    if 2 * k > size:
        return None
    return f"only {k} of {size} coordinates wrong: {listed}"


# Tried in this order on a wrong gradient: the first that fits is its suspected cause.
DIAGNOSES = (shape_mismatch, transposed, wrong_dtype, all_zero, constant_factor, factor_changed, mixes_examples,
             pooling_swapped, broadcast_mistake, coupling_term, batch_statistics_terms, input_term, some_coordinates)


def diagnose(hand, true, ctx) -> str:
    """The suspected cause of a wrong gradient (``DIAGNOSES`` in turn), or a plain statement."""
    h, t = np.asarray(hand), np.asarray(true)
    for d in DIAGNOSES:
        try:
            cause = d(h, t, ctx)
        except Exception:  # a diagnosis that cannot read these arrays simply does not fit
            cause = None
        if cause:
            return cause
    return ("wrong, cause not recognised: no known mistake (a transpose, a constant factor, a broadcast term, a few "
            "wrong coordinates) turns the true gradient into hand's")


# ------------------------------------------------------------------------------ the report

@dataclasses.dataclass(frozen=True)
class Report:
    """What ``check`` found. ``rows``: one per gradient (parameter leaf or input) and mode, with
    the largest absolute and relative differences against ``jax.vjp`` in each dtype and the
    finite-difference error in float64, and a verdict (exact / close / wrong). ``findings``: a
    line per wrong gradient (its worst index and suspected cause) and per failed check."""
    subject: str
    in_shape: tuple
    batch: int
    passed: bool
    rows: tuple
    findings: tuple
    checks: tuple
    on: str | None = None  # what a function was checked at (``check(f, *args)``), instead of a batch

    def as_dict(self) -> dict:
        return {"subject": self.subject, "in_shape": list(self.in_shape), "batch": self.batch,
                "passed": self.passed, "rows": [dict(r) for r in self.rows],
                "findings": list(self.findings), "checks": [dict(c) for c in self.checks], "on": self.on}

    def causes(self) -> list[str]:
        return [f["cause"] for f in self.findings]

    def __str__(self):
        n_wrong = sum(r["verdict"] == "wrong" for r in self.rows)
        head = "PASSED" if self.passed else f"FAILED ({n_wrong} of {len(self.rows)} gradients wrong)" if n_wrong \
            else "FAILED"
        at = self.on or f"on a batch of {self.batch} x {self.in_shape}"
        lines = [f"check {self.subject} {at}: {head}", ""]
        cols = ("gradient", "mode", "verdict", "float64 abs", "float64 rel", "float32 rel", "finite diff rel")
        table = [cols] + [(r["leaf"], r["mode"], r["verdict"], _num(r.get("float64_abs")), _num(r.get("float64_rel")),
                           _num(r.get("float32_rel")), _num(r.get("fd_rel"))) for r in self.rows]
        widths = [max(len(row[i]) for row in table) for i in range(len(cols))]
        lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in table]
        failed = [c for c in self.checks if not c["ok"]]
        lines.append("")
        kinds = dict.fromkeys(c["name"].split(" (")[0] for c in self.checks)
        lines.append(f"checks: {len(self.checks) - len(failed)} of {len(self.checks)} passed"
                     + ("" if failed else f" ({', '.join(kinds)})"))
        for f in self.findings:
            lines.append(f"- {f['where']}: {f['cause']}")
        return "\n".join(lines)


def _num(v):
    return "-" if v is None else "0" if v == 0 else f"{v:.1e}"


# ------------------------------------------------------------------------------ the check

def check(subject, *args, in_shape=None, x=None, batch=None, modes=MODES, dtypes=DTYPES, seed=0,
          fd_per_leaf=FD_PER_LEAF) -> Report:
    """Check ``subject``'s hand backward (a layer with jaxgd's contract, or a ``models.Model``) on
    random examples of per-example shape ``in_shape`` (``check(layer, (6,))``; a model knows its
    own), or on ``x`` (with its batch axis; e.g. inputs with exact zeros, to look at the kinks).
    ``check(f, *args)`` checks a ``jax.custom_vjp`` or ``jax.custom_jvp`` function's rule at
    ``args`` instead (``check_function``). Returns a ``Report``; ``print`` it for the verdict. See
    the module docstring for what is compared."""
    if _custom_rule(subject) is not None:
        if x is not None or batch is not None or in_shape is not None or tuple(modes) != MODES:
            raise ValueError("check(f, *args) of a function takes its example arguments, not in_shape, x, batch or "
                             "modes")
        return check_function(subject, *args, dtypes=dtypes, seed=seed, fd_per_leaf=fd_per_leaf)
    if len(args) > 1:
        raise TypeError(f"check({subject!r}, ...) takes one input shape for a layer, got {len(args)} arguments; "
                        "example arguments are for jax.custom_vjp / custom_jvp functions")
    if args:
        if in_shape is not None:
            raise TypeError("check: the input shape is given twice (positionally and as in_shape=)")
        in_shape = args[0]
    if x is not None:
        if in_shape is not None and tuple(in_shape) != tuple(np.shape(x)[1:]):
            raise ValueError(f"x has per-example shape {tuple(np.shape(x)[1:])} but in_shape is {tuple(in_shape)}: "
                             "give one of them (x's shape after its batch axis is the input shape)")
        in_shape = tuple(np.shape(x)[1:])
    sub = _subject(subject, in_shape)
    if x is not None and tuple(np.shape(x)[1:]) != sub.in_shape:
        raise ValueError(f"x has per-example shape {np.shape(x)[1:]}, but {sub.name} takes {sub.in_shape}")
    for m in modes:
        if m not in MODES:
            raise ValueError(f"modes must be among {MODES}, got {m!r}")
    for d in dtypes:
        if d not in DTYPES:
            raise ValueError(f"dtypes must be among {DTYPES}, got {d!r}")
    n = int(np.shape(x)[0]) if x is not None else batch or _batch_size([sub.in_shape, sub.out_shape])
    problem = _problem(sub, n, x, seed)
    results = {}  # (mode, dtype) -> per-leaf comparisons
    checks, findings = [], []
    for dtype in dtypes:
        with jax.enable_x64(dtype == "float64"):
            for mode in modes:
                results[mode, dtype] = _check_one(subject, sub, n, problem, mode, dtype, fd_per_leaf, checks)
    rows = []
    names = next(iter(results.values()))["names"]
    for mode in modes:
        for i, name in enumerate(names):
            row, finding = _row(name, mode, {dtype: results[mode, dtype]["leaves"][i] for dtype in dtypes}, "jax.vjp")
            rows.append(row)
            findings += [finding] if finding else []
    findings += _cross_findings(rows, modes, names)
    findings += [{"where": c["name"], "cause": c["detail"]} for c in checks if not c["ok"]]
    passed = all(r["verdict"] != "wrong" for r in rows) and all(c["ok"] for c in checks)
    return Report(sub.name, sub.in_shape, n, passed, tuple(rows), tuple(findings), tuple(checks))


def _row(name, mode, per_dtype, truth) -> tuple[dict, dict | None]:
    """A gradient's row of the report (its errors in each dtype, the finite differences' in float64,
    and its verdict) and its finding when wrong: the first dtype's cause and worst index."""
    row, wrong, exact = {"leaf": name, "mode": mode}, [], True
    for dtype, c in per_dtype.items():
        row[f"{dtype}_abs"], row[f"{dtype}_rel"] = c["abs"], c["rel"]
        exact &= c["abs"] == 0
        if c["cause"]:
            wrong.append((dtype, c))
        if dtype == "float64":
            row["fd_rel"] = c.get("fd_rel")
            if c.get("fd_rel") is not None and c["fd_rel"] > FD_TOLERANCE and not c["cause"]:
                wrong.append((dtype, {**c, "cause": f"finite differences disagree (max rel {c['fd_rel']:.1e}) "
                                                    f"although {truth} agrees: is the forward differentiable "
                                                    "here (a kink inside the stencil)?"}))
    row["verdict"] = "wrong" if wrong else "exact" if exact else "close"
    if not wrong:
        return row, None
    dtype, c = wrong[0]
    worst = f"; worst at {c['index']}: hand {c['hand_at']:.6g}, true {c['true_at']:.6g}" if c.get("index") is not None \
        else ""
    return row, {"where": f"{name} ({mode}, {dtype})", "leaf": name, "mode": mode, "dtype": dtype,
                 "index": c.get("index"), "hand": c.get("hand_at"), "true": c.get("true_at"), "cause": c["cause"] + worst}


def _cross_findings(rows, modes, names):
    """What the rows say together: which gradients are wrong where."""
    out = []
    wrong = {(r["leaf"], r["mode"]) for r in rows if r["verdict"] == "wrong"}
    if not wrong:
        return out
    if "x" in names and len(names) > 1:
        params_wrong = sorted({l for l, _ in wrong if l != "x"})
        if params_wrong and not any(l == "x" for l, _ in wrong):
            out.append({"where": "summary", "cause": f"the input gradient is right but {', '.join(params_wrong)} "
                                                     "wrong: the error is in the parameters' formulas only"})
        elif not params_wrong:
            out.append({"where": "summary", "cause": "the parameters' gradients are right but the input gradient "
                                                     "is wrong: the error is in dx only"})
    if set(modes) == {"train", "eval"}:
        in_train = {l for l, m in wrong if m == "train"}
        in_eval = {l for l, m in wrong if m == "eval"}
        if in_train and not in_eval:
            out.append({"where": "summary", "cause": "right in eval mode, wrong in training mode: the backward misses "
                                                     "what training changes (batch statistics depend on x; dropout's "
                                                     "mask scales dy)"})
        elif in_eval and not in_train:
            out.append({"where": "summary", "cause": "right in training mode, wrong in eval mode: in eval, batch "
                                                     "norm uses its running statistics (constants), dropout is off"})
    return out


def _leaf_names(params):
    return [f"param {n}" if n else "param" for n in gradcheck.leaf_names(params)] + ["x"]


# ------------------------------------------------------------------------------ compiled pieces

_UNTRACEABLE = (jax.errors.JAXTypeError,)  # np.* on a tracer, a Python branch on a value, ...
_CACHE: collections.OrderedDict = collections.OrderedDict()
_CACHE_SIZE = 64


class _Programs:
    """The jitted pieces of checking one subject in one mode and dtype, built once per
    ``(subject, in_shape, batch, mode, dtype)`` (``_programs``): a second check of the same layer
    and shape compiles nothing. ``both`` runs the forward, ``jax.vjp`` of it and the hand backward in one program (or ``truth``
    without the hand backward, where that cannot be traced: it then runs eagerly); ``stacked``
    runs the backward under ``vmap``; ``fd`` the finite-difference stencils; ``loss_grads`` a
    model's hand loss gradient beside ``jax.grad``'s."""

    def __init__(self, sub, n, train, dtype):
        self.sub, self.n, self.train, self.dt = sub, n, train, jnp.dtype(dtype)
        self.both, self.truth = _jit(self._both), _jit(self._truth)
        self.stacked = _jit(jax.vmap(self.hand, in_axes=(None, None, 0, 0, None)))
        self.fd = _jit(self._fd)
        self.loss_grads = _jit(self._loss_grads)
        self.untraceable = None  # why the hand backward cannot be traced, once that is known

    def run(self, p, state, x, c, key, with_hand=True):
        """``(y, new_state, jax.vjp's gradients, the hand gradients)``, compiled as one program
        when the backward can be traced; otherwise the backward runs eagerly (``None`` without
        ``with_hand``) and ``untraceable`` holds the error it raised under jit."""
        if self.untraceable is None:
            try:
                return self.both(p, state, x, c, key)
            except _UNTRACEABLE as e:
                self.untraceable = e
        y, new_state, true = self.truth(p, state, x, c, key)
        return y, new_state, true, self.hand(p, state, x, c, key) if with_hand else None

    def forward(self, p, state, x, key):
        return self.sub.forward(p, state, x, self.train, key)

    def hand(self, p, state, x, c, key):
        return self.sub.backward(p, self.forward(p, state, x, key)[2], c)

    def _truth(self, p, state, x, c, key):
        y, new_state, _ = self.forward(p, state, x, key)
        true = jax.vjp(lambda p, x: self.forward(p, state, x, key)[0], p, x)[1](c)
        return y, new_state, true

    def _both(self, p, state, x, c, key):
        return self._truth(p, state, x, c, key) + (self.hand(p, state, x, c, key),)

    def _fd(self, p, state, x, c, key, index):
        from jaxgd import layers as L
        sub = self.sub

        def loss(px):
            return jnp.sum(c * self.forward(px[0], state, px[1], key)[0])

        def kinks(px):
            res = self.forward(px[0], state, px[1], key)[2]
            return gradcheck.kinks(sub.layers, res if sub.model is not None else [res])
        has_kinks = sub.layers and any(isinstance(l, (L.MaxPool, L.LeakyReLU, L.Activation))
                                       for l in L.walk(sub.layers))
        return gradcheck.fd_estimates(loss, (p, x), index, FD_H, 4, kinks if has_kinks else None)

    def _loss_grads(self, p, state, x, y, key):
        from jaxgd import losses
        model = self.sub.model
        loss_fn, _ = losses.get_loss(model.loss)
        hand = model.grad(p, state, x, y, key)[2]
        return hand, jax.grad(lambda p: loss_fn(model.forward(p, state, x, True, key)[0], y))(p)


def _problem(sub, n, x_given, seed):
    """The problem every mode and dtype checks, drawn once, in float64 and on the host: the
    parameters and state from the subject's own ``init`` (moved off constant values), the input
    (or ``x_given``), the cotangent ``c``, a second problem stacked on the first for ``vmap``, and
    a model's random labels or targets. NumPy draws what the subject does not, so drawing compiles
    no program of its own (a jitted ``jax.random`` call takes a fifth of a second to compile on CPU)."""
    k_init, k_fwd = jax.random.split(jax.random.PRNGKey(seed))
    rng = np.random.default_rng(seed)
    with jax.enable_x64(True):
        params, state = _cast(_numpy(sub.init(k_init, jnp.float64)), np.float64)
        x = (np.asarray(x_given, np.float64) if x_given is not None
             else rng.standard_normal((n,) + sub.in_shape))
        y = jax.eval_shape(lambda p, s, x: sub.forward(p, s, x, True, k_fwd)[0], params, state, x)
    params, state = gradcheck.off_constant(params, rng), gradcheck.off_constant(state, rng)
    c = rng.standard_normal(y.shape)
    pb = {"params": params, "state": state, "x": x, "c": c, "key": np.asarray(k_fwd),
          "x2": np.stack([x, rng.standard_normal(x.shape)]), "c2": np.stack([c, rng.standard_normal(c.shape)])}
    if sub.model is not None:  # random labels (or targets) for the loss gradient
        from jaxgd import losses
        pb["y"] = (rng.integers(0, y.shape[-1], y.shape[:1]).astype(np.int32) if losses.takes_labels(sub.model.loss)
                   else rng.standard_normal(y.shape))
    return pb


def _cast(tree, dtype):
    """Floating leaves as ``dtype``, on the host (``gradcheck.cast`` compiles a conversion per shape)."""
    return jax.tree_util.tree_map(lambda a: a.astype(dtype) if np.issubdtype(a.dtype, np.floating) else a, tree)


def _programs(obj, sub, n, mode, dtype) -> _Programs:
    """The compiled pieces for this check, from a small cache keyed on the subject (layers and
    models are frozen dataclasses: equal hyperparameters, equal key) and the problem's shapes."""
    key = (type(obj), obj, sub.in_shape, n, mode, dtype)
    try:
        hash(key)
    except TypeError:  # an unhashable subject is compiled afresh each time
        return _Programs(sub, n, mode == "train", dtype)
    if key not in _CACHE:
        _CACHE[key] = _Programs(sub, n, mode == "train", dtype)
        if len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
    _CACHE.move_to_end(key)
    return _CACHE[key]


def _numpy(tree):
    return jax.tree_util.tree_map(np.asarray, tree)


def _check_one(obj, sub, n, problem, mode, dtype, fd_per_leaf, checks):
    dt = jnp.dtype(dtype)
    progs = _programs(obj, sub, n, mode, dtype)
    train = mode == "train"

    def note(name, ok, detail=""):
        checks.append({"name": f"{name} ({mode}, {dtype})", "ok": bool(ok), "detail": detail})

    pb = _cast(problem, dt)
    params, state, x, c, fwd_key = pb["params"], pb["state"], pb["x"], pb["c"], pb["key"]
    y, new_state, true, got = progs.run(params, state, x, c, fwd_key)
    if progs.untraceable is not None:  # the backward ran eagerly: say why it cannot run under jit
        note("jit", False, "fails under jit: " + _explain(progs.untraceable))
    else:
        note("jit", True)
    run = lambda x, c, p=params, with_hand=True: progs.run(p, state, x, c, fwd_key, with_hand)  # noqa: E731
    want = (n,) + tuple(sub.out_shape) if sub.out_shape is not None else y.shape
    note("output shape and dtype", y.shape == want and y.dtype == dt,
         f"the forward returns {y.shape} {y.dtype}, expected {want} {dt}")
    s_ok = (jax.tree_util.tree_structure(new_state) == jax.tree_util.tree_structure(state)
            and all(a.shape == b.shape and a.dtype == b.dtype
                    for a, b in zip(jax.tree_util.tree_leaves(new_state), jax.tree_util.tree_leaves(state))))
    note("state shape and dtype", s_ok, "the new state has another structure, shape or dtype than the state")
    if not train and s_ok:
        same = all(np.array_equal(a, b) for a, b in zip(jax.tree_util.tree_leaves(new_state),
                                                        jax.tree_util.tree_leaves(state)))
        note("state unchanged in eval", same, "state updated in eval mode: running statistics must move in training "
                                              "only")
    names = _leaf_names(params)
    leaves_t = jax.tree_util.tree_leaves(true)
    try:
        leaves_h = jax.tree_util.tree_leaves(got[0]) + [got[1]]
        struct_ok = (jax.tree_util.tree_structure(got[0]) == jax.tree_util.tree_structure(params)
                     and got[1] is not None)
    except (TypeError, IndexError):
        leaves_h, struct_ok = [], False
    note("gradient structure", struct_ok, f"backward must return (dparams shaped like params, dx); it returned "
                                          f"{jax.tree_util.tree_structure(got)}")
    tol = VJP_TOLERANCES[dtype]
    x_np = np.asarray(x)
    ref = _float64_reference(obj, sub, n, mode, (params, state, x, c, fwd_key)) if dtype == "float32" else None
    allow = _allowances(leaves_t, tol, None if ref is None else jax.tree_util.tree_leaves(ref[2]))
    leaves = []
    for i, (name, t) in enumerate(zip(names, leaves_t)):
        h = np.asarray(leaves_h[i]) if struct_ok else np.zeros(0)
        t = np.asarray(t)
        leaf = {"abs": None, "rel": None, "cause": None}
        if h.shape == t.shape:
            diff = np.abs(h.astype(np.float64) - t.astype(np.float64))
            scale = max(float(np.max(np.abs(t), initial=0.0)), allow["floor"])
            leaf["abs"] = float(diff.max(initial=0.0))
            leaf["rel"] = leaf["abs"] / scale if leaf["abs"] else 0.0
            if diff.size:
                j = np.unravel_index(int(np.argmax(diff)), diff.shape)
                leaf.update(index=tuple(int(v) for v in j), hand_at=float(h[j]), true_at=float(t[j]))
        if not struct_ok:
            leaf["cause"] = "the backward returned another structure than (dparams, dx)"
        elif h.shape != t.shape or h.dtype != dt or leaf["abs"] > allow["abs"][i]:
            ctx = {"batch": n, "dtype": dt, "tol": tol, "is_input": name == "x", "x": x_np, "c": np.asarray(c),
                   "params": params, "leaf": i, "y": np.asarray(y), "layer": obj,
                   "true_with": lambda p: jax.tree_util.tree_leaves(run(x, c, p, with_hand=False)[2]),
                   "coupling": (lambda: _coupling(run, x, c)) if name == "x" else None}
            leaf["cause"] = diagnose(h, t, ctx)
        leaves.append(leaf)
    if dtype == "float64" and struct_ok:
        _finite_differences(progs, (params, state, x, c, fwd_key), np.asarray(y), fd_per_leaf, leaves, leaves_h)
        _check_vjp(run, params, x, c, note)
    if struct_ok:
        _stacked(progs, params, state, fwd_key, pb["x2"], pb["c2"], got, run, note, allow["abs"])
    if sub.model is not None and train:
        _loss_gradient(obj, sub, n, progs, params, state, x, pb["y"], fwd_key, dtype, note)
    return {"names": names, "leaves": leaves}


def _maxabs(a) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64)), initial=0.0))


def _float64_reference(obj, sub, n, mode, args):
    """The float64 programs of the same check run at the float32 problem's point (cast exactly):
    ``(y, new_state, jax.vjp's gradients[, hand])`` in float64."""
    with jax.enable_x64(True):
        args64 = _cast(_numpy(args), np.float64)
        return _programs(obj, sub, n, mode, "float64").run(*args64, with_hand=False)


def _allowances(true, tol, ref=None):
    """The largest ``|hand - true|`` each leaf may show: ``tol`` times the leaf's largest entry (at
    least ``ZERO_FLOOR`` of the problem's largest gradient), or, in float32, ``F32_SLACK`` times
    the largest ``|true - ref|`` of any leaf, the float32 error of ``true`` itself against the
    float64 ``ref``."""
    floor = max(max((_maxabs(t) for t in true), default=0.0) * ZERO_FLOOR, 1e-300)
    out = [tol * max(_maxabs(t), floor) for t in true]
    if ref is not None:  # rounding spreads through shared intermediates: the largest error anywhere
        noise = max((_maxabs(np.asarray(t, np.float64) - np.asarray(r)) for t, r in zip(true, ref)
                     if np.shape(t) == np.shape(r)), default=0.0)
        out = [max(a, F32_SLACK * noise) for a in out]
    return {"floor": floor, "abs": out}


def _loss_gradient(obj, sub, n, progs, params, state, x, y, key, dtype, note):
    """A model's whole training gradient, ``model.grad`` (the loss's hand derivative, then the
    reverse pass), against ``jax.grad`` of the loss of the forward, on random targets."""
    hand, true = (jax.tree_util.tree_leaves(t) for t in progs.loss_grads(params, state, x, y, key))
    ref = None
    if dtype == "float32":
        with jax.enable_x64(True):
            args64 = _cast(_numpy((params, state, x, y, key)), np.float64)
            ref = jax.tree_util.tree_leaves(_programs(obj, sub, n, "train", "float64").loss_grads(*args64)[1])
    allow = _allowances(true, VJP_TOLERANCES[dtype], ref)["abs"]
    bad = [name for name, h, t, lim in zip(gradcheck.leaf_names(params), hand, true, allow)
           if np.shape(h) != np.shape(t) or _maxabs(np.asarray(h, np.float64) - np.asarray(t)) > lim]
    note("loss gradient", not bad, f"model.grad differs from jax.grad of the {sub.model.loss} loss at "
                                   f"{', '.join(bad)}: with the reverse pass right, the loss's hand derivative "
                                   "(losses.LOSSES) is wrong")


def _coupling(run, x, c):
    """Whether changing the cotangent of example 0 changes the input gradient of other examples,
    by the hand backward and by ``jax.vjp``."""
    others = lambda a, b: bool(np.any(np.asarray(a)[1:] != np.asarray(b)[1:]))  # noqa: E731
    (*_, true, hand), (*_, true2, hand2) = run(x, c), run(x, c + (np.arange(len(c)) == 0).reshape((-1,) + (1,) * (c.ndim - 1)))
    return others(hand[1], hand2[1]), others(true[1], true2[1])


def _fd_eps(terms: float) -> float:
    """The floor of finite differences' relative error for ``L = sum(c * y)`` whose terms have
    absolute sum ``terms``: the quotient's rounding, ten ulps of those terms over ``FD_H``; below it
    central differences cannot tell 0 from noise. The same for a layer and a custom-rule function."""
    return max(FD_EPS, 10 * float(np.finfo(np.float64).eps) * terms / FD_H / FD_TOLERANCE)


def _finite_differences(progs, args, y, per_leaf, leaves, leaves_h):
    """Central differences of ``L = sum(c * y)`` at ``per_leaf`` sampled coordinates of each leaf,
    the stencils that cross a kink left out, against the hand gradient (INF265's relative error)."""
    params, _, x, c, _ = args
    eps = _fd_eps(float(np.sum(np.abs(np.asarray(c) * y))))
    coords = gradcheck.sample_coordinates((params, x), per_leaf, seed=0)
    est, valid = progs.fd(*args, gradcheck.flat_index((params, x), coords))
    fd, valid = gradcheck.split_by_leaf(est, coords), gradcheck.split_by_leaf(valid, coords)
    shapes = [np.shape(a) for a in jax.tree_util.tree_leaves((params, x))]
    for leaf, h, shape, co, est, ok in zip(leaves, leaves_h, shapes, coords, fd, valid):
        h = np.asarray(h)
        if h.shape != shape:  # a wrong shape is diagnosed already
            continue
        a = h.reshape(-1)[co].astype(np.float64)
        e = gradcheck.rel_error(a, est, eps)[ok]
        leaf["fd_rel"] = float(e.max()) if e.size else 0.0


def _check_vjp(run, params, x, c, note):
    """``jax.test_util.check_vjp`` (random directions), on NumPy values through the compiled
    forward and backward: its own arithmetic is NumPy's, so it compiles nothing more."""
    def f(p, x):
        return np.asarray(run(x, c, p, with_hand=False)[0])

    def f_vjp(p, x):
        return f(p, x), lambda ct: _numpy(run(x, ct)[3])
    p_np, x_np = _numpy(params), np.asarray(x)
    try:
        # check_vjp steps eps along a random normal direction over every coordinate, of norm
        # ~sqrt(size): keep the step itself near the finite differences' h
        size = sum(np.size(a) for a in jax.tree_util.tree_leaves((p_np, x_np)))
        check_vjp(f, f_vjp, (p_np, x_np), atol=1e-6, rtol=1e-6, eps=min(1e-5, FD_H / np.sqrt(size)))
        note("check_vjp", True)
    except AssertionError as e:
        note("check_vjp", False, "jax.test_util.check_vjp: " + str(e).strip().splitlines()[0][:200])
    except Exception as e:  # noqa: BLE001 (a broken backward may fail any way)
        note("check_vjp", False, f"jax.test_util.check_vjp raised {type(e).__name__}: {str(e)[:200]}")


def _stacked(progs, params, state, key, x2, c2, eager, run, note, allow):
    """The backward under ``vmap`` over two stacked problems against one problem at a time: within
    the leaf's allowance against ``jax.vjp`` (``_allowances``)."""
    def agree(a, b):
        return all(np.shape(u) == np.shape(v) and _maxabs(np.asarray(u, np.float64) - np.asarray(v)) <= lim
                   for u, v, lim in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), allow))
    try:
        batched = _numpy(progs.stacked(params, state, x2, c2, key))
        one = jax.tree_util.tree_map(lambda a: a[0], batched)
        two = run(x2[1], c2[1])[3]
        note("vmap", agree(one, eager) and agree(jax.tree_util.tree_map(lambda a: a[1], batched), two),
             "under vmap the backward gives other numbers than one problem at a time")
    except Exception as e:  # noqa: BLE001
        note("vmap", False, "fails under vmap: " + _explain(e))


def _explain(e) -> str:
    name = type(e).__name__
    first = (str(e).strip().splitlines() or [""])[0][:160]
    if "TracerArrayConversion" in name:
        return f"{name}: the backward turns a traced array into a NumPy one (np.* on a jax array): use jax.numpy"
    if "Concretization" in name or "TracerBool" in name:
        return f"{name}: the backward branches in Python on an array's value: use jnp.where or lax.cond"
    return f"{name}: {first}"


__all__ = ["check", "check_function", "diagnose", "Report", "DIAGNOSES", "VJP_TOLERANCES"]


# ------------------------------------------------------------------------------ a JAX function's custom rule

FD_ONLY_MAX = 4096  # coordinates: where autodiff of the primal fails, the truth is this many central differences at most


def _custom_rule(f):
    """``(kind, primal, nondiff_argnums)`` of a ``jax.custom_vjp`` or ``jax.custom_jvp`` function, else None."""
    for kind in ("custom_vjp", "custom_jvp"):
        if isinstance(f, getattr(jax, kind)):
            return kind, f.fun, tuple(f.nondiff_argnums)
    return None


class _Function:
    """A function with a custom derivative as the scalar problem ``L(v) = sum_i sum(c_i * y_i)``
    over its floating argument leaves ``v`` (the other arguments held fixed), ``y = f(args)``:
    ``jax.grad(L)`` through ``f`` uses its custom rule (the hand gradient); through the primal, plain
    autodiff (the truth)."""

    def __init__(self, f, args):
        self.kind, self.primal, self.nondiff = _custom_rule(f)
        self.f, self.args = f, tuple(args)
        self.primal_name = f"{getattr(self.primal, '__name__', 'the primal')} (f.fun)"
        self.diff = [i for i in range(len(args)) if i not in self.nondiff]
        leaves, self.treedef = jax.tree_util.tree_flatten([args[i] for i in self.diff])
        self.is_var = [np.issubdtype(np.asarray(a).dtype, np.floating) for a in leaves]
        self.leaves = [np.asarray(a) for a in leaves]
        names = gradcheck.leaf_names([args[i] for i in self.diff])
        self.names = [f"arg {self.diff[int(n.split('.')[0])]}" + (n[n.index("."):] if "." in n else "")
                      for n, v in zip(names, self.is_var) if v]

    def call(self, g, v):
        """``g`` at the arguments with the floating leaves ``v``."""
        it, full = iter(v), list(self.args)
        leaves = [next(it) if var else a for a, var in zip(self.leaves, self.is_var)]
        for i, a in zip(self.diff, jax.tree_util.tree_unflatten(self.treedef, leaves)):
            full[i] = a
        return g(*full)

    def loss(self, g, v, c, absolute=False):
        """``L = sum(c * outputs)`` over the floating outputs (``sum |c * outputs|`` with ``absolute``)."""
        outs = [o for o in jax.tree_util.tree_leaves(self.call(g, v)) if jnp.issubdtype(jnp.asarray(o).dtype, jnp.floating)]
        return sum(jnp.sum(jnp.abs(ci * o) if absolute else ci * o) for ci, o in zip(c, outs))

    def variables(self, dtype):
        return [a.astype(dtype) for a, var in zip(self.leaves, self.is_var) if var]


def check_function(f, *args, dtypes=DTYPES, seed=0, fd_per_leaf=FD_PER_LEAF) -> Report:
    """``check(f, *args)`` for ``f`` a ``jax.custom_vjp`` or ``jax.custom_jvp`` function: its rule's
    gradient of ``sum(c * f(args))`` (a random cotangent ``c`` on every floating output) with
    respect to every floating argument leaf, against autodiff of the primal ``f.fun`` (the function
    with its rule stripped) or, where that cannot be differentiated, float64 central differences;
    in each dtype, with finite differences in float64, under ``jit`` and ``vmap``. One row per
    argument leaf; integer arguments and ``nondiff_argnums`` are held fixed."""
    if _custom_rule(f) is None:
        raise TypeError(f"check({getattr(f, '__name__', f)!r}, ...): nothing to check, it has no custom derivative "
                        "rule (jax.custom_vjp or jax.custom_jvp): JAX derives its gradient itself")
    fn = _Function(f, args)
    if not fn.names:
        raise ValueError("check(f, *args): no floating argument to differentiate; give float arrays")
    # the check's own stream: a cotangent drawn as default_rng(seed) would equal an argument drawn the
    # same way (then x^T c is symmetric, and a transposed weight gradient looks right)
    rng = np.random.default_rng((seed, 0x636B))
    with jax.enable_x64(True):
        out = jax.eval_shape(lambda v: fn.call(f, v), fn.variables(np.float64))
    outs = [o for o in jax.tree_util.tree_leaves(out) if jnp.issubdtype(o.dtype, jnp.floating)]
    if not outs:
        raise ValueError("check(f, *args): f returns no floating output, so there is no gradient to check")
    c = [rng.standard_normal(o.shape) for o in outs]
    # a second point for vmap, near the given one with the same signs (it stays in f's domain: a sqrt, a log)
    v2 = [a * rng.uniform(0.9, 1.1, a.shape) for a in fn.variables(np.float64)]
    c2 = [rng.standard_normal(ci.shape) for ci in c]
    mode = fn.kind.removeprefix("custom_")
    checks, results = [], {}
    for dtype in dtypes:
        with jax.enable_x64(dtype == "float64"):
            results[dtype] = _check_function_one(fn, dtype, c, v2, c2, fd_per_leaf, mode, checks)
    rows, findings = [], []
    for i, name in enumerate(fn.names):
        row, finding = _row(name, mode, {dtype: results[dtype][i] for dtype in dtypes}, f"autodiff of {fn.primal_name}")
        rows.append(row)
        findings += [finding] if finding else []
    findings += [{"where": ch["name"], "cause": ch["detail"]} for ch in checks if not ch["ok"]]
    passed = all(r["verdict"] != "wrong" for r in rows) and all(ch["ok"] for ch in checks)
    shapes = tuple(tuple(np.shape(a)) for a in fn.leaves)
    name = f"{fn.kind} {getattr(f, '__name__', None) or getattr(fn.primal, '__name__', 'function')}"
    return Report(name, shapes, 0, passed, tuple(rows), tuple(findings), tuple(checks),
                  on="at arguments of shapes " + ", ".join(str(s) for s in shapes))


def _check_function_one(fn, dtype, c, v2, c2, fd_per_leaf, mode, checks) -> list[dict]:
    """One dtype: the hand and true gradients, their comparison per leaf, and the jit, vmap and
    (float64) finite-difference checks."""
    dt = jnp.dtype(dtype)

    def note(name, ok, detail=""):
        checks.append({"name": f"{name} ({mode}, {dtype})", "ok": bool(ok), "detail": detail})
    v, c = fn.variables(dt), [ci.astype(dt) for ci in c]
    hand_of = lambda v, c: jax.grad(lambda v: fn.loss(fn.f, v, c))(v)  # noqa: E731
    true_of = lambda v, c: jax.grad(lambda v: fn.loss(fn.primal, v, c))(v)  # noqa: E731
    try:
        true = _numpy(_jit(true_of)(v, c))
    except Exception:  # noqa: BLE001  (the primal has no derivative JAX can take: central differences)
        true = _fd_truth(fn, v, c) if dtype == "float64" else None
    if true is None:  # float32 without autodiff: float64's differences at the float32 point
        with jax.enable_x64(True):
            true = [t.astype(dt) for t in _fd_truth(fn, [a.astype(np.float64) for a in v],
                                                    [ci.astype(np.float64) for ci in c])]
    try:
        hand = _numpy(_jit(hand_of)(v, c))
        note("jit", True)
    except Exception as e:  # noqa: BLE001
        try:
            hand = _numpy(hand_of(v, c))
        except Exception as e2:  # noqa: BLE001  (it fails eagerly too: not a jit problem)
            note("custom rule runs", False, _explain_rule(e2))
            return [{"abs": None, "rel": None, "cause": "the rule raised an error (see below)"} for _ in true]
        note("jit", False, "fails under jit: " + _explain(e))
    ref = None
    if dtype == "float32":
        with jax.enable_x64(True):
            try:
                ref = _numpy(_jit(true_of)([a.astype(np.float64) for a in v], [ci.astype(np.float64) for ci in c]))
            except Exception:  # noqa: BLE001
                ref = None
    allow = _allowances(true, VJP_TOLERANCES[dtype], ref)
    leaves = []
    for i, (h, t, x) in enumerate(zip(hand, true, v)):
        h, t = np.asarray(h), np.asarray(t)
        r = {"abs": None, "rel": None, "cause": None}
        if h.shape == t.shape:
            diff = np.abs(h.astype(np.float64) - t.astype(np.float64))
            r["abs"] = float(diff.max(initial=0.0))
            r["rel"] = r["abs"] / max(float(np.max(np.abs(t), initial=0.0)), allow["floor"]) if r["abs"] else 0.0
            if diff.size:
                j = np.unravel_index(int(np.argmax(diff)), diff.shape)
                r.update(index=tuple(int(k) for k in j), hand_at=float(h[j]), true_at=float(t[j]))
        if h.shape != t.shape or h.dtype != dt or r["abs"] > allow["abs"][i]:
            # the batch: the first argument's leading axis (a bias's mean over it is the classic factor)
            batch = int(np.shape(v[0])[0]) if np.ndim(v[0]) else 1
            r["cause"] = diagnose(h, t, {"batch": batch, "dtype": dt, "tol": VJP_TOLERANCES[dtype], "is_input": True,
                                         "x": np.asarray(x), "coupling": None,
                                         # one argument and one output: dy for the elementwise-term family
                                         "c": np.asarray(c[0]) if len(c) == 1 and len(v) == 1 else None})
        leaves.append(r)
    if dtype == "float64":
        coords = gradcheck.sample_coordinates(v, fd_per_leaf, seed=0)
        est, terms = _fd_estimates(fn, v, c, coords)
        eps = _fd_eps(terms)
        for r, h, x, co, e in zip(leaves, hand, v, coords, est):
            if np.shape(h) == np.shape(x):
                r["fd_rel"] = float(np.max(gradcheck.rel_error(np.asarray(h).reshape(-1)[co], e, eps), initial=0.0))
    try:  # vmap: the rule on two stacked points, against each point alone
        stack = lambda a, b: np.stack([np.asarray(a, dt), np.asarray(b, dt)])  # noqa: E731
        vs, cs = [stack(a, b) for a, b in zip(v, v2)], [stack(a, b) for a, b in zip(c, c2)]
        batched = _numpy(_jit(jax.vmap(hand_of))(vs, cs))
        alone = _numpy(_jit(hand_of)([a[1] for a in vs], [ci[1] for ci in cs]))
        same = all(np.shape(b[0]) == np.shape(h) and _maxabs(np.asarray(b[0], np.float64) - h) <= lim
                   and _maxabs(np.asarray(b[1], np.float64) - a) <= lim
                   for b, h, a, lim in zip(batched, hand, alone, allow["abs"]))
        note("vmap", same, "under vmap the rule gives other numbers than one point at a time")
    except Exception as e:  # noqa: BLE001
        note("vmap", False, "fails under vmap: " + _explain(e))
    return leaves


def _explain_rule(e) -> str:
    """A custom rule's error in one line; JAX's check of a bwd rule's output types said plainly."""
    import re
    m = re.search(r"at output\[(\d+)\] the bwd rule produced an output of type (\S+) corresponding to an input "
                  r"of type (\S+)", str(e))
    if m:
        return (f"the bwd rule returns {m.group(2)} for argument {m.group(1)}, whose type is {m.group(3)}: each "
                "cotangent must have its argument's shape and dtype (a broadcast argument's cotangent summed over "
                "the broadcast axes)")
    m = re.search(r"got bwd output structure (PyTreeDef\(.*?\)) for primal input structure (PyTreeDef\(.*?\))\.?$",
                  str(e).strip())
    if m:
        return (f"the bwd rule returns the structure {m.group(1)} for arguments of structure {m.group(2)}: it must "
                "return a tuple with one cotangent per argument of the primal (none for its nondiff_argnums)")
    return "the rule raised " + _explain(e)


def _fd_truth(fn, v, c) -> list[np.ndarray]:
    """The gradient of ``L`` by float64 central differences at every coordinate (the truth where
    the primal cannot be differentiated by JAX)."""
    size = sum(a.size for a in v)
    if size > FD_ONLY_MAX:
        raise ValueError(f"check(f, *args): f's primal cannot be differentiated by JAX, and central differences at "
                         f"all {size} coordinates are too many (at most {FD_ONLY_MAX}): give smaller arguments")
    coords = [np.arange(a.size) for a in v]
    return [e.reshape(a.shape) for e, a in zip(_fd_estimates(fn, v, c, coords)[0], v)]


def _fd_estimates(fn, v, c, coords):
    """Float64 central differences of ``L`` through the primal at ``coords`` (one index array per
    leaf), one compiled program: one array of estimates per leaf, and the absolute sum of ``L``'s
    terms ``sum |c * y|`` (``_fd_eps``)."""
    def measure(v, c, index):
        est, _ = gradcheck.fd_estimates(lambda u: fn.loss(fn.primal, u, c), v, index, FD_H, 4)
        return est, fn.loss(fn.primal, v, c, absolute=True)
    est, terms = _jit(measure)(v, c, gradcheck.flat_index(v, coords))
    return gradcheck.split_by_leaf(est, coords), float(terms)
