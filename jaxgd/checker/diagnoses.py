"""What is wrong with a wrong gradient: verified hypotheses, then observations.

One contract for every cause the checker prints. A family ``f(hand, true, ctx) -> Hypothesis | None``
proposes what the hand gradient would be had it been made by one known mistake: from the true
gradient (transposed, scaled, a term added or dropped) or from a recomputation under the mistake
(a weight transposed, a kernel flipped, the other pooling). ``diagnose`` prints the cause of the
first family (``DIAGNOSES``, in order) whose prediction reproduces ``hand`` within the check's
allowance for that gradient (``verified``). Where no family's does, it prints what can be seen of
*where* the wrong entries are (``OBSERVATIONS``: some coordinates only, at the border of an image,
in one slice of a kernel, where the input is 0, tied or negative, examples mixed, another shape)
as an observation, with its numbers, and names no cause.

``ctx`` holds what the families may read: ``batch``, ``dtype`` (the check's), ``tol`` (its relative
tolerance), ``allow`` (the largest ``|hand - true|`` allowed for this gradient), ``is_input`` (the
gradient is the input's), ``spatial`` (an NHWC input), ``x``, ``c`` (the cotangent ``dy``), ``y``
(the output), ``leaf`` and ``name`` (which gradient), ``params``, ``layer``, ``true_with(params)``
(the true gradients at other parameters) and ``coupling()`` (a probe of the batch axis).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class Hypothesis:
    """A family's claim: under ``cause``, ``of(hand)`` (hand itself by default) is ``predicted``.
    ``rtol`` replaces the check's tolerance where the claim is about another dtype's rounding;
    ``about_values``: the claim is that the values differ from the true ones (all but the dtype's)."""

    cause: str
    predicted: np.ndarray
    of: Callable | None = None
    rtol: float | None = None
    about_values: bool = True


def verified(hyp: Hypothesis, h, t, ctx) -> bool:
    """``hyp`` reproduces ``hand`` within the check's allowance for this gradient, and says
    something (its prediction is not the true gradient itself)."""
    got = np.asarray(hyp.of(h) if hyp.of is not None else h, np.float64)
    pred = np.asarray(hyp.predicted, np.float64)
    if got.shape != pred.shape or not np.all(np.isfinite(pred)) or not np.all(np.isfinite(got)):
        return False  # (NaN compares as neither more nor less: no hypothesis explains a non-finite hand)
    scale = max(maxabs(t), maxabs(pred))
    bound = hyp.rtol * scale if hyp.rtol is not None else max(ctx.get("allow", 0.0), ctx["tol"] * scale)
    bound = max(bound, _rounding(h, t))
    if np.max(np.abs(got - pred), initial=0.0) > bound:
        return False
    same_as_true = (
        hyp.about_values
        and hyp.of is None
        and pred.shape == np.shape(t)
        and np.max(np.abs(np.asarray(t, np.float64) - pred), initial=0.0) <= bound
    )
    return not same_as_true


def maxabs(a) -> float:
    """The largest ``|a|`` in float64 (0 for an empty array)."""
    return float(np.max(np.abs(np.asarray(a, np.float64)), initial=0.0))


def _listed(where) -> str:
    """The first three indices of ``where`` (``np.argwhere``'s rows) as tuples, then '...'."""
    return ", ".join(str(tuple(int(i) for i in w)) for w in where[:3]) + (", ..." if len(where) > 3 else "")


def _rounding(h, t) -> float:
    """A few ulps of the true gradient's scale in hand's dtype: differences below are rounding."""
    dtype = h.dtype if np.issubdtype(h.dtype, np.floating) else np.float64
    return 16 * float(np.finfo(dtype).eps) * maxabs(t)


def _f64(a):
    return np.asarray(a, np.float64)


# ------------------------------------------------------------------------------ the families


def _permutations(h, t):
    """The axis permutations (not the identity) that take ``t``'s shape to ``h``'s."""
    if h.ndim != t.ndim or h.ndim < 2:
        return
    for perm in itertools.permutations(range(t.ndim)):
        if perm != tuple(range(t.ndim)) and tuple(t.shape[i] for i in perm) == h.shape:
            yield perm


def transposed(h, t, ctx):
    """``hand`` is the true gradient with its axes swapped (``dy^T x`` where ``x^T dy`` is meant;
    a kernel's rows and columns), of another shape or, for axes of equal length, the same."""
    for perm in _permutations(h, t):
        text = (
            "transposed: hand.T equals the true gradient (e.g. dy^T x where x^T dy is meant)"
            if h.ndim == 2
            else f"axes permuted: hand equals the true gradient transposed by {perm}"
        )
        hyp = Hypothesis(text, np.transpose(_f64(t), perm))
        if verified(hyp, h, t, ctx):
            return hyp
    return None


def batch_kept(h, t, ctx):
    """``hand`` keeps the batch axis its sum (or mean) over the batch would remove."""
    n = ctx["batch"]
    if h.ndim != t.ndim + 1 or h.shape[0] != n or h.shape[1:] != t.shape:
        return None
    for how, reduce in (("sum", np.sum), ("mean", np.mean)):
        hyp = Hypothesis(
            f"not {'summed' if how == 'sum' else 'reduced'} over the batch: hand keeps the batch axis "
            f"(shape {h.shape}); its {how} over axis 0 equals the true gradient",
            _f64(t),
            of=lambda a, r=reduce: r(_f64(a), 0),
        )
        if verified(hyp, h, t, ctx):
            return hyp
    return None


def wrong_axis(h, t, ctx):
    """For a gradient that is ``dy`` summed over some axes (a bias's): ``hand`` is ``dy`` summed
    over other axes than the true gradient is."""
    c = ctx.get("c")
    if c is None or h.shape == t.shape:
        return None
    c = _f64(c)
    sums = {axes: c.sum(axis=axes) for k in range(1, c.ndim) for axes in itertools.combinations(range(c.ndim), k)}
    true_axes = [a for a, v in sums.items() if v.shape == t.shape and maxabs(v - t) <= 1e-6 * maxabs(t)]
    for axes, v in sums.items():
        if true_axes and axes not in true_axes and v.shape == h.shape:
            hyp = Hypothesis(
                f"reduced over the wrong axis: hand is dy summed over axis {_axes(axes)} (shape "
                f"{h.shape}), the true gradient dy summed over axis {_axes(true_axes[0])} (shape "
                f"{t.shape})",
                v,
            )
            if verified(hyp, h, t, ctx):
                return hyp
    return None


def _axes(axes) -> str:
    return str(axes[0]) if len(axes) == 1 else str(axes)


def wrong_dtype(h, t, ctx):
    """Right values (to ``hand``'s dtype's rounding) in another dtype: a hard-coded float32, a NumPy float64."""
    if h.dtype == ctx["dtype"] or h.shape != t.shape:
        return None
    return Hypothesis(
        f"dtype {h.dtype} instead of {ctx['dtype']} (the values are right): a hard-coded dtype in the backward",
        _f64(t),
        rtol=100 * float(np.finfo(h.dtype).eps) if np.issubdtype(h.dtype, np.floating) else 0.0,
        about_values=False,
    )


def all_zero(h, t, ctx):
    """``hand`` is zero everywhere where the true gradient is not."""
    if h.shape != t.shape:
        return None
    return Hypothesis(
        "zero everywhere: a term that is never computed, or a gradient that is dropped", np.zeros(h.shape)
    )


FACTORS = (
    ("the batch size {n}", lambda n: n),
    ("1 / the batch size {n} (a mean where the forward sums)", lambda n: 1 / n),
    ("-1 (the sign is flipped)", lambda n: -1.0),
    ("2", lambda n: 2.0),
    ("1/2 (a factor 2 is missing)", lambda n: 0.5),
)


def constant_factor(h, t, ctx):
    """``hand = k * true`` for one constant ``k`` (least squares), named when it is the batch size,
    its inverse, -1, 2 or 1/2."""
    if h.shape != t.shape:
        return None
    hf, tf = _f64(h), _f64(t)
    tt = float(np.sum(tf * tf))
    if tt == 0:
        return None
    k = float(np.sum(hf * tf)) / tt
    if abs(k - 1) < 1e-6:
        return None
    text = f"off by a constant factor: hand = {k:.6g} * true"
    for name, f in FACTORS:
        v = f(ctx["batch"])
        if abs(k - v) <= 1e-6 * abs(v):
            text = f"off by a constant factor {name.format(n=ctx['batch'])}: hand = {k:g} * true"
    return Hypothesis(text, k * tf)


# a parameter changed as a backward's classic slip changes it: (test, change, what it means)
PARAM_CHANGES = (
    (
        lambda w: w.ndim == 2 and w.shape[0] == w.shape[1] > 1,
        lambda w: w.T,
        "{p} transposed: the factor used where its transpose belongs (e.g. dy W where dy W^T is meant)",
    ),
    (
        lambda w: w.ndim == 4 and w.shape[0] * w.shape[1] > 1,
        lambda w: w[::-1, ::-1],
        "the kernel {p} flipped in space: a correlation where the backward needs a convolution, or the reverse",
    ),
)


def factor_changed(h, t, ctx):
    """``hand`` is the true gradient recomputed with one parameter changed by a classic slip
    (``PARAM_CHANGES``: a square weight transposed, a kernel flipped in space)."""
    redo, params, leaf = ctx.get("true_with"), ctx.get("params"), ctx.get("leaf")
    if redo is None or leaf is None or h.shape != t.shape:
        return None
    ws, tree = jax.tree_util.tree_flatten(params)
    names = ctx.get("param_names") or [str(j) for j in range(len(ws))]
    for j, w in enumerate(ws):
        w = np.asarray(w)
        for applies, change, text in PARAM_CHANGES:
            if not applies(w):
                continue
            w2 = np.ascontiguousarray(change(w))
            if np.array_equal(w2, w):
                continue
            alt = np.asarray(redo(jax.tree_util.tree_unflatten(tree, ws[:j] + [w2] + ws[j + 1 :]))[leaf])
            hyp = Hypothesis("hand is the true gradient with " + text.format(p=names[j]), alt)
            if verified(hyp, h, t, ctx):
                return hyp
    return None


def pooling_swapped(h, t, ctx):
    """For a pooling layer's input gradient: ``hand`` is the other pooling's true gradient at the
    same input and ``dy`` (average pooling's where max pooling routes to the maximum, or the reverse)."""
    from jaxgd import layers as L

    layer, x, c = ctx.get("layer"), ctx.get("x"), ctx.get("c")
    if not ctx["is_input"] or x is None or c is None or getattr(layer, "crop", False):
        return None
    if not isinstance(layer, (L.MaxPool, L.AvgPool)):
        return None
    is_max = isinstance(layer, L.MaxPool)
    other = L.AvgPool(layer.size) if is_max else L.MaxPool(layer.size)
    _, vjp = jax.vjp(lambda v: other.forward({}, {}, v)[0], jnp.asarray(x, ctx["dtype"]))
    alt = np.asarray(vjp(jnp.asarray(c, ctx["dtype"]))[0])
    return Hypothesis(
        "hand is average pooling's gradient: dy spread evenly over each window, where max pooling routes "
        "it to the window's maximum"
        if is_max
        else "hand is max pooling's gradient: dy routed to each window's maximum, where average pooling "
        "spreads it evenly over the window",
        alt,
    )


def broadcast_mistake(h, t, ctx):
    """``hand - true`` is one term, the same at every index of an axis: a term broadcast over that
    axis, or reduced over the wrong one."""
    if h.shape != t.shape or h.ndim < 2:
        return None
    d = _f64(h) - _f64(t)
    for axis in range(h.ndim):
        if h.shape[axis] > 1:
            hyp = Hypothesis(
                f"a broadcasting mistake: hand - true is the same at every index of axis {axis} (length "
                f"{h.shape[axis]}): a term broadcast over that axis, or reduced over the wrong one",
                _f64(t) + np.broadcast_to(d.mean(axis=axis, keepdims=True), d.shape),
            )
            if verified(hyp, h, t, ctx):
                return hyp
    return None


def coupling_term(h, t, ctx):
    """For the input gradient: ``hand - true = y * s`` with one number ``s`` per row of the last
    axis (``y`` the output, ``s`` fitted): a normalising layer's coupling term forgotten, doubled or
    scaled (softmax's ``- y sum(dy y)``)."""
    y, c = ctx.get("y"), ctx.get("c")
    if not ctx["is_input"] or y is None or np.shape(y) != h.shape or h.ndim < 2 or h.shape[-1] < 2:
        return None
    y, tf = _f64(y), _f64(t)
    if c is not None and np.shape(c) == h.shape:
        dyy = np.sum(_f64(c) * y, -1, keepdims=True)
        for k, what in ((1.0, "forgotten"), (-1.0, "counted twice")):
            hyp = Hypothesis(
                f"hand = true {'+' if k > 0 else '-'} y sum(dy y): softmax's coupling term {what}", tf + k * dyy * y
            )
            if verified(hyp, h, t, ctx):
                return hyp
    yy = np.sum(y * y, -1, keepdims=True)
    if not np.all(yy > 0):
        return None
    s = np.sum((_f64(h) - tf) * y, -1, keepdims=True) / yy
    return Hypothesis(
        "hand - true = y * (one number per row of the last axis): a coupling term of the derivative "
        "forgotten or scaled (softmax's y sum(dy y), a normalisation's mean terms)",
        tf + s * y,
    )


def batch_statistics_terms(h, t, ctx):
    """For the input gradient: ``hand - true = a + b * xhat`` for each feature over the batch
    (``xhat`` the input standardised over the batch axis; ``a``, ``b`` fitted; at least 3
    examples): batch norm's terms through the batch mean and variance forgotten or wrong."""
    x = ctx.get("x")
    if not ctx["is_input"] or x is None or np.shape(x) != h.shape or h.ndim < 2 or h.shape[0] < 3:
        return None
    n = h.shape[0]
    x2 = _f64(x).reshape(n, -1)
    d = (_f64(h) - _f64(t)).reshape(n, -1)
    sd = x2.std(0)
    if not np.all(sd > 0):
        return None
    xhat = (x2 - x2.mean(0)) / sd
    a, b = d.mean(0), np.sum(d * xhat, 0) / np.sum(xhat * xhat, 0)
    return Hypothesis(
        "hand - true = a + b * xhat for each feature over the batch (xhat: the input standardised over "
        "the batch): the terms through the batch mean and variance, mean(dy) and xhat mean(dy xhat), "
        "forgotten or wrong (the batch statistics treated as constants?)",
        _f64(t) + (a + b * xhat).reshape(h.shape),
    )


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
    """For the input gradient of an elementwise function: ``hand = true + k * dy * f(x)`` for one
    term ``f`` of ``INPUT_TERMS`` and a constant ``k`` (least squares): a term of the derivative
    forgotten (``k = -1``), doubled, or added."""
    x, c = ctx.get("x"), ctx.get("c")
    if not ctx["is_input"] or x is None or c is None or not (np.shape(x) == np.shape(c) == h.shape):
        return None
    x, c, tf = _f64(x), _f64(c), _f64(t)
    d = _f64(h) - tf
    for name, f in INPUT_TERMS.items():
        term = c * f(x)
        tt = float(np.sum(term * term))
        if not np.isfinite(tt) or tt == 0:
            continue
        k = float(np.sum(d * term)) / tt
        if abs(k) <= 1e-6:
            continue
        what = "forgotten" if abs(k + 1) < 1e-3 else "counted twice" if abs(k - 1) < 1e-3 else f"scaled by {k + 1:.6g}"
        hyp = Hypothesis(
            f"hand = true {'-' if k < 0 else '+'} {abs(k):.6g} * dy * {name}: that term of the derivative {what}",
            tf + k * term,
        )
        if verified(hyp, h, t, ctx):
            return hyp
    return None


# Tried in this order on a wrong gradient: the first verified one is its cause.
def _attention_grads(q, k, v, do, causal, block_k, mistake):
    """``(dq, dk, dv)`` of ``softmax(q k^T / sqrt(d)) v`` (full matrices, float64) as made with one known
    ``mistake`` (``ATTENTION_MISTAKES``' keys; ``None``: right)."""
    n, m, d = q.shape[-2], k.shape[-2], q.shape[-1]
    scale = 1 / math.sqrt(d)
    s = jnp.einsum("...nd,...md->...nm", q, k) * scale
    visible = jnp.tril(jnp.ones((n, m), bool)) if causal else jnp.ones((n, m), bool)
    lse = jax.nn.logsumexp(jnp.where(visible, s, -jnp.inf), axis=-1, keepdims=True)
    p = jnp.where(visible, jnp.exp(s - lse), 0.0)
    p_bwd = jnp.exp(s - lse) if mistake == "mask" else p  # flash recomputes P: without the mask, if forgotten
    dp = jnp.einsum("...ne,...me->...nm", do, v)
    if mistake == "d_block":  # the rowsum over each key block alone
        pad = -m % block_k
        blocks = jnp.pad(dp * p, [(0, 0)] * (dp.ndim - 1) + [(0, pad)]).reshape(dp.shape[:-1] + (-1, block_k))
        big_d = jnp.repeat(blocks.sum(-1), block_k, axis=-1)[..., :m]
    else:
        big_d = jnp.sum(dp * p, axis=-1, keepdims=True)
    ds = p_bwd * dp if mistake == "coupling" else p_bwd * (dp - big_d)
    sc = 1.0 if mistake == "scale" else scale
    a, b = (q, k) if mistake == "swapped" else (k, q)
    dq = sc * jnp.einsum("...nm,...md->...nd", ds, a)
    dk = sc * jnp.einsum("...nm,...nd->...md", ds, b)
    return dq, dk, jnp.einsum("...nm,...ne->...me", p_bwd, do)


# a mistake's key -> its cause, as printed; "heads" splits and merges the heads the wrong way in the backward
ATTENTION_MISTAKES = {
    "scale": "the 1/sqrt(d) scale forgotten in the backward: dq and dk sqrt(d) times too large",
    "coupling": "softmax's coupling term dropped: dS = P * dP, where P * (dP - rowsum(dP * P)) is meant",
    "mask": "the causal mask applied in the forward but not in the backward: P recomputed without it",
    "swapped": "dq and dk computed with each other's operand: dS q and dS^T k, where dS k and dS^T q are meant",
    "d_block": "FlashAttention's D = rowsum(dO * O) taken over each key block instead of the whole row",
    "heads": "the heads split and merged in the wrong order in the backward: (tokens, head features, heads) "
    "where the forward has (tokens, heads, head features)",
}


def attention_mistake(h, t, ctx):
    """For a multi-head attention layer: ``hand`` is the gradient its backward makes with one of
    ``ATTENTION_MISTAKES``, recomputed (in float64) from the check's input, parameters and ``dy``."""
    from jaxgd.transformer import MultiHeadAttention

    layer, x, c, leaf = ctx.get("layer"), ctx.get("x"), ctx.get("c"), ctx.get("leaf")
    if not isinstance(layer, MultiHeadAttention) or x is None or c is None or leaf is None:
        return None

    def wrong_split(t):
        b, n, d = t.shape
        return t.reshape(b, n, d // layer.heads, layer.heads).transpose(0, 3, 1, 2)

    def wrong_merge(t):
        b, heads, n, dh = t.shape
        return t.transpose(0, 2, 3, 1).reshape(b, n, heads * dh)

    with jax.enable_x64(True):
        params = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), ctx["params"])
        x64, c64 = jnp.asarray(x, jnp.float64), jnp.asarray(c, jnp.float64)
        # the plain forward's residuals start with the same q, k, v as flash's (and no lax.scan to compile)
        _, _, residuals = dataclasses.replace(layer, impl="plain").forward(params, {}, x64, train=False)
        block_k = min(layer.block_k, x64.shape[1])
        for key, cause in ATTENTION_MISTAKES.items():
            if key in ("mask", "d_block") and layer.impl != "flash":
                continue  # the plain backward keeps the masked P and never blocks the rows
            inner = None if key == "heads" else key
            fn = lambda res, do, inner=inner: _attention_grads(*res[:3], do, layer.causal, block_k, inner)
            heads = (wrong_split, wrong_merge) if key == "heads" else (None, None)
            grads = layer.backward_with(params, residuals, c64, fn, *heads)
            alt = np.asarray(jax.tree_util.tree_leaves(grads)[leaf])
            hyp = Hypothesis(cause, alt)
            if alt.shape == h.shape and verified(hyp, h, t, ctx):
                return hyp
    return None


DIAGNOSES = (
    transposed,
    batch_kept,
    wrong_axis,
    wrong_dtype,
    all_zero,
    constant_factor,
    factor_changed,
    pooling_swapped,
    attention_mistake,
    broadcast_mistake,
    coupling_term,
    batch_statistics_terms,
    input_term,
)


# ------------------------------------------------------------------------------ observations


def non_finite(h, t, ctx):
    """NaN or infinite entries in hand where the true gradient is finite."""
    bad = ~np.isfinite(np.asarray(h, np.float64))
    if h.shape != t.shape or not bad.any() or not np.all(np.isfinite(np.asarray(t, np.float64))[bad]):
        return None
    where = np.argwhere(bad)
    listed = _listed(where)
    return (
        f"{int(bad.sum())} of {bad.size} coordinates of hand are NaN or infinite ({listed}) where the true gradient "
        "is finite: an operation whose derivative is infinite there (a sqrt or log at 0, a division by 0), or a "
        "jnp.where whose branch not taken has a NaN gradient, which the where multiplies by 0 and keeps"
    )


def other_shape(h, t, ctx):
    if h.shape != t.shape:
        return f"wrong shape: {h.shape} instead of {t.shape}"
    return None


def mixes_examples(h, t, ctx):
    """For the input gradient: changing ``dy`` of example 0 changes the hand ``dx`` of other
    examples, and the true one not (measured by running both backwards again)."""
    probe = ctx.get("coupling")
    if probe is None or not ctx["is_input"]:
        return None
    hand_couples, true_couples = probe()
    if hand_couples and not true_couples:
        return (
            "mixes examples: changing dy of example 0 changes the hand dx of the other examples, which the forward "
            "never couples (a sum or mean over the batch axis?)"
        )
    return None


_HWIO = ("kernel row", "kernel column", "input channel", "output channel")


def some_coordinates(h, t, ctx):
    """Only some coordinates wrong, and where they are: in one slice of the gradient (an index of
    one axis: a kernel's input channel), within a few pixels of an image's border (an input
    gradient of a spatial layer), where the input is exactly 0, tied, negative or positive."""
    if h.shape != t.shape:
        return None
    d = np.abs(_f64(h) - _f64(t))
    # wrong: an error above a thousandth of the largest one and above the dtype's rounding, so a
    # single coordinate is found however small its error
    bad = d > max(1e-3 * np.max(d, initial=0.0), _rounding(h, t))
    k, size = int(bad.sum()), bad.size
    if not k or k == size:
        return None
    where = np.argwhere(bad)
    listed = _listed(where)
    head = f"only {k} of {size} coordinates wrong: {listed}"
    rest_right = np.max(d[~bad]) <= ctx.get("allow", ctx["tol"] * maxabs(t))
    if not rest_right:
        return None
    facts = []
    name = ctx.get("name") or "the gradient"
    for axis in range(h.ndim if k > 1 else 0):
        idx = np.unique(where[:, axis])
        if len(idx) == 1 and h.shape[axis] > 1 and h.ndim > 1:
            what = (
                f"{_HWIO[axis]} {idx[0]}" if h.ndim == 4 and not ctx["is_input"] else f"index {idx[0]} of axis {axis}"
            )
            ratio = _f64(h)[bad] / np.where(_f64(t)[bad] == 0, np.nan, _f64(t)[bad])
            same = np.all(np.isfinite(ratio)) and np.ptp(ratio) <= 1e-6 * max(1.0, np.max(np.abs(ratio)))
            facts.append(f"all in {what} of {name}" + (f", where hand = {float(ratio[0]):.6g} * true" if same else ""))
    if ctx["is_input"] and ctx.get("spatial") and h.ndim == 4 and min(h.shape[1:3]) > 2:
        hh, ww = h.shape[1:3]
        rows, cols = where[:, 1], where[:, 2]
        border = int(np.minimum(np.minimum(rows, hh - 1 - rows), np.minimum(cols, ww - 1 - cols)).max()) + 1
        if 2 * border < min(hh, ww):
            facts.append(f"all within {border} pixel(s) of the image's border, where the forward's padding takes part")
    x = ctx.get("x")
    if ctx["is_input"] and x is not None and np.shape(x) == h.shape:
        x = np.asarray(x)
        for side, at in (("negative", x < 0), ("positive", x > 0)):
            if np.array_equal(bad, at):
                facts.append(f"exactly those where the input is {side}")
        xb = x[bad]
        if np.all(xb == 0):
            facts.append("all where the input is exactly 0 (a kink: ReLU's is at 0)")
        else:
            values, counts = np.unique(x, return_counts=True)
            if np.all(np.isin(xb, values[counts > 1])):
                facts.append("all at tied input values (a tie: max pooling's)")
    if not facts and 2 * k > size:
        return None
    return head + "".join(f"; {f}" for f in facts)


OBSERVATIONS = (other_shape, non_finite, mixes_examples, some_coordinates)
UNRECOGNISED = (
    "wrong, cause not recognised: no known mistake (a transpose, a constant factor, a broadcast term, a "
    "term of the derivative, a parameter transposed or flipped) reproduces hand from the true gradient"
)


@dataclasses.dataclass(frozen=True)
class Diagnosis:
    """``kind``: ``"cause"`` (a verified hypothesis, ``family`` its name), ``"observation"`` (where
    the wrong entries are, no cause named) or ``"unknown"``; ``text`` what the report prints."""

    kind: str
    text: str
    family: str | None = None


def diagnose(hand, true, ctx, families=None, observations=None) -> Diagnosis:
    """The first verified hypothesis of ``families`` (``DIAGNOSES``) for a wrong gradient, else an
    observation (``OBSERVATIONS``), else that the cause is not recognised."""
    h, t = np.asarray(hand), np.asarray(true)
    families = DIAGNOSES if families is None else families
    observations = OBSERVATIONS if observations is None else observations
    for f in families:
        try:
            hyp = f(h, t, ctx)
            ok = hyp is not None and verified(hyp, h, t, ctx)
        except Exception:  # noqa: BLE001  (a family that cannot read these arrays does not fit)
            ok = False
        if ok:
            return Diagnosis("cause", hyp.cause, f.__name__)
    for f in observations:
        try:
            seen = f(h, t, ctx)
        except Exception:  # noqa: BLE001
            seen = None
        if seen:
            return Diagnosis("observation", f"observed: {seen} (no known mistake reproduces hand: no cause named)")
    return Diagnosis("unknown", UNRECOGNISED)
