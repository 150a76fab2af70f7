"""``check`` of a layer or a model: its hand backward against ``jax.vjp`` of its forward, in each
mode and dtype, with finite differences, ``check_vjp``, ``jit`` and ``vmap`` (see ``jaxgd.checker``)."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.test_util import check_vjp

from jaxgd import gradcheck
from jaxgd.checker import report as R
from jaxgd.checker.compare import (
    DTYPES,
    FD_H,
    FD_PER_LEAF,
    MODES,
    VJP_TOLERANCES,
    allowances,
    cast,
    compare_leaf,
    explain,
    fd_eps,
    maxabs,
    numpy_tree,
    within,
)
from jaxgd.checker.programs import Pieces, Programs, store_for


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
    spatial: bool = False  # an image input that a convolution or pooling reads (its border, its padding)


def _spatial(layers, in_shape) -> bool:
    from jaxgd import layers as L

    return len(in_shape) == 3 and any(isinstance(layer, (L.Conv2D, L.MaxPool, L.AvgPool)) for layer in L.walk(layers))


def _subject(obj, in_shape):
    from jaxgd import layers as L
    from jaxgd import models

    if isinstance(obj, models.Model):
        return _Subject(
            " - ".join(obj.describe()),
            obj.in_shape,
            obj.shapes()[-1],
            obj.init,
            lambda p, s, x, train, key: obj.forward(p, s, x, train, key),
            lambda p, r, dy: obj.backward(p, r, dy, with_input=True),
            obj.layers,
            obj,
            _spatial(obj.layers, tuple(obj.in_shape)),
        )
    if callable(obj) and not hasattr(obj, "backward"):
        raise TypeError(
            f"check({getattr(obj, '__name__', obj)!r}, in_shape=...): a function takes its example "
            "arguments, not an input shape: check(f, *args)"
        )
    for attr in ("init", "forward", "backward"):
        if not callable(getattr(obj, attr, None)):
            raise TypeError(
                f"check needs a layer (init, forward, backward: see jaxgd.layers) or a models.Model; "
                f"{obj!r} has no {attr}()"
            )
    if in_shape is None:
        raise ValueError(f"check({obj}) needs the per-example input shape, e.g. check(layer, (6,)) or (8, 8, 3)")
    in_shape = tuple(int(s) for s in in_shape)
    out_shape = tuple(obj.out_shape(in_shape)) if hasattr(obj, "out_shape") else None
    layers = (obj,) if isinstance(obj, L.Layer) else ()
    return _Subject(
        str(obj),
        in_shape,
        out_shape,
        lambda key, dtype: obj.init(key, in_shape, dtype)[:2],
        lambda p, s, x, train, key: obj.forward(p, s, x, train=train, key=key),
        obj.backward,
        layers,
        None,
        _spatial(layers, in_shape),
    )


def _batch_size(shapes):
    """The smallest of 3, 5, 7, ... that is no dimension of the shapes: a gradient that kept or
    lost the batch axis then shows in its shape."""
    dims = {d for s in shapes if s for d in s}
    return next(n for n in itertools.count(3, 2) if n not in dims)


def is_layer(obj) -> bool:
    """``obj`` is checked as a layer or a model (a ``models.Model``, or anything with a ``backward``:
    ``check`` then says what of jaxgd's layer contract it lacks), not as a function."""
    from jaxgd import models

    return isinstance(obj, models.Model) or hasattr(obj, "backward")


def check(
    subject: Any,
    *args: Any,
    in_shape: tuple[int, ...] | None = None,
    x: Any = None,
    batch: int | None = None,
    modes: Sequence[str] = MODES,
    dtypes: Sequence[str] = DTYPES,
    seed: int = 0,
    fd_per_leaf: int = FD_PER_LEAF,
    programs: Programs | None = None,
) -> R.Report:
    """Check ``subject``'s hand backward (a layer with jaxgd's contract, or a ``models.Model``) on
    random examples of per-example shape ``in_shape`` (``check(layer, (6,))``; a model knows its
    own), or on ``x`` (with its batch axis; e.g. inputs with exact zeros, to look at the kinks).
    ``check(f, *args)`` checks a ``jax.custom_vjp`` or ``jax.custom_jvp`` function's rule at
    ``args`` instead (``check_function``). Returns a ``Report``; ``print`` it for the verdict. See
    ``jaxgd.checker`` for what is compared. ``programs`` (a ``checker.Programs`` you hold) keeps
    the compiled pieces for the next check through it; without it, only a subject made of jaxgd's
    own layers reuses them (``programs.by_value``)."""
    from jaxgd.checker.function import check_function, custom_rule

    if custom_rule(subject) is not None or (callable(subject) and not is_layer(subject) and (args or in_shape is None)):
        if x is not None or batch is not None or in_shape is not None or tuple(modes) != MODES:
            raise ValueError(
                "check(f, *args) of a function takes its example arguments, not in_shape, x, batch or modes"
            )
        return check_function(subject, *args, dtypes=dtypes, seed=seed, fd_per_leaf=fd_per_leaf)
    if len(args) > 1:
        raise TypeError(
            f"check({subject!r}, ...) takes one input shape for a layer, got {len(args)} arguments; "
            "example arguments are for jax.custom_vjp / custom_jvp functions"
        )
    if args:
        if in_shape is not None:
            raise TypeError("check: the input shape is given twice (positionally and as in_shape=)")
        in_shape = args[0]
    if x is not None:
        if in_shape is not None and tuple(in_shape) != tuple(np.shape(x)[1:]):
            raise ValueError(
                f"x has per-example shape {tuple(np.shape(x)[1:])} but in_shape is {tuple(in_shape)}: "
                "give one of them (x's shape after its batch axis is the input shape)"
            )
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
    store = store_for(subject, programs)
    results = {}  # (mode, dtype) -> per-leaf comparisons
    checks: list = []
    findings: list = []
    for dtype in dtypes:
        with jax.enable_x64(dtype == "float64"):
            for mode in modes:
                results[mode, dtype] = _check_one(subject, sub, n, problem, mode, dtype, fd_per_leaf, checks, store)
    rows = []
    names = next(iter(results.values()))["names"]
    for mode in modes:
        for i, name in enumerate(names):
            row, finding = R.row(name, mode, {dtype: results[mode, dtype]["leaves"][i] for dtype in dtypes}, "jax.vjp")
            rows.append(row)
            findings += [finding] if finding else []
    findings += R.cross_findings(rows, modes, names)
    findings += R.failed_checks(checks)
    passed = all(r["verdict"] != "wrong" for r in rows) and all(c["ok"] for c in checks)
    return R.Report(sub.name, sub.in_shape, n, passed, tuple(rows), tuple(findings), tuple(checks))


def _problem(sub, n, x_given, seed):
    """The problem every mode and dtype checks, drawn once, in float64 and on the host: the
    parameters and state from the subject's own ``init`` (moved off constant values), the input
    (or ``x_given``), the cotangent ``c``, a second problem stacked on the first for ``vmap``, and
    a model's random labels or targets. NumPy draws what the subject does not, so drawing compiles
    no program of its own (a jitted ``jax.random`` call takes a fifth of a second to compile on CPU)."""
    k_init, k_fwd = jax.random.split(jax.random.PRNGKey(seed))
    rng = np.random.default_rng(seed)
    with jax.enable_x64(True):
        params, state = cast(numpy_tree(sub.init(k_init, jnp.float64)), np.float64)
        x = np.asarray(x_given, np.float64) if x_given is not None else rng.standard_normal((n,) + sub.in_shape)
        y = jax.eval_shape(lambda p, s, x: sub.forward(p, s, x, True, k_fwd)[0], params, state, x)
    params, state = gradcheck.off_constant(params, rng), gradcheck.off_constant(state, rng)
    c = rng.standard_normal(y.shape)
    pb = {
        "params": params,
        "state": state,
        "x": x,
        "c": c,
        "key": np.asarray(k_fwd),
        "x2": np.stack([x, rng.standard_normal(x.shape)]),
        "c2": np.stack([c, rng.standard_normal(c.shape)]),
    }
    if sub.model is not None:  # random labels (or targets) for the loss gradient
        from jaxgd import losses

        pb["y"] = (
            rng.integers(0, y.shape[-1], y.shape[:1]).astype(np.int32)
            if losses.takes_labels(sub.model.loss)
            else rng.standard_normal(y.shape)
        )
    return pb


def _check_one(obj, sub, n, problem, mode, dtype, fd_per_leaf, checks, store):
    dt = jnp.dtype(dtype)
    progs = _pieces(store, obj, sub, n, mode, dtype)
    train = mode == "train"

    def note(name, ok, detail=""):
        checks.append({"name": f"{name} ({mode}, {dtype})", "ok": bool(ok), "detail": detail})

    pb = cast(problem, dt)
    params, state, x, c, fwd_key = pb["params"], pb["state"], pb["x"], pb["c"], pb["key"]
    y, new_state, true, got = progs.run(params, state, x, c, fwd_key)
    if progs.raised is not None:  # the backward raises, under jit and eagerly: a failed check, not a crash
        note("backward runs", False, "the backward raised " + explain(progs.raised))
        names = R.leaf_names(params)
        return {
            "names": names,
            "leaves": [
                {
                    "abs": None,
                    "rel": None,
                    "kind": "error",
                    "cause": "the backward raised an error (see 'backward runs' below)",
                }
                for _ in names
            ],
        }
    if progs.untraceable is not None:  # the backward ran eagerly: say why it cannot run under jit
        note("jit", False, "fails under jit: " + explain(progs.untraceable))
    else:
        note("jit", True)
    run = lambda x, c, p=params, with_hand=True: progs.run(p, state, x, c, fwd_key, with_hand)
    want = (n,) + tuple(sub.out_shape) if sub.out_shape is not None else y.shape
    note(
        "output shape and dtype",
        y.shape == want and y.dtype == dt,
        f"the forward returns {y.shape} {y.dtype}, expected {want} {dt}",
    )
    s_ok = jax.tree_util.tree_structure(new_state) == jax.tree_util.tree_structure(state) and all(
        a.shape == b.shape and a.dtype == b.dtype
        for a, b in zip(jax.tree_util.tree_leaves(new_state), jax.tree_util.tree_leaves(state))
    )
    note("state shape and dtype", s_ok, "the new state has another structure, shape or dtype than the state")
    if not train and s_ok:
        same = all(
            np.array_equal(a, b) for a, b in zip(jax.tree_util.tree_leaves(new_state), jax.tree_util.tree_leaves(state))
        )
        note(
            "state unchanged in eval", same, "state updated in eval mode: running statistics must move in training only"
        )
    names = R.leaf_names(params)
    leaves_t = jax.tree_util.tree_leaves(true)
    try:
        leaves_h = jax.tree_util.tree_leaves(got[0]) + [got[1]]
        struct_ok = jax.tree_util.tree_structure(got[0]) == jax.tree_util.tree_structure(params) and got[1] is not None
    except (TypeError, IndexError):
        leaves_h, struct_ok = [], False
    note(
        "gradient structure",
        struct_ok,
        f"backward must return (dparams shaped like params, dx); it returned {jax.tree_util.tree_structure(got)}",
    )
    tol = VJP_TOLERANCES[dtype]
    x_np = np.asarray(x)
    ref = _float64_reference(store, obj, sub, n, mode, (params, state, x, c, fwd_key)) if dtype == "float32" else None
    allow = allowances(leaves_t, tol, None if ref is None else jax.tree_util.tree_leaves(ref[2]))
    leaves = []
    for i, (name, t) in enumerate(zip(names, leaves_t)):
        if not struct_ok:
            leaves.append(
                {
                    "abs": None,
                    "rel": None,
                    "kind": "error",
                    "cause": "the backward returned another structure than (dparams, dx)",
                }
            )
            continue
        ctx = lambda i=i, name=name: {
            "batch": n,
            "dtype": dt,
            "tol": tol,
            "is_input": name == "x",
            "x": x_np,
            "c": np.asarray(c),
            "params": params,
            "leaf": i,
            "name": name,
            "param_names": [m.removeprefix("param ") for m in names],
            "y": np.asarray(y),
            "layer": obj,
            "spatial": name == "x" and x_np.ndim == 4 and sub.spatial,
            "true_with": lambda p: jax.tree_util.tree_leaves(run(x, c, p, with_hand=False)[2]),
            "coupling": (lambda: _coupling(run, x, c)) if name == "x" else None,
        }
        leaves.append(compare_leaf(leaves_h[i], t, dt, allow["abs"][i], allow["floor"], ctx))
    if dtype == "float64" and struct_ok:
        _finite_differences(progs, (params, state, x, c, fwd_key), np.asarray(y), fd_per_leaf, leaves, leaves_h)
        _check_vjp(run, params, x, c, note)
    if struct_ok:
        _stacked(progs, params, state, fwd_key, pb["x2"], pb["c2"], got, run, note, allow["abs"])
    if sub.model is not None and train:
        try:
            _loss_gradient(store, obj, sub, n, progs, params, state, x, pb["y"], fwd_key, dtype, note)
        except Exception as e:  # noqa: BLE001  (model.grad, the user's, raised)
            note("loss gradient", False, "model.grad raised " + explain(e))
    return {"names": names, "leaves": leaves}


def _pieces(store, obj, sub, n, mode, dtype) -> Pieces:
    """The compiled pieces for this subject, problem shape, mode and dtype, from ``store``."""
    return store.get((type(obj), obj, sub.in_shape, n, mode, dtype), lambda: Pieces(sub, n, mode == "train", dtype))


def _float64_reference(store, obj, sub, n, mode, args):
    """The float64 programs of the same check run at the float32 problem's point (cast exactly):
    ``(y, new_state, jax.vjp's gradients[, hand])`` in float64."""
    with jax.enable_x64(True):
        args64 = cast(numpy_tree(args), np.float64)
        return _pieces(store, obj, sub, n, mode, "float64").run(*args64, with_hand=False)


def _loss_gradient(store, obj, sub, n, progs, params, state, x, y, key, dtype, note):
    """A model's whole training gradient, ``model.grad`` (the loss's hand derivative, then the
    reverse pass), against ``jax.grad`` of the loss of the forward, on random targets."""
    hand, true = (jax.tree_util.tree_leaves(t) for t in progs.loss_grads(params, state, x, y, key))
    ref = None
    if dtype == "float32":
        with jax.enable_x64(True):
            args64 = cast(numpy_tree((params, state, x, y, key)), np.float64)
            ref = jax.tree_util.tree_leaves(_pieces(store, obj, sub, n, "train", "float64").loss_grads(*args64)[1])
    allow = allowances(true, VJP_TOLERANCES[dtype], ref)["abs"]
    bad = [
        name
        for name, h, t, lim in zip(gradcheck.leaf_names(params), hand, true, allow)
        if np.shape(h) != np.shape(t) or maxabs(np.asarray(h, np.float64) - np.asarray(t)) > lim
    ]
    note(
        "loss gradient",
        not bad,
        f"model.grad differs from jax.grad of the {sub.model.loss} loss at "
        f"{', '.join(bad)}: with the reverse pass right, the loss's hand derivative "
        "(losses.LOSSES) is wrong",
    )


def _coupling(run, x, c):
    """Whether changing the cotangent of example 0 changes the input gradient of other examples,
    by the hand backward and by ``jax.vjp``."""
    others = lambda a, b: bool(np.any(np.asarray(a)[1:] != np.asarray(b)[1:]))
    (*_, true, hand), (*_, true2, hand2) = (
        run(x, c),
        run(x, c + (np.arange(len(c)) == 0).reshape((-1,) + (1,) * (c.ndim - 1))),
    )
    return others(hand[1], hand2[1]), others(true[1], true2[1])


def _finite_differences(progs, args, y, per_leaf, leaves, leaves_h):
    """Central differences of ``L = sum(c * y)`` at ``per_leaf`` sampled coordinates of each leaf,
    the stencils that cross a kink left out, against the hand gradient (INF265's relative error)."""
    params, _, x, c, _ = args
    eps = fd_eps(float(np.sum(np.abs(np.asarray(c) * y))))
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
        return f(p, x), lambda ct: numpy_tree(run(x, ct)[3])

    p_np, x_np = numpy_tree(params), np.asarray(x)
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
        return all(
            within(u, v, lim) for u, v, lim in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), allow)
        )

    try:
        batched = numpy_tree(progs.stacked(params, state, x2, c2, key))
        one = jax.tree_util.tree_map(lambda a: a[0], batched)
        two = run(x2[1], c2[1])[3]
        note(
            "vmap",
            agree(one, eager) and agree(jax.tree_util.tree_map(lambda a: a[1], batched), two),
            "under vmap the backward gives other numbers than one problem at a time",
        )
    except Exception as e:  # noqa: BLE001
        note("vmap", False, "fails under vmap: " + explain(e))
