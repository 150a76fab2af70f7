"""``check(f, *args)`` of a function with a custom derivative rule (``jax.custom_vjp`` or
``jax.custom_jvp``): the rule's gradient against autodiff of its primal, or float64 central
differences where the primal cannot be differentiated."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np

from jaxgd import gradcheck
from jaxgd.checker import anyfn
from jaxgd.checker import report as R
from jaxgd.checker.compare import (
    DTYPES,
    FD_H,
    FD_PER_LEAF,
    VJP_TOLERANCES,
    allowances,
    compare_leaf,
    explain,
    fd_eps,
    jit,
    numpy_tree,
    within,
)

FD_ONLY_MAX = 4096  # coordinates: where autodiff is not the truth, the truth is this many central differences at most
FD_TRUTH_TOLERANCE = 1e-7  # max |autodiff - central differences| / max |central differences|, float64


def custom_rule(f):
    """``(kind, primal, nondiff_argnums)`` of a ``jax.custom_vjp`` or ``jax.custom_jvp`` function, else None."""
    for kind in ("custom_vjp", "custom_jvp"):
        if isinstance(f, getattr(jax, kind)):
            return kind, f.fun, tuple(f.nondiff_argnums)
    return None


class _Function:
    """A function as the scalar problem ``L(v) = sum_i sum(c_i * y_i)`` over its floating argument
    leaves ``v`` (the other arguments, and ``nondiff``, held fixed), ``y = f(args)``: ``jax.grad(L)``
    through ``f`` is the hand gradient (its custom rules); the truth is autodiff through ``primal``
    (the rules stripped), or with ``fd_truth`` float64 central differences of ``f`` (no rule inside:
    ``jax.test_util.check_grads``'s comparison). ``kind``: ``custom_vjp``, ``custom_jvp`` or
    ``function``; ``truth``: what the truth is, in words."""

    def __init__(self, f, args, kind, primal, nondiff=(), truth="", fd_truth=False):
        self.kind, self.primal, self.nondiff, self.truth, self.fd_truth = kind, primal, tuple(nondiff), truth, fd_truth
        self.f, self.args = f, tuple(args)
        self.diff = [i for i in range(len(args)) if i not in self.nondiff]
        leaves, self.treedef = jax.tree_util.tree_flatten([args[i] for i in self.diff])
        self.is_var = [np.issubdtype(np.asarray(a).dtype, np.floating) for a in leaves]
        self.leaves = [np.asarray(a) for a in leaves]
        names = gradcheck.leaf_names([args[i] for i in self.diff])
        self.names = [
            f"arg {self.diff[int(n.split('.')[0])]}" + (n[n.index(".") :] if "." in n else "")
            for n, v in zip(names, self.is_var)
            if v
        ]

    def program(self, name):
        """The check's jitted pieces, built once per function and kept for both dtype passes (a
        jitted function compiles once per shape and dtype): ``hand`` and ``true`` (the gradient of
        ``L`` through ``f`` and through ``primal``), ``vmap`` (``hand`` over stacked points) and
        ``measure`` (central differences of ``L`` through ``primal`` at given coordinates)."""
        if not hasattr(self, "_programs"):

            def measure(v, c, index):
                est, _ = gradcheck.fd_estimates(lambda u: self.loss(self.primal, u, c), v, index, FD_H, 4)
                return est, self.loss(self.primal, v, c, absolute=True)

            self._programs = {
                "hand": jit(self.hand_of),
                "true": jit(self.true_of),
                "vmap": jit(jax.vmap(self.hand_of)),
                "measure": jit(measure),
            }
        return self._programs[name]

    def hand_of(self, v, c):
        return jax.grad(lambda v: self.loss(self.f, v, c))(v)

    def true_of(self, v, c):
        return jax.grad(lambda v: self.loss(self.primal, v, c))(v)

    def call(self, g, v):
        """``g`` at the arguments with the floating leaves ``v``."""
        it, full = iter(v), list(self.args)
        leaves = [next(it) if var else a for a, var in zip(self.leaves, self.is_var)]
        for i, a in zip(self.diff, jax.tree_util.tree_unflatten(self.treedef, leaves)):
            full[i] = a
        return g(*full)

    def loss(self, g, v, c, absolute=False):
        """``L = sum(c * outputs)`` over the floating outputs (``sum |c * outputs|`` with ``absolute``)."""
        outs = [
            o for o in jax.tree_util.tree_leaves(self.call(g, v)) if jnp.issubdtype(jnp.asarray(o).dtype, jnp.floating)
        ]
        return sum(jnp.sum(jnp.abs(ci * o) if absolute else ci * o) for ci, o in zip(c, outs))

    def variables(self, dtype):
        return [a.astype(dtype) for a, var in zip(self.leaves, self.is_var) if var]


def _subject(f, args) -> tuple[_Function, list]:
    """``f`` as a ``_Function``, and the custom rules found inside it (``anyfn.rules``)."""
    rule = custom_rule(f)
    if rule is not None:
        kind, primal, nondiff = rule
        return _Function(
            f, args, kind, primal, nondiff, f"autodiff of {getattr(primal, '__name__', 'the primal')} (f.fun)"
        ), []
    with jax.enable_x64(True):
        found = anyfn.rules(f, *_as64(args))
    if found:
        return _Function(
            f,
            args,
            "function",
            anyfn.stripped(f),
            (),
            f"autodiff of f with its {len(found)} custom rule(s) replaced by their primals",
        ), found
    return _Function(f, args, "function", f, (), "float64 central differences", fd_truth=True), []


def _as64(args):
    return jax.tree_util.tree_map(
        lambda a: np.asarray(a, np.float64) if np.issubdtype(np.asarray(a).dtype, np.floating) else a, args
    )


def check_function(f, *args, dtypes=DTYPES, seed=0, fd_per_leaf=FD_PER_LEAF) -> R.Report:
    """``check(f, *args)`` for any JAX function of arrays (and pytrees of them): the gradient of
    ``sum(c * f(args))`` (a random cotangent ``c`` on every floating output) with respect to every
    floating argument leaf, in each dtype, with finite differences in float64, under ``jit`` and
    ``vmap``. One row per argument leaf; integer arguments and ``nondiff_argnums`` are held fixed.

    - ``f`` a ``jax.custom_vjp`` / ``custom_jvp`` function: its rule against autodiff of its primal
      ``f.fun`` (or, where that cannot be differentiated, float64 central differences).
    - ``f`` calling custom rules inside (under ``jit``, ``vmap``, ``scan``, ``cond``, ...): the whole
      gradient against autodiff of ``f`` with every rule replaced by its primal (``anyfn.stripped``),
      then each rule alone, in float64, at the arguments it receives in this call (``anyfn.captured``),
      named by where it is defined and called.
    - ``f`` with no rule inside: JAX's own derivative against float64 central differences, as
      ``jax.test_util.check_grads`` compares them (a NaN gradient, a kink, an unstable formula)."""
    fn, found = _subject(f, args)
    rows, findings, checks = _check_subject(fn, dtypes, seed, fd_per_leaf)
    at = []  # each rule inside, with the arguments it receives here
    if found:
        with jax.enable_x64(True):
            at = anyfn.captured(f, *_as64(args))
    for rule, invals in at:
        sub = _Function(
            rule.hand, invals, rule.kind, rule.primal, range(rule.num_consts), f"autodiff of {rule.name}'s primal"
        )
        if not sub.names:
            continue
        r_rows, r_findings, r_checks = _check_subject(sub, ("float64",), seed, fd_per_leaf, vmap=False)
        label = f"{rule.name} "
        rows += [{**r, "leaf": label + r["leaf"]} for r in r_rows]
        checks += [{**ch, "name": label + ch["name"]} for ch in r_checks]
        findings += [{**fi, "where": label + fi["where"]} for fi in r_findings]
        if r_findings:
            findings.append({"where": rule.name, "kind": "rule", "cause": "this rule is wrong: " + rule.where()})
    reached = [r for r, _ in at]
    passed = all(r["verdict"] != "wrong" for r in rows) and all(ch["ok"] for ch in checks)
    shapes = tuple(tuple(np.shape(a)) for a in fn.leaves)
    name = f"{fn.kind} {getattr(f, '__name__', None) or getattr(fn.primal, '__name__', 'function')}"
    on = "at arguments of shapes " + ", ".join(str(s) for s in shapes)
    if found:
        on += f" ({len(found)} custom rule(s) inside, each also checked alone in float64 where it is reached)"
    return R.Report(
        name,
        shapes,
        0,
        passed,
        tuple(rows),
        tuple(findings),
        tuple(checks),
        on=on,
        rules=tuple(
            r.where()
            + ("" if r in reached else ": not reached at these arguments, checked through the whole function only")
            for r in found
        ),
    )


def _check_subject(fn, dtypes, seed, fd_per_leaf, vmap=True):
    """Rows, findings and checks of one ``_Function`` in each dtype."""
    if not fn.names:
        raise ValueError("check(f, *args): no floating argument to differentiate; give float arrays")
    # the check's own stream: a cotangent drawn as default_rng(seed) would equal an argument drawn the
    # same way (then x^T c is symmetric, and a transposed weight gradient looks right)
    rng = np.random.default_rng((seed, 0x636B))
    with jax.enable_x64(True):
        out = jax.eval_shape(lambda v: fn.call(fn.f, v), fn.variables(np.float64))
    outs = [o for o in jax.tree_util.tree_leaves(out) if jnp.issubdtype(o.dtype, jnp.floating)]
    if not outs:
        raise ValueError("check(f, *args): f returns no floating output, so there is no gradient to check")
    c = [rng.standard_normal(o.shape) for o in outs]
    # a second point for vmap, near the given one with the same signs (it stays in f's domain: a sqrt, a log)
    v2 = [a * rng.uniform(0.9, 1.1, a.shape) for a in fn.variables(np.float64)]
    c2 = [rng.standard_normal(ci.shape) for ci in c]
    mode = fn.kind.removeprefix("custom_") if fn.kind != "function" else "grad"
    checks, results = [], {}
    for dtype in dtypes:
        with jax.enable_x64(dtype == "float64"):
            results[dtype] = _check_function_one(fn, dtype, c, v2 if vmap else None, c2, fd_per_leaf, mode, checks)
    rows, findings = [], []
    for i, name in enumerate(fn.names):
        row, finding = R.row(name, mode, {dtype: results[dtype][i] for dtype in dtypes}, fn.truth)
        rows.append(row)
        findings += [finding] if finding else []
    findings += R.failed_checks(checks)
    return rows, findings, checks


def _check_function_one(fn, dtype, c, v2, c2, fd_per_leaf, mode, checks) -> list[dict]:
    """One dtype: the hand and true gradients, their comparison per leaf, and the jit, vmap and
    (float64) finite-difference checks."""
    dt = jnp.dtype(dtype)

    def note(name, ok, detail=""):
        checks.append({"name": f"{name} ({mode}, {dtype})", "ok": bool(ok), "detail": detail})

    v, c = fn.variables(dt), [ci.astype(dt) for ci in c]
    try:
        if fn.fd_truth:
            raise NotImplementedError  # no rule inside: the truth is central differences
        true = numpy_tree(fn.program("true")(v, c))
    except Exception:  # noqa: BLE001  (the primal has no derivative JAX can take: central differences)
        true = _fd_truth(fn, v, c) if dtype == "float64" else None
    if true is None:  # float32 without autodiff: float64's differences at the float32 point
        with jax.enable_x64(True):
            true = [
                t.astype(dt)
                for t in _fd_truth(fn, [a.astype(np.float64) for a in v], [ci.astype(np.float64) for ci in c])
            ]
    try:
        hand = numpy_tree(fn.program("hand")(v, c))
        note("jit", True)
    except Exception as e:  # noqa: BLE001
        try:
            hand = numpy_tree(fn.hand_of(v, c))
        except Exception as e2:  # noqa: BLE001  (it fails eagerly too: not a jit problem)
            note("custom rule runs", False, _explain_rule(e2))
            return [
                {"abs": None, "rel": None, "kind": "error", "cause": "the rule raised an error (see below)"}
                for _ in true
            ]
        note("jit", False, "fails under jit: " + explain(e))
    ref = None
    if dtype == "float32":
        with jax.enable_x64(True):
            try:
                ref = numpy_tree(
                    fn.program("true")([a.astype(np.float64) for a in v], [ci.astype(np.float64) for ci in c])
                )
            except Exception:  # noqa: BLE001
                ref = None
    # against central differences (no rule inside) the truth itself is good to about 1e-9 in float64
    tol = FD_TRUTH_TOLERANCE if fn.fd_truth and dtype == "float64" else VJP_TOLERANCES[dtype]
    allow = allowances(true, tol, ref)
    # the batch: the first argument's leading axis (a bias's mean over it is the classic factor)
    batch = int(np.shape(v[0])[0]) if np.ndim(v[0]) else 1
    leaves = []
    for i, (h, t, x) in enumerate(zip(hand, true, v)):
        ctx = lambda x=x, i=i: {
            "batch": batch,
            "dtype": dt,
            "tol": tol,
            "is_input": True,
            "x": np.asarray(x),
            "coupling": None,
            "name": fn.names[i],
            # one argument and one output: dy for the elementwise-term family
            "c": np.asarray(c[0]) if len(c) == 1 and len(v) == 1 else None,
        }
        leaves.append(compare_leaf(h, t, dt, allow["abs"][i], allow["floor"], ctx))
    if dtype == "float64":
        coords = gradcheck.sample_coordinates(v, fd_per_leaf, seed=0)
        if fn.fd_truth:  # the differences at every coordinate are the truth already: read the sampled ones
            est, terms = [np.asarray(t).reshape(-1)[co] for t, co in zip(true, coords)], fn.fd_terms
        else:
            est, terms = _fd_estimates(fn, v, c, coords)
        eps = fd_eps(terms)
        for r, h, x, co, fd in zip(leaves, hand, v, coords, est):
            if np.shape(h) == np.shape(x):
                r["fd_rel"] = float(np.max(gradcheck.rel_error(np.asarray(h).reshape(-1)[co], fd, eps), initial=0.0))
    if v2 is None:  # a rule checked where it sits: its function's own check covers vmap
        return leaves
    try:  # vmap: the rule on two stacked points, against each point alone
        stack = lambda a, b: np.stack([np.asarray(a, dt), np.asarray(b, dt)])
        vs, cs = [stack(a, b) for a, b in zip(v, v2)], [stack(a, b) for a, b in zip(c, c2)]
        batched = numpy_tree(fn.program("vmap")(vs, cs))
        alone = numpy_tree(fn.program("hand")([a[1] for a in vs], [ci[1] for ci in cs]))
        same = all(
            within(b[0], h, lim) and within(b[1], a, lim) for b, h, a, lim in zip(batched, hand, alone, allow["abs"])
        )
        note("vmap", same, "under vmap the rule gives other numbers than one point at a time")
    except Exception as e:  # noqa: BLE001
        note("vmap", False, "fails under vmap: " + explain(e))
    return leaves


def _explain_rule(e) -> str:
    """A custom rule's error in one line; JAX's check of a bwd rule's output types said plainly."""
    m = re.search(
        r"at output\[(\d+)\] the bwd rule produced an output of type (\S+) corresponding to an input "
        r"of type (\S+)",
        str(e),
    )
    if m:
        return (
            f"the bwd rule returns {m.group(2)} for argument {m.group(1)}, whose type is {m.group(3)}: each "
            "cotangent must have its argument's shape and dtype (a broadcast argument's cotangent summed over "
            "the broadcast axes)"
        )
    m = re.search(
        r"got bwd output structure (PyTreeDef\(.*?\)) for primal input structure (PyTreeDef\(.*?\))\.?$", str(e).strip()
    )
    if m:
        return (
            f"the bwd rule returns the structure {m.group(1)} for arguments of structure {m.group(2)}: it must "
            "return a tuple with one cotangent per argument of the primal (none for its nondiff_argnums)"
        )
    return "the rule raised " + explain(e)


def _fd_truth(fn, v, c) -> list[np.ndarray]:
    """The gradient of ``L`` by float64 central differences at every coordinate (the truth where
    the primal cannot be differentiated by JAX)."""
    size = sum(a.size for a in v)
    if size > FD_ONLY_MAX:
        raise ValueError(
            f"check(f, *args): f's primal cannot be differentiated by JAX, and central differences at "
            f"all {size} coordinates are too many (at most {FD_ONLY_MAX}): give smaller arguments"
        )
    coords = [np.arange(a.size) for a in v]
    est, fn.fd_terms = _fd_estimates(fn, v, c, coords)
    return [e.reshape(a.shape) for e, a in zip(est, v)]


def _fd_estimates(fn, v, c, coords):
    """Float64 central differences of ``L`` through the primal at ``coords`` (one index array per
    leaf), one compiled program: one array of estimates per leaf, and the absolute sum of ``L``'s
    terms ``sum |c * y|`` (``_fd_eps``)."""
    est, terms = fn.program("measure")(v, c, gradcheck.flat_index(v, coords))
    return gradcheck.split_by_leaf(est, coords), float(terms)
