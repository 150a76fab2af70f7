"""``check(f, *args)`` of a function with a custom derivative rule (``jax.custom_vjp`` or
``jax.custom_jvp``): the rule's gradient against autodiff of its primal, or float64 central
differences where the primal cannot be differentiated."""
from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np

from jaxgd import gradcheck
from jaxgd.checker import report as R
from jaxgd.checker.compare import (DTYPES, FD_H, FD_PER_LEAF, VJP_TOLERANCES, allowances, compare_leaf, explain,
                                   fd_eps, jit, maxabs, numpy_tree)

FD_ONLY_MAX = 4096  # coordinates: where autodiff of the primal fails, the truth is this many central differences at most


def custom_rule(f):
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
        self.kind, self.primal, self.nondiff = custom_rule(f)
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


def check_function(f, *args, dtypes=DTYPES, seed=0, fd_per_leaf=FD_PER_LEAF) -> R.Report:
    """``check(f, *args)`` for ``f`` a ``jax.custom_vjp`` or ``jax.custom_jvp`` function: its rule's
    gradient of ``sum(c * f(args))`` (a random cotangent ``c`` on every floating output) with
    respect to every floating argument leaf, against autodiff of the primal ``f.fun`` (the function
    with its rule stripped) or, where that cannot be differentiated, float64 central differences;
    in each dtype, with finite differences in float64, under ``jit`` and ``vmap``. One row per
    argument leaf; integer arguments and ``nondiff_argnums`` are held fixed."""
    if custom_rule(f) is None:
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
        row, finding = R.row(name, mode, {dtype: results[dtype][i] for dtype in dtypes}, f"autodiff of {fn.primal_name}")
        rows.append(row)
        findings += [finding] if finding else []
    findings += R.failed_checks(checks)
    passed = all(r["verdict"] != "wrong" for r in rows) and all(ch["ok"] for ch in checks)
    shapes = tuple(tuple(np.shape(a)) for a in fn.leaves)
    name = f"{fn.kind} {getattr(f, '__name__', None) or getattr(fn.primal, '__name__', 'function')}"
    return R.Report(name, shapes, 0, passed, tuple(rows), tuple(findings), tuple(checks),
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
        true = numpy_tree(jit(true_of)(v, c))
    except Exception:  # noqa: BLE001  (the primal has no derivative JAX can take: central differences)
        true = _fd_truth(fn, v, c) if dtype == "float64" else None
    if true is None:  # float32 without autodiff: float64's differences at the float32 point
        with jax.enable_x64(True):
            true = [t.astype(dt) for t in _fd_truth(fn, [a.astype(np.float64) for a in v],
                                                    [ci.astype(np.float64) for ci in c])]
    try:
        hand = numpy_tree(jit(hand_of)(v, c))
        note("jit", True)
    except Exception as e:  # noqa: BLE001
        try:
            hand = numpy_tree(hand_of(v, c))
        except Exception as e2:  # noqa: BLE001  (it fails eagerly too: not a jit problem)
            note("custom rule runs", False, _explain_rule(e2))
            return [{"abs": None, "rel": None, "kind": "error", "cause": "the rule raised an error (see below)"}
                    for _ in true]
        note("jit", False, "fails under jit: " + explain(e))
    ref = None
    if dtype == "float32":
        with jax.enable_x64(True):
            try:
                ref = numpy_tree(jit(true_of)([a.astype(np.float64) for a in v], [ci.astype(np.float64) for ci in c]))
            except Exception:  # noqa: BLE001
                ref = None
    allow = allowances(true, VJP_TOLERANCES[dtype], ref)
    # the batch: the first argument's leading axis (a bias's mean over it is the classic factor)
    batch = int(np.shape(v[0])[0]) if np.ndim(v[0]) else 1
    leaves = []
    for i, (h, t, x) in enumerate(zip(hand, true, v)):
        ctx = lambda x=x, i=i: {  # noqa: E731
            "batch": batch, "dtype": dt, "tol": VJP_TOLERANCES[dtype], "is_input": True, "x": np.asarray(x),
            "coupling": None, "name": fn.names[i],
            # one argument and one output: dy for the elementwise-term family
            "c": np.asarray(c[0]) if len(c) == 1 and len(v) == 1 else None}
        leaves.append(compare_leaf(h, t, dt, allow["abs"][i], allow["floor"], ctx))
    if dtype == "float64":
        coords = gradcheck.sample_coordinates(v, fd_per_leaf, seed=0)
        est, terms = _fd_estimates(fn, v, c, coords)
        eps = fd_eps(terms)
        for r, h, x, co, e in zip(leaves, hand, v, coords, est):
            if np.shape(h) == np.shape(x):
                r["fd_rel"] = float(np.max(gradcheck.rel_error(np.asarray(h).reshape(-1)[co], e, eps), initial=0.0))
    try:  # vmap: the rule on two stacked points, against each point alone
        stack = lambda a, b: np.stack([np.asarray(a, dt), np.asarray(b, dt)])  # noqa: E731
        vs, cs = [stack(a, b) for a, b in zip(v, v2)], [stack(a, b) for a, b in zip(c, c2)]
        batched = numpy_tree(jit(jax.vmap(hand_of))(vs, cs))
        alone = numpy_tree(jit(hand_of)([a[1] for a in vs], [ci[1] for ci in cs]))
        same = all(np.shape(b[0]) == np.shape(h) and maxabs(np.asarray(b[0], np.float64) - h) <= lim
                   and maxabs(np.asarray(b[1], np.float64) - a) <= lim
                   for b, h, a, lim in zip(batched, hand, alone, allow["abs"]))
        note("vmap", same, "under vmap the rule gives other numbers than one point at a time")
    except Exception as e:  # noqa: BLE001
        note("vmap", False, "fails under vmap: " + explain(e))
    return leaves


def _explain_rule(e) -> str:
    """A custom rule's error in one line; JAX's check of a bwd rule's output types said plainly."""
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
    return "the rule raised " + explain(e)


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
    est, terms = jit(measure)(v, c, gradcheck.flat_index(v, coords))
    return gradcheck.split_by_leaf(est, coords), float(terms)
